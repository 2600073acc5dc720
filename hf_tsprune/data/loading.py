"""Reading raw series: the LTSF benchmark files (bundled ETTh1 included), CSV/TSV/parquet/JSON files, folders and Hub
dataset ids, parsed into a [`TimeSeriesCollection`] (time column found, values numeric, rows sorted, duplicated
timestamps handled). Splitting, scaling and windowing are in [`hf_tsprune.data.windows`].
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
from transformers.utils import logging

from .frequencies import _split_frequency, infer_frequency

logger = logging.get_logger(__name__)

DATA_DIR_ENV = "HF_TSPRUNE_DATA_DIR"
"""Environment variable naming the folder that holds the benchmark files (used when no `data_dir` is given)."""

TIMESTAMP_COLUMN_CANDIDATES = ("date", "timestamp", "time", "datetime", "ds", "date_time", "time_idx")
ID_COLUMN_CANDIDATES = ("id", "item_id", "unique_id", "series_id")


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
        source (`str`, *optional*): Where the series were read from (file path or Hub id), named by data errors.
    """

    values: list[np.ndarray]
    channel_names: list[str]
    item_ids: list[str]
    timestamps: list[np.ndarray] | None = None
    freq: str | None = None
    name: str = "data"
    borders: tuple[int, int, int] | None = None
    source: str | None = None

    @property
    def num_series(self) -> int:
        return len(self.values)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


BUNDLED_DATA_DIR = Path(__file__).resolve().parents[1] / "bundled_data"
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
    if suffix.startswith((".csv", ".txt", ".tsv")):
        try:
            frame = pd.read_csv(path, sep="\t" if suffix.startswith(".tsv") else ",")
        except pd.errors.EmptyDataError:
            raise ValueError(
                f"{path} is empty (no header row, no data): pass a file with a header row (a time column and value "
                "columns) and at least context_length + prediction_length rows."
            ) from None
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix in (".json", ".jsonl"):
        frame = pd.read_json(path, lines=suffix == ".jsonl")
    else:
        raise ValueError(f"Cannot read {path}: supported files are .csv, .tsv, .parquet/.pq and .json/.jsonl.")
    if frame.empty:
        raise ValueError(
            f"{path} has no data rows (columns: {list(frame.columns)}): pass a file with a time column, value columns "
            "and at least context_length + prediction_length rows."
        )
    return frame


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
        raise ValueError(
            f"{name!r} has no rows (columns: {list(frame.columns)}): pass data with a time column, value columns and "
            "at least context_length + prediction_length rows."
        )
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
        collection.source = str(path)
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
        collection = frame_to_collection(_read_table(path), name=path.stem, **kwargs)
        collection.source = str(path)
        return collection
    if path.is_dir():
        collection = frame_to_collection(
            _load_datasets_table(str(path), dataset_config, hub_split, cache_dir), name=path.name, **kwargs
        )
        collection.source = str(path)
        return collection
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
        collection = frame_to_collection(
            frame, name=text if not dataset_config else f"{text}/{dataset_config}", **kwargs
        )
        collection.source = collection.name
        return collection
    raise ValueError(
        f"Unknown dataset {text!r}: not a known benchmark, an existing file or folder, nor a Hub id 'owner/name'. "
        f"Known benchmarks: {', '.join(BENCHMARKS)}."
    )
