"""Forecasting data as `datasets`: the long-horizon (LTSF) benchmark protocol, any CSV/parquet file and Hub datasets.

[`load_forecasting_dataset`] turns a benchmark name (`ETTh1`, `weather`, ...), a local CSV/parquet file or folder, or
a Hub dataset id into a `datasets.DatasetDict` with `train`/`validation`/`test` splits of forecasting windows. The
splits follow the protocol used by Informer/Autoformer/PatchTST and "Less is More" (arXiv 2505.23195):

- ETTh1/ETTh2 rows `[0, 8640)`, `[8640, 11520)`, `[11520, 14400)`; ETTm1/ETTm2 the same x4; other data 70%/10%/20%
  in time order (per series);
- validation and test windows start `context_length` rows before their border, so every target lies in its split;
- every channel is standard-scaled with the mean/std (population std) of its training rows;
- windows have stride 1 unless asked otherwise.

Each split stores only a small index table (`series_index`, `start` and, channel-independent, `channel`); windows are
cut lazily by a transform installed with `Dataset.set_transform`, batched and vectorised, so `ds[i]` is one window
and `ds[i:j]` a batch of windows as tensors. Items are Trainer-friendly dicts:

- `past_values`: `(context_length,)` channel-independent or `(context_length, num_channels)` multivariate;
- `future_values`: `(prediction_length,)` or `(prediction_length, num_channels)`;
- `past_observed_mask` / `future_observed_mask`: same shapes, 1.0 where the value was observed, 0.0 where missing.

Use `Trainer(..., args=TrainingArguments(label_names=["future_values"], remove_unused_columns=False))`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from transformers.utils import logging

logger = logging.get_logger(__name__)

DATA_DIR_ENV = "HF_TSPRUNE_DATA_DIR"
"""Environment variable naming the folder that holds the benchmark files (used when no `data_dir` is given)."""

TIMESTAMP_COLUMN_CANDIDATES = ("date", "timestamp", "time", "datetime", "ds", "date_time", "time_idx")
ID_COLUMN_CANDIDATES = ("id", "item_id", "unique_id", "series_id")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a long-horizon benchmark lives under the data folder and how it is split.

    Args:
        relative_paths (`tuple[str, ...]`):
            Candidate paths relative to the data folder, first found wins (the Autoformer packaging first).
        freq (`str`):
            Pandas frequency of the rows.
        borders (`tuple[int, int, int]`, *optional*):
            Fixed end rows of the train, validation and test parts (ETT); `None` means the 70/10/20 split.
    """

    relative_paths: tuple[str, ...]
    freq: str
    borders: tuple[int, int, int] | None = None


_ETTH_BORDERS = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)
_ETTM_BORDERS = tuple(4 * b for b in _ETTH_BORDERS)

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "ETTh1": BenchmarkSpec(("ETT-small/ETTh1.csv", "ETTh1.csv"), "h", _ETTH_BORDERS),
    "ETTh2": BenchmarkSpec(("ETT-small/ETTh2.csv", "ETTh2.csv"), "h", _ETTH_BORDERS),
    "ETTm1": BenchmarkSpec(("ETT-small/ETTm1.csv", "ETTm1.csv"), "15min", _ETTM_BORDERS),
    "ETTm2": BenchmarkSpec(("ETT-small/ETTm2.csv", "ETTm2.csv"), "15min", _ETTM_BORDERS),
    "weather": BenchmarkSpec(("weather/weather.csv", "weather.csv"), "10min"),
    "electricity": BenchmarkSpec(("electricity/electricity.csv", "electricity.csv", "ECL.csv"), "h"),
    "traffic": BenchmarkSpec(("traffic/traffic.csv", "traffic.csv"), "h"),
    "exchange_rate": BenchmarkSpec(("exchange_rate/exchange_rate.csv", "exchange_rate.csv"), "D"),
    "illness": BenchmarkSpec(("illness/national_illness.csv", "national_illness.csv", "illness.csv"), "W"),
}
"""The long-horizon benchmarks known by name (case-insensitive)."""


# --------------------------------------------------------------------------------------------------------------------
# Frequencies
# --------------------------------------------------------------------------------------------------------------------

# Period of the main seasonal cycle per base frequency: the GluonTS table, except daily (weekly cycle, 7) and weekly
# (yearly cycle, 52) data. Sub-daily frequencies use the daily cycle.
_SEASONALITY_PER_UNIT = {"s": 86400, "min": 1440, "h": 24, "D": 7, "B": 5, "W": 52, "M": 12, "Q": 4, "Y": 1}
_FREQ_ALIASES = {
    "S": "s",
    "T": "min",
    "H": "h",
    "BH": "h",
    "bh": "h",
    "C": "D",
    "A": "Y",
    "AS": "Y",
    "YS": "Y",
    "YE": "Y",
    "BA": "Y",
    "BY": "Y",
    "QS": "Q",
    "QE": "Q",
    "BQ": "Q",
    "MS": "M",
    "ME": "M",
    "BM": "M",
    "BMS": "M",
    "BME": "M",
    "SM": "M",
    "SMS": "M",
    "CBMS": "M",
}


def _split_frequency(freq: str) -> tuple[int, str]:
    """Split a pandas frequency string into `(multiple, normalised base unit)`: `"15min"` -> `(15, "min")`."""
    if not isinstance(freq, str) or not freq:
        raise TypeError(f"`freq` must be a pandas frequency string such as 'h', '15min' or 'D', got {freq!r}.")
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except ValueError as error:
        raise ValueError(
            f"Unknown frequency {freq!r}: pass a pandas frequency string such as 'h', '15min' or 'D'."
        ) from error
    multiple = int(getattr(offset, "n", 1) or 1)
    base = offset.name.split("-")[0]
    base = _FREQ_ALIASES.get(base, base)
    if base in ("ms", "us", "ns", "L", "U", "N"):
        base = "sub-second"
    return multiple, base


def seasonal_period(freq: str | None, default: int = 1) -> int:
    """The length of the main seasonal cycle for a data frequency, in steps.

    Sub-daily data use the daily cycle (`"h"` -> 24, `"15min"` -> 96, `"10min"` -> 144), daily data the weekly one
    (7), business days 5, weekly data the yearly one (52), monthly 12, quarterly 4, yearly 1. Multiples divide the
    period when they can (`"2h"` -> 12), else the period is 1.

    Args:
        freq (`str`, *optional*):
            Pandas frequency string such as `"h"`, `"15min"`, `"D"`, `"W-SUN"`, `"MS"`.
        default (`int`, *optional*, defaults to 1):
            Returned when `freq` is `None`.

    Returns:
        `int`: the seasonal period, at least 1.
    """
    if freq is None:
        return default
    multiple, base = _split_frequency(freq)
    period = _SEASONALITY_PER_UNIT.get(base)
    if period is None:
        return 1
    return period // multiple if period % multiple == 0 and period >= multiple else 1


def timesfm_frequency_index(freq: str | None) -> int:
    """TimesFM's frequency category: 0 (high: up to daily), 1 (medium: weekly, monthly), 2 (low: quarterly, yearly).

    Args:
        freq (`str`, *optional*): Pandas frequency string; `None` gives 0 (TimesFM's default).
    """
    if freq is None:
        return 0
    _, base = _split_frequency(freq)
    if base in ("W", "M"):
        return 1
    if base in ("Q", "Y"):
        return 2
    return 0


def infer_frequency(timestamps: Sequence[Any] | np.ndarray | pd.Series) -> str | None:
    """Infer the pandas frequency string of sorted timestamps (`pd.infer_freq`, else the most common step).

    Args:
        timestamps: datetime-like values in time order.

    Returns:
        `str` or `None` when the timestamps are not datetimes or fewer than 3.
    """
    index = pd.DatetimeIndex(pd.to_datetime(np.asarray(timestamps)))
    if len(index) < 3:
        return None
    head = index[: min(len(index), 1000)]
    try:
        freq = pd.infer_freq(head)
    except (TypeError, ValueError):
        freq = None
    if freq is None:
        steps = pd.Series(head[1:] - head[:-1])
        steps = steps[steps > pd.Timedelta(0)]
        if steps.empty:
            return None
        try:
            freq = pd.tseries.frequencies.to_offset(steps.mode().iloc[0]).freqstr
        except ValueError:
            return None
    return freq


# --------------------------------------------------------------------------------------------------------------------
# Reading raw series
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TimeSeriesCollection:
    """Raw (unscaled) series read from a file, a folder or the Hub, before splitting.

    Args:
        values (`list[np.ndarray]`): One `(length, num_channels)` float64 array per series, NaN where missing.
        channel_names (`list[str]`): The column name of each channel.
        item_ids (`list[str]`): One id per series.
        timestamps (`list[np.ndarray]`, *optional*): One array of timestamps per series.
        freq (`str`, *optional*): Pandas frequency string of the rows.
        name (`str`): A name for the data (benchmark name, file stem or Hub id).
        borders (`tuple[int, int, int]`, *optional*): Fixed split borders (benchmarks with fixed splits).
    """

    values: list[np.ndarray]
    channel_names: list[str]
    item_ids: list[str]
    timestamps: list[np.ndarray] | None = None
    freq: str | None = None
    name: str = "data"
    borders: tuple[int, int, int] | None = None

    @property
    def num_series(self) -> int:
        return len(self.values)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


BUNDLED_DATA_DIR = Path(__file__).parent / "bundled_data"
"""Benchmark files shipped with the package (ETTh1), used when no data folder is given."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding the benchmark files: `data_dir`, else the `HF_TSPRUNE_DATA_DIR` environment variable."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None


def benchmark_name(name: str) -> str | None:
    """The canonical benchmark name for `name` (case-insensitive, `-`/`_` alike), or `None` if it is not one."""
    key = name.lower().replace("-", "_")
    for known in BENCHMARKS:
        if known.lower() == key:
            return known
    aliases = {"ecl": "electricity", "exchange": "exchange_rate", "ili": "illness", "national_illness": "illness"}
    return aliases.get(key)


def resolve_benchmark_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The file of a benchmark under the data folder.

    Args:
        name (`str`): A benchmark name from [`BENCHMARKS`] (case-insensitive).
        data_dir (`str` or `os.PathLike`, *optional*): The data folder; defaults to `$HF_TSPRUNE_DATA_DIR`.

    Raises:
        `ValueError`: unknown name, no data folder, or the file is not in it.
    """
    canonical = benchmark_name(name)
    if canonical is None:
        raise ValueError(f"Unknown benchmark {name!r}. Known benchmarks: {', '.join(BENCHMARKS)}.")
    spec = BENCHMARKS[canonical]
    root = resolve_data_dir(data_dir)
    if root is None and any((BUNDLED_DATA_DIR / relative).is_file() for relative in spec.relative_paths):
        root = BUNDLED_DATA_DIR  # ETTh1 ships with the package (CC BY-ND 4.0, unmodified), for offline defaults
    if root is None:
        raise ValueError(
            f"Benchmark {canonical!r} is read from a local data folder: pass `data_dir` (`--data_dir`) or set "
            f"${DATA_DIR_ENV} to the folder holding {spec.relative_paths[0]}."
        )
    for relative in spec.relative_paths:
        if (root / relative).is_file():
            return root / relative
    filename = Path(spec.relative_paths[0]).name
    found = sorted(root.rglob(filename)) if root.is_dir() else []
    if found:
        return found[0]
    raise ValueError(
        f"Benchmark {canonical!r} not found under {root}: expected {' or '.join(spec.relative_paths)}. "
        f"Download the LTSF benchmark files there or point `data_dir`/${DATA_DIR_ENV} at the right folder."
    )


_FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".json", ".jsonl", ".gz", ".bz2", ".zip", ".xz")


def _read_table(path: Path) -> pd.DataFrame:
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() in (".gz", ".bz2", ".zip", ".xz") else ""
    suffix = suffix or path.suffix.lower()
    if suffix.startswith(".csv") or suffix.startswith(".txt"):
        return pd.read_csv(path)
    if suffix.startswith(".tsv"):
        return pd.read_csv(path, sep="\t")
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".json", ".jsonl"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    raise ValueError(f"Cannot read {path}: supported files are .csv, .tsv, .parquet/.pq and .json/.jsonl.")


def _load_datasets_table(
    path_or_id: str, config: str | None, split: str, cache_dir: str | None = None
) -> pd.DataFrame:
    """Read a Hub dataset id (or a local folder laid out like one) with `datasets.load_dataset`."""
    loaded = datasets.load_dataset(path_or_id, config, cache_dir=os.fspath(cache_dir) if cache_dir else None)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            if len(loaded) != 1:
                raise ValueError(
                    f"{path_or_id!r} has splits {list(loaded)}, none named {split!r}: "
                    "pass `hub_split` with one of them."
                )
            split = next(iter(loaded))
        loaded = loaded[split]
    return loaded.to_pandas()


def _is_list_column(series: pd.Series) -> bool:
    if series.dtype != object or series.empty:
        return False
    first = series.dropna()
    return not first.empty and isinstance(first.iloc[0], (list, tuple, np.ndarray, pd.Index, pd.Series))


def _find_timestamp_column(frame: pd.DataFrame, timestamp_column: str | None, exclude: Sequence[str]) -> str:
    if timestamp_column is not None:
        if timestamp_column not in frame.columns:
            raise ValueError(
                f"Time column {timestamp_column!r} not found; columns are {list(frame.columns)}. "
                "Pass `timestamp_column` with one of them."
            )
        return timestamp_column
    lowered = {str(c).lower(): c for c in frame.columns if c not in exclude}
    for candidate in TIMESTAMP_COLUMN_CANDIDATES:
        if candidate in lowered:
            return lowered[candidate]
    for column in frame.columns:
        if column in exclude:
            continue
        series = frame[column]
        if pd.api.types.is_datetime64_any_dtype(series):
            return column
        if _is_list_column(series):
            inner = np.asarray(series.dropna().iloc[0])
            if np.issubdtype(inner.dtype, np.datetime64):
                return column
        elif pd.api.types.is_string_dtype(series) or series.dtype == object:
            try:
                pd.to_datetime(series.head(20))
                return column
            except (ValueError, TypeError):
                continue
    raise ValueError(
        f"No time column found among {list(frame.columns)}: name it one of {TIMESTAMP_COLUMN_CANDIDATES} "
        "or pass `timestamp_column`."
    )


def _select_value_columns(
    frame: pd.DataFrame, target: str | Sequence[str] | None, exclude: Sequence[str], list_valued: bool
) -> list[str]:
    candidates = [c for c in frame.columns if c not in exclude]
    if target is not None:
        targets = [target] if isinstance(target, str) else list(target)
        missing = [t for t in targets if t not in frame.columns]
        if missing:
            raise ValueError(
                f"Target column(s) {missing} not found; available columns are {candidates}. "
                "Pass `target` with existing column names (or None for all numeric columns)."
            )
        return targets
    if list_valued:
        chosen = [
            c
            for c in candidates
            if _is_list_column(frame[c]) and np.asarray(frame[c].dropna().iloc[0]).dtype.kind in "biuf"
        ]
    else:
        chosen = [
            c
            for c in candidates
            if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        ]
    dropped = [c for c in candidates if c not in chosen]
    if dropped:
        logger.warning(f"Ignoring non-numeric columns {dropped}; pass `target` to choose the forecast columns.")
    if not chosen:
        raise ValueError(f"No numeric value column found among {candidates}: pass `target`.")
    return chosen


def _clean_series(
    timestamps: np.ndarray, values: np.ndarray, item_id: str, duplicate_timestamps: str, report: dict[str, list]
) -> tuple[np.ndarray, np.ndarray]:
    """Sort by time and handle duplicated timestamps per `duplicate_timestamps`; repairs are noted in `report`."""
    if duplicate_timestamps not in ("drop", "keep", "raise"):
        raise ValueError(f"`duplicate_timestamps` must be 'drop', 'keep' or 'raise', got {duplicate_timestamps!r}.")
    if pd.isna(timestamps).any():
        raise ValueError(
            f"Series {item_id!r} has {int(pd.isna(timestamps).sum())} missing or unparseable timestamps: "
            "fix or drop those rows first."
        )
    order = np.argsort(timestamps, kind="stable")
    if not np.all(order == np.arange(len(order))):
        report["unsorted"].append(item_id)
        timestamps, values = timestamps[order], values[order]
    duplicated = pd.Series(timestamps).duplicated(keep="last").to_numpy()
    if duplicated.any():
        count = int(duplicated.sum())
        first = timestamps[np.argmax(duplicated)]
        if duplicate_timestamps == "raise":
            raise ValueError(
                f"Series {item_id!r} has {count} duplicated timestamps (first at {first}). For several series in one "
                "long table pass `id_column`; otherwise pass `duplicate_timestamps='drop'` (keep the last row) or "
                "'keep'."
            )
        report["duplicated"].append((item_id, count, first))
        if duplicate_timestamps == "drop":
            timestamps, values = timestamps[~duplicated], values[~duplicated]
    return timestamps, values


def _log_repairs(report: dict[str, list], duplicate_timestamps: str, num_series: int) -> None:
    if report["unsorted"]:
        logger.warning(
            f"{len(report['unsorted'])} of {num_series} series have timestamps that are not sorted (first "
            f"{report['unsorted'][0]!r}); their rows are sorted by time (stable)."
        )
    if report["duplicated"]:
        item_id, count, first = report["duplicated"][0]
        total = sum(c for _, c, _ in report["duplicated"])
        action = (
            "keeping the last row of each; pass `duplicate_timestamps='keep'` to keep all rows or 'raise' to stop"
            if duplicate_timestamps == "drop"
            else "keeping every row, as the published benchmark protocol does; pass `duplicate_timestamps='drop'` "
            "to keep the last row only"
        )
        logger.warning(
            f"{total} duplicated timestamps in {len(report['duplicated'])} of {num_series} series "
            f"(series {item_id!r}: "
            f"{count}, first at {first}); {action}."
        )


def _numeric_values(table: pd.DataFrame, item_id: str) -> np.ndarray:
    """Value columns as float64; text that is not a number becomes NaN (warned), then follows `missing_values`."""
    numeric = table.apply(pd.to_numeric, errors="coerce")
    coerced = int((numeric.isna() & table.notna()).to_numpy().sum())
    if coerced:
        logger.warning(
            f"Series {item_id!r}: {coerced} non-numeric values in {list(table.columns)} are read as missing."
        )
    return numeric.to_numpy(dtype=np.float64)


def _to_timestamps(raw: Any, column: str) -> np.ndarray:
    array = np.asarray(raw)
    if np.issubdtype(array.dtype, np.datetime64) or np.issubdtype(array.dtype, np.number):
        return array
    try:
        return pd.to_datetime(pd.Series(array)).to_numpy()
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Cannot parse time column {column!r} as datetimes: {error}. Fix the column or its format."
        ) from error


def frame_to_collection(
    frame: pd.DataFrame,
    *,
    target: str | Sequence[str] | None = None,
    timestamp_column: str | None = None,
    id_column: str | None = None,
    freq: str | None = None,
    duplicate_timestamps: str = "drop",
    name: str = "data",
) -> TimeSeriesCollection:
    """Parse a table into series: wide (one row per time step), long (`id_column`), or one row per series.

    Args:
        frame (`pd.DataFrame`): The table.
        target (`str` or `list[str]`, *optional*): Columns to forecast; all numeric columns when `None`.
        timestamp_column (`str`, *optional*): The time column; guessed from its name or type when `None`.
        id_column (`str`, *optional*): Series id column of a long table. One-row-per-series tables (list-valued time
            and value columns, like chronos_datasets) are recognised without it.
        freq (`str`, *optional*): The data frequency; inferred from the timestamps when `None`.
        duplicate_timestamps (`str`, *optional*, defaults to `"drop"`): `"drop"` keeps the last row of each
            duplicated timestamp (warned), `"keep"` keeps all rows (warned), `"raise"` stops.
        name (`str`): A name for the data.
    """
    if frame.empty:
        raise ValueError(f"{name!r} has no rows.")
    frame = frame.reset_index(drop=True)
    if id_column is not None and id_column not in frame.columns:
        raise ValueError(f"Id column {id_column!r} not found; columns are {list(frame.columns)}.")
    exclude = [id_column] if id_column else []
    time_col = _find_timestamp_column(frame, timestamp_column, exclude)
    list_valued = _is_list_column(frame[time_col])
    if list_valued and id_column is None:
        lowered = {str(c).lower(): c for c in frame.columns}
        id_column = next((lowered[c] for c in ID_COLUMN_CANDIDATES if c in lowered), None)
    exclude = [c for c in (time_col, id_column) if c is not None]
    value_cols = _select_value_columns(frame, target, exclude, list_valued)

    values, item_ids, stamps = [], [], []
    report: dict[str, list] = {"unsorted": [], "duplicated": []}
    if list_valued:
        for row_index, row in enumerate(frame.itertuples(index=False)):
            record = dict(zip(frame.columns, row))
            item_id = str(record[id_column]) if id_column else str(row_index)
            ts = _to_timestamps(record[time_col], time_col)
            try:
                vals = np.stack([np.asarray(record[c], dtype=np.float64) for c in value_cols], axis=-1)
            except ValueError as error:
                raise ValueError(f"Series {item_id!r}: value columns {value_cols} have different lengths.") from error
            if len(vals) != len(ts):
                raise ValueError(f"Series {item_id!r}: {len(ts)} timestamps but {len(vals)} values.")
            ts, vals = _clean_series(ts, vals, item_id, duplicate_timestamps, report)
            values.append(vals)
            item_ids.append(item_id)
            stamps.append(ts)
    else:
        groups = [(None, frame)] if id_column is None else list(frame.groupby(id_column, sort=False))
        for key, group in groups:
            item_id = name if key is None else str(key)
            ts = _to_timestamps(group[time_col].to_numpy(), time_col)
            vals = _numeric_values(group[value_cols], item_id)
            ts, vals = _clean_series(ts, vals, item_id, duplicate_timestamps, report)
            values.append(vals)
            item_ids.append(item_id)
            stamps.append(ts)
    _log_repairs(report, duplicate_timestamps, len(values))

    if freq is None:
        longest = int(np.argmax([len(v) for v in values]))
        if np.issubdtype(np.asarray(stamps[longest]).dtype, np.datetime64):
            freq = infer_frequency(stamps[longest])
    else:
        _split_frequency(freq)  # validate
    return TimeSeriesCollection(
        values=values,
        channel_names=[str(c) for c in value_cols],
        item_ids=item_ids,
        timestamps=stamps,
        freq=freq,
        name=name,
    )


def load_time_series(
    dataset: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    dataset_config: str | None = None,
    target: str | Sequence[str] | None = None,
    timestamp_column: str | None = None,
    id_column: str | None = None,
    freq: str | None = None,
    duplicate_timestamps: str | None = None,
    hub_split: str = "train",
    cache_dir: str | os.PathLike | None = None,
) -> TimeSeriesCollection:
    """Read raw series from a benchmark name, a local file or folder, or a Hub dataset id.

    Resolution order: a known benchmark name (read from `data_dir` or `$HF_TSPRUNE_DATA_DIR`); an existing local
    file (`.csv`, `.tsv`, `.parquet`, `.json(l)`); an existing local folder (read with `datasets.load_dataset`, like a
    Hub dataset repository); a Hub dataset id `owner/name` (`datasets.load_dataset`, parquet/CSV repos).

    Args:
        dataset (`str` or `os.PathLike`): The benchmark name, path or Hub id.
        data_dir (`str` or `os.PathLike`, *optional*): Folder of the benchmark files.
        dataset_config (`str`, *optional*): Hub dataset configuration (e.g. `"m4_hourly"` of chronos_datasets).
        target, timestamp_column, id_column, freq: see [`frame_to_collection`].
        duplicate_timestamps (`str`, *optional*): `"keep"` for benchmarks (their published files are used as is:
            `weather.csv` has one duplicated row), `"drop"` otherwise; see [`frame_to_collection`].
        hub_split (`str`, *optional*, defaults to `"train"`): The split read from a Hub dataset or folder.
        cache_dir (`str` or `os.PathLike`, *optional*): `datasets` cache folder for Hub datasets and folders.

    Raises:
        `ValueError`: unknown name (the message lists the known benchmarks), missing file, bad columns.
    """
    text = os.fspath(dataset)
    canonical = benchmark_name(text) if not os.path.exists(text) else None
    if canonical is not None:
        path = resolve_benchmark_path(canonical, data_dir)
        spec = BENCHMARKS[canonical]
        collection = frame_to_collection(
            _read_table(path),
            target=target,
            timestamp_column=timestamp_column,
            id_column=id_column,
            freq=freq or spec.freq,
            duplicate_timestamps=duplicate_timestamps or "keep",
            name=canonical,
        )
        collection.borders = spec.borders
        return collection

    path = Path(text).expanduser()
    kwargs = {
        "target": target,
        "timestamp_column": timestamp_column,
        "id_column": id_column,
        "freq": freq,
        "duplicate_timestamps": duplicate_timestamps or "drop",
    }
    if path.is_file():
        return frame_to_collection(_read_table(path), name=path.stem, **kwargs)
    if path.is_dir():
        return frame_to_collection(
            _load_datasets_table(str(path), dataset_config, hub_split, cache_dir), name=path.name, **kwargs
        )
    if path.suffix.lower() in _FILE_SUFFIXES:
        raise ValueError(f"File {text!r} not found. Check the path (relative paths start from the current folder).")
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", text) and not text.startswith((".", "/")):
        try:
            frame = _load_datasets_table(text, dataset_config, hub_split, cache_dir)
        except OSError as error:  # ConnectionError, DatasetNotFoundError, ...
            raise ValueError(
                f"Could not load {text!r} as a Hub dataset ({type(error).__name__}: {error}). Check the id and the "
                "network (or HF_HUB_OFFLINE), or pass a local file or folder. "
                f"Known benchmarks: {', '.join(BENCHMARKS)}."
            ) from error
        return frame_to_collection(frame, name=text if not dataset_config else f"{text}/{dataset_config}", **kwargs)
    raise ValueError(
        f"Unknown dataset {text!r}: not a known benchmark, an existing file or folder, nor a Hub id 'owner/name'. "
        f"Known benchmarks: {', '.join(BENCHMARKS)}."
    )


# --------------------------------------------------------------------------------------------------------------------
# Splits, scaling, windows
# --------------------------------------------------------------------------------------------------------------------


def split_borders(
    length: int, split_ratios: Sequence[float] = (0.7, 0.1, 0.2), borders: Sequence[int] | None = None
) -> dict[str, tuple[int, int]]:
    """Row ranges `[start, end)` of the train, validation and test parts of one series (the targets' ranges).

    With `borders=(train_end, validation_end, test_end)` the parts are `[0, train_end)`, `[train_end, validation_end)`,
    `[validation_end, test_end)`. Otherwise the LTSF 70/10/20 rule: `num_train = int(length * 0.7)`,
    `num_test = int(length * 0.2)`, validation the rows between.
    """
    if borders is not None:
        train_end, val_end, test_end = (int(b) for b in borders)
        if not 0 < train_end <= val_end <= test_end:
            raise ValueError(f"`borders` must be increasing positive row numbers, got {tuple(borders)}.")
        if test_end > length:
            raise ValueError(f"Split borders {tuple(borders)} exceed the series length {length}.")
        return {"train": (0, train_end), "validation": (train_end, val_end), "test": (val_end, test_end)}
    if len(split_ratios) != 3 or min(split_ratios) < 0 or sum(split_ratios) > 1 + 1e-9:
        raise ValueError(f"`split_ratios` must be 3 non-negative fractions summing to at most 1, got {split_ratios}.")
    num_train = int(length * split_ratios[0])
    num_test = int(length * split_ratios[2])
    return {"train": (0, num_train), "validation": (num_train, length - num_test), "test": (length - num_test, length)}


class ForecastingWindows:
    """Scaled series and the window geometry; the lazy transform installed on every split.

    Called with a batch of index rows (`series_index`, `start`, and `channel` when channel-independent) it returns
    the windows as float tensors. It also carries the metadata: `freq`, `channel_names`, `item_ids`, `mean`, `std`,
    `context_length`, `prediction_length`, `channel_independent`. Get it from a split with [`get_window_source`].

    Args:
        values (`np.ndarray`): `(total_length, num_channels)` scaled values of all series back to back, 0 where
            missing.
        observed (`np.ndarray`): `(total_length, num_channels)` boolean observed mask.
        offsets (`np.ndarray`): Start row of each series in `values`.
        lengths (`np.ndarray`): Length of each series.
        mean, std (`np.ndarray`): `(num_series, num_channels)` scaler statistics (0 and 1 when unscaled).
        context_length, prediction_length (`int`): Window geometry.
        channel_independent (`bool`): One channel per item (`True`) or all channels (`False`).
        freq (`str`, *optional*), channel_names (`list[str]`), item_ids (`list[str]`), name (`str`): Metadata.
        keep_channel_axis (`bool`, *optional*, defaults to `False`): Channel-independent items of shape
            `(length, 1)` instead of `(length,)`.
    """

    def __init__(
        self,
        values: np.ndarray,
        observed: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        context_length: int,
        prediction_length: int,
        channel_independent: bool,
        freq: str | None,
        channel_names: list[str],
        item_ids: list[str],
        name: str = "data",
        keep_channel_axis: bool = False,
    ):
        self.values = values
        self.observed = observed
        self.offsets = offsets
        self.lengths = lengths
        self.mean = mean
        self.std = std
        self.context_length = int(context_length)
        self.prediction_length = int(prediction_length)
        self.channel_independent = bool(channel_independent)
        self.freq = freq
        self.channel_names = channel_names
        self.item_ids = item_ids
        self.name = name
        self.keep_channel_axis = bool(keep_channel_axis)
        self._channel_major: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_channel_major"] = None
        return state

    @property
    def num_channels(self) -> int:
        return self.values.shape[1]

    def window_arrays(
        self, series_index: np.ndarray, start: np.ndarray, channel: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values and observed mask of windows: `(n, context + horizon)` with `channel`, else `(n, ..., C)`."""
        rows = self.offsets[np.asarray(series_index)] + np.asarray(start, dtype=np.int64)
        width = self.context_length + self.prediction_length
        if channel is not None:
            if self._channel_major is None:  # (C, total_length) copies: windows are then contiguous slices
                self._channel_major = (np.ascontiguousarray(self.values.T), np.ascontiguousarray(self.observed.T))
            channel = np.asarray(channel)
            windows = [sliding_window_view(array, width, axis=1)[channel, rows] for array in self._channel_major]
            return windows[0], windows[1]
        windows = [
            sliding_window_view(array, width, axis=0)[rows].transpose(0, 2, 1)
            for array in (self.values, self.observed)
        ]
        return np.ascontiguousarray(windows[0]), np.ascontiguousarray(windows[1])

    def __call__(self, batch: dict[str, list]) -> dict[str, torch.Tensor]:
        channel = batch.get("channel") if self.channel_independent else None
        values, observed = self.window_arrays(
            np.asarray(batch["series_index"]),
            np.asarray(batch["start"]),
            None if channel is None else np.asarray(channel),
        )
        values = torch.from_numpy(values)
        observed = torch.from_numpy(observed.astype(np.float32))
        if channel is not None and self.keep_channel_axis:
            values, observed = values[..., None], observed[..., None]
        length = self.context_length
        return {
            "past_values": values[:, :length],
            "future_values": values[:, length:],
            "past_observed_mask": observed[:, :length],
            "future_observed_mask": observed[:, length:],
        }

    def unscale(self, values: np.ndarray, series_index: np.ndarray, channel: np.ndarray | None = None) -> np.ndarray:
        """Undo the standard scaling of window values `(n, T)` (with `channel`) or `(n, T, C)`."""
        series_index = np.asarray(series_index)
        if channel is not None:
            channel = np.asarray(channel)
            return values * self.std[series_index, channel][:, None] + self.mean[series_index, channel][:, None]
        return values * self.std[series_index][:, None, :] + self.mean[series_index][:, None, :]

    def metadata(self) -> dict[str, Any]:
        """JSON-able description (stored in each split's `info.description`)."""
        return {
            "name": self.name,
            "freq": self.freq,
            "context_length": self.context_length,
            "prediction_length": self.prediction_length,
            "channel_independent": self.channel_independent,
            "keep_channel_axis": self.keep_channel_axis,
            "channel_names": self.channel_names,
            "num_series": len(self.item_ids),
        }


def _handle_missing(values: np.ndarray, item_id: str, missing_values: str) -> np.ndarray:
    """Fill NaNs per `missing_values` (`"mask"`: left for the scaler to set to 0, `"ffill"`, `"raise"`)."""
    if missing_values not in ("mask", "ffill", "raise"):
        raise ValueError(f"`missing_values` must be 'mask', 'ffill' or 'raise', got {missing_values!r}.")
    missing = np.isnan(values)
    if not missing.any() or missing_values == "mask":
        return values
    if missing_values == "raise":
        raise ValueError(
            f"Series {item_id!r} has {int(missing.sum())} missing (NaN) values. Pass `missing_values='mask'` (fill "
            "with the training mean, observed mask 0) or 'ffill' (forward/backward fill, observed mask 0), or clean "
            "the data."
        )
    return pd.DataFrame(values).ffill().bfill().to_numpy()


def _window_starts(
    length: int, part: tuple[int, int], context_length: int, prediction_length: int, stride: int
) -> np.ndarray:
    first = max(0, part[0] - context_length)
    last = part[1] - context_length - prediction_length
    if last < first:
        return np.empty(0, dtype=np.int64)
    return np.arange(first, last + 1, stride, dtype=np.int64)


def build_window_datasets(
    collection: TimeSeriesCollection,
    *,
    context_length: int = 512,
    prediction_length: int = 96,
    channel_independent: bool = True,
    keep_channel_axis: bool = False,
    stride: int = 1,
    eval_stride: int = 1,
    scale: bool = True,
    split_ratios: Sequence[float] = (0.7, 0.1, 0.2),
    borders: Sequence[int] | None = None,
    missing_values: str = "mask",
) -> datasets.DatasetDict:
    """Split, scale and window a [`TimeSeriesCollection`]; see [`load_forecasting_dataset`] for the arguments."""
    for arg, value in (("context_length", context_length), ("prediction_length", prediction_length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{arg}` must be a positive integer, got {value!r}.")
    for arg, value in (("stride", stride), ("eval_stride", eval_stride)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{arg}` must be a positive integer, got {value!r}.")
    borders = borders if borders is not None else collection.borders
    needed = context_length + prediction_length

    kept, dropped = [], []
    for index, values in enumerate(collection.values):
        (kept if len(values) >= needed else dropped).append(index)
    if dropped:
        shortest = min(len(collection.values[i]) for i in dropped)
        message = (
            f"{len(dropped)} of {collection.num_series} series of {collection.name!r} are shorter than "
            f"context_length + prediction_length = {context_length} + {prediction_length} = {needed} rows "
            f"(shortest {shortest})"
        )
        if not kept:
            raise ValueError(f"{message}: nothing to window. Lower `context_length` or `prediction_length`.")
        logger.warning(f"{message}; dropping them. Lower `context_length` or `prediction_length` to keep them.")

    num_channels = collection.num_channels
    chunks, masks, offsets, lengths, means, stds = [], [], [], [], [], []
    index_rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {split: [] for split in SPLITS}
    offset = 0
    missing_count, missing_series = 0, 0
    for position, index in enumerate(kept):
        raw = collection.values[index]
        item_id = collection.item_ids[index]
        parts = split_borders(len(raw), split_ratios, borders)
        observed = ~np.isnan(raw)
        if not observed.all():
            missing_count += int((~observed).sum())
            missing_series += 1
        filled = _handle_missing(raw, item_id, missing_values)
        train = filled[parts["train"][0] : parts["train"][1]]
        if scale:
            if len(train) == 0:
                raise ValueError(f"Series {item_id!r} has no training rows to fit the scaler: check `split_ratios`.")
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels, handled below
                mean = np.nanmean(train, axis=0)
                std = np.nanstd(train, axis=0)
            all_nan = np.isnan(mean)
            if all_nan.any():
                logger.warning(
                    f"Series {item_id!r}: channels {np.flatnonzero(all_nan).tolist()} have no observed training value."
                )
            mean = np.where(all_nan, 0.0, mean)
            std = np.where(np.isnan(std) | (std == 0), 1.0, std)  # constant channels: scale 1, as scikit-learn
        else:
            mean, std = np.zeros(num_channels), np.ones(num_channels)
        scaled = (filled - mean) / std
        scaled = np.where(np.isnan(scaled), 0.0, scaled)
        chunks.append(scaled.astype(np.float32))
        masks.append(observed)
        offsets.append(offset)
        lengths.append(len(raw))
        means.append(mean)
        stds.append(std)
        offset += len(raw)
        for split in SPLITS:
            split_stride = stride if split == "train" else eval_stride
            starts = _window_starts(len(raw), parts[split], context_length, prediction_length, split_stride)
            index_rows[split].append((np.full(len(starts), position, dtype=np.int32), starts))

    if missing_count:
        how = (
            "forward-filled (then back-filled)"
            if missing_values == "ffill"
            else "filled with the channel's training mean (0 after scaling)"
        )
        logger.warning(
            f"{missing_count} missing (NaN) values in {missing_series} of {len(kept)} series of {collection.name!r} "
            f"are {how} and flagged 0 in the observed masks; metrics skip them. Pass `missing_values='raise'` to stop."
        )
    source = ForecastingWindows(
        values=np.concatenate(chunks),
        observed=np.concatenate(masks),
        offsets=np.asarray(offsets, dtype=np.int64),
        lengths=np.asarray(lengths, dtype=np.int64),
        mean=np.stack(means),
        std=np.stack(stds),
        context_length=context_length,
        prediction_length=prediction_length,
        channel_independent=channel_independent,
        freq=collection.freq,
        channel_names=collection.channel_names,
        item_ids=[collection.item_ids[i] for i in kept],
        name=collection.name,
        keep_channel_axis=keep_channel_axis,
    )
    description = json.dumps(source.metadata())
    splits = {}
    for split in SPLITS:
        series_index = np.concatenate([s for s, _ in index_rows[split]])
        starts = np.concatenate([t for _, t in index_rows[split]])
        if len(starts) == 0:
            logger.warning(
                f"Split {split!r} of {collection.name!r} has no window: its part of the series is shorter than "
                f"prediction_length ({prediction_length}) or the context does not fit before it."
            )
        columns: dict[str, np.ndarray] = {"series_index": series_index, "start": starts}
        if channel_independent:
            # time-window major, channel minor: the C channels of one window are consecutive
            columns = {
                "series_index": np.repeat(series_index, num_channels),
                "start": np.repeat(starts, num_channels),
                "channel": np.tile(np.arange(num_channels, dtype=np.int32), len(starts)),
            }
        features = datasets.Features(
            {name: datasets.Value("int32" if name != "start" else "int64") for name in columns}
        )
        split_ds = datasets.Dataset.from_dict(
            {k: v for k, v in columns.items()},
            features=features,
            info=datasets.DatasetInfo(description=description, dataset_name=collection.name, features=features),
            split=datasets.NamedSplit(split),
        )
        split_ds.set_transform(source)
        splits[split] = split_ds
    return datasets.DatasetDict(splits)


def load_forecasting_dataset(
    dataset: str | os.PathLike | TimeSeriesCollection,
    *,
    context_length: int = 512,
    prediction_length: int = 96,
    data_dir: str | os.PathLike | None = None,
    dataset_config: str | None = None,
    target: str | Sequence[str] | None = None,
    timestamp_column: str | None = None,
    id_column: str | None = None,
    freq: str | None = None,
    channel_independent: bool = True,
    keep_channel_axis: bool = False,
    stride: int = 1,
    eval_stride: int = 1,
    scale: bool = True,
    split_ratios: Sequence[float] = (0.7, 0.1, 0.2),
    borders: Sequence[int] | None = None,
    missing_values: str = "mask",
    duplicate_timestamps: str | None = None,
    hub_split: str = "train",
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Load forecasting windows as a `datasets.DatasetDict` with `train`, `validation` and `test` splits.

    Example:

    ```python
    >>> from hf_tsprune.data import load_forecasting_dataset
    >>> ds = load_forecasting_dataset("ETTh1", data_dir="../shared/data", context_length=512, prediction_length=96)
    >>> ds["test"].num_rows  # 2785 windows x 7 channels
    19495
    >>> ds["test"][0]["past_values"].shape
    torch.Size([512])
    ```

    Args:
        dataset (`str`, `os.PathLike` or [`TimeSeriesCollection`]):
            A benchmark name ([`BENCHMARKS`]: ETTh1, ETTh2, ETTm1, ETTm2, weather, electricity, traffic,
            exchange_rate, illness), a CSV/TSV/parquet/JSON file with a time column, a local folder laid out like a
            Hub dataset repository, or a Hub dataset id (`owner/name`, parquet or CSV; one-row-per-series corpora
            such as chronos_datasets included).
        context_length (`int`, *optional*, defaults to 512): Length of `past_values`.
        prediction_length (`int`, *optional*, defaults to 96): Length of `future_values`.
        data_dir (`str` or `os.PathLike`, *optional*): Folder of the benchmark files; default `$HF_TSPRUNE_DATA_DIR`.
        dataset_config (`str`, *optional*): Configuration name of a Hub dataset.
        target (`str` or `list[str]`, *optional*): Columns to forecast (e.g. `"OT"`); all numeric columns if `None`.
        timestamp_column (`str`, *optional*): Time column; guessed (`date`, `timestamp`, ..., datetime type) if `None`.
        id_column (`str`, *optional*): Series id column of a long table (several series stacked).
        freq (`str`, *optional*): Pandas frequency; inferred from the timestamps (or the benchmark's) if `None`.
        channel_independent (`bool`, *optional*, defaults to `True`):
            One channel per item (`past_values` of shape `(context_length,)`), as univariate models and the paper's
            channel-independent evaluation use; `False` gives `(context_length, num_channels)` items.
        keep_channel_axis (`bool`, *optional*, defaults to `False`):
            Channel-independent items of shape `(context_length, 1)` / `(prediction_length, 1)`, as
            `PatchTSTForPrediction`/`PatchTSMixerForPrediction` expect in a `Trainer` (TimesFM takes
            `(context_length,)`).
        stride (`int`, *optional*, defaults to 1): Step between training windows.
        eval_stride (`int`, *optional*, defaults to 1): Step between validation and test windows (the protocol uses 1).
        scale (`bool`, *optional*, defaults to `True`): Standard-scale each channel of each series on its train rows.
        split_ratios (`tuple[float, float, float]`, *optional*, defaults to `(0.7, 0.1, 0.2)`):
            Train/validation/test fractions for data without fixed borders.
        borders (`tuple[int, int, int]`, *optional*): Explicit end rows of the train, validation and test parts
            (overrides the benchmark's and `split_ratios`).
        missing_values (`str`, *optional*, defaults to `"mask"`):
            NaNs: `"mask"` fills them with the training mean (0 after scaling), `"ffill"` forward/backward fills them;
            both warn and set the observed masks to 0 there. `"raise"` stops with an error.
        duplicate_timestamps (`str`, *optional*):
            `"drop"` (default for files and Hub data: keep the last row of each timestamp, warned), `"keep"`
            (default for benchmarks, which are used exactly as published, warned) or `"raise"`. Unsorted timestamps
            are always sorted, with a warning.
        hub_split (`str`, *optional*, defaults to `"train"`): The split read from a Hub dataset (the windows' splits
            are then cut from it in time).
        cache_dir (`str` or `os.PathLike`, *optional*): `datasets` cache folder for Hub datasets and folders.

    Returns:
        `datasets.DatasetDict`: `train`, `validation`, `test` splits of windows made lazily (`set_transform`).

    Raises:
        `ValueError`: an unknown dataset name (the known ones are listed), a missing file or target column, series
            all shorter than `context_length + prediction_length`, or bad data under a `"raise"` policy.
    """
    if isinstance(dataset, TimeSeriesCollection):
        collection = dataset
    else:
        collection = load_time_series(
            dataset,
            data_dir=data_dir,
            dataset_config=dataset_config,
            target=target,
            timestamp_column=timestamp_column,
            id_column=id_column,
            freq=freq,
            duplicate_timestamps=duplicate_timestamps,
            hub_split=hub_split,
            cache_dir=cache_dir,
        )
    return build_window_datasets(
        collection,
        context_length=context_length,
        prediction_length=prediction_length,
        channel_independent=channel_independent,
        keep_channel_axis=keep_channel_axis,
        stride=stride,
        eval_stride=eval_stride,
        scale=scale,
        split_ratios=split_ratios,
        borders=borders,
        missing_values=missing_values,
    )


def get_window_source(dataset: datasets.Dataset) -> ForecastingWindows:
    """The [`ForecastingWindows`] behind a split made by [`load_forecasting_dataset`] (its data and metadata).

    Raises:
        `TypeError`: the dataset has no forecasting-window transform (not made here, or its format was reset).
    """
    transform = dataset.format.get("format_kwargs", {}).get("transform")
    if not isinstance(transform, ForecastingWindows):
        raise TypeError(
            "This dataset has no forecasting-window transform: build it with "
            "`hf_tsprune.data.load_forecasting_dataset` "
            "and do not call `reset_format`/`set_format` on it."
        )
    return transform


def window_index_arrays(dataset: datasets.Dataset) -> dict[str, np.ndarray]:
    """The index columns of a split (`series_index`, `start`, `channel` when channel-independent) as numpy arrays."""
    table = dataset.with_format("arrow")[:]
    return {name: table.column(name).to_numpy() for name in dataset.column_names}


@dataclass
class WindowBatches:
    """Iterate over a split in batches of windows as numpy arrays (fast path used by the evaluation loop).

    Args:
        dataset (`datasets.Dataset`): A split made by [`load_forecasting_dataset`].
        batch_size (`int`): Windows per batch.
        max_windows (`int`, *optional*): Stop after this many items.
    """

    dataset: datasets.Dataset
    batch_size: int = 256
    max_windows: int | None = None
    _index: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self):
        self.source = get_window_source(self.dataset)
        self._index = window_index_arrays(self.dataset)
        total = len(self.dataset)
        self.total = total if self.max_windows is None else min(total, int(self.max_windows))

    def __len__(self) -> int:
        return (self.total + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        channel_independent = self.source.channel_independent
        for begin in range(0, self.total, self.batch_size):
            end = min(begin + self.batch_size, self.total)
            series_index = self._index["series_index"][begin:end]
            channel = self._index["channel"][begin:end] if channel_independent else None
            values, observed = self.source.window_arrays(series_index, self._index["start"][begin:end], channel)
            yield {
                "values": values,
                "observed": observed,
                "series_index": series_index,
                "start": self._index["start"][begin:end],
                "channel": channel,
            }
