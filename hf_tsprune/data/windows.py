"""Windows of a [`TimeSeriesCollection`]: LTSF splits, per-channel scaling on the training rows, lazily cut
forecasting windows as `datasets` splits ([`build_window_datasets`], [`load_forecasting_dataset`]) and numpy batches of
windows for the evaluation loop ([`WindowBatches`]).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from transformers.utils import logging

from .loading import TimeSeriesCollection, load_time_series

logger = logging.get_logger(__name__)

SPLITS = ("train", "validation", "test")


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


def _missing_counts(values: np.ndarray, channel_names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per column with missing values: `(NaN count, ±inf count)` of a `(length, num_channels)` array."""
    nan = np.isnan(values).sum(axis=0)
    inf = np.isinf(values).sum(axis=0)
    return {str(name): (int(n), int(i)) for name, n, i in zip(channel_names, nan, inf) if n or i}


def _describe_missing(counts: dict[str, tuple[int, int]], limit: int = 5) -> str:
    """`column 'a': 1 ±inf, column 'b': 2 NaN` for the first `limit` columns of [`_missing_counts`]."""
    parts = []
    for name, (nan, inf) in list(counts.items())[:limit]:
        kinds = [f"{nan} NaN"] * bool(nan) + [f"{inf} ±inf"] * bool(inf)
        parts.append(f"column {name!r}: {' and '.join(kinds)}")
    more = len(counts) - limit
    return ", ".join(parts) + (f" and {more} more columns" if more > 0 else "")


def _handle_missing(
    values: np.ndarray,
    item_id: str,
    missing_values: str,
    channel_names: Sequence[str] | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Fill missing values per `missing_values` (`"mask"`: left as NaN for the scaler to set to 0, `"ffill"`,
    `"raise"`). Non-finite values (±inf) are missing values too: they become NaN first.

    Args:
        values (`np.ndarray`): `(length, num_channels)` raw values of one series.
        item_id (`str`): The series, for messages.
        missing_values (`str`): The policy.
        channel_names (`Sequence[str]`, *optional*): Column names, for messages.
        source (`str`, *optional*): The file or dataset the series comes from, for messages.
    """
    if missing_values not in ("mask", "ffill", "raise"):
        raise ValueError(f"`missing_values` must be 'mask', 'ffill' or 'raise', got {missing_values!r}.")
    finite = np.isfinite(values)
    if finite.all():
        return values
    if missing_values == "raise":
        names = channel_names if channel_names is not None else [str(i) for i in range(values.shape[1])]
        where = f"{source}: series" if source else "Series"
        raise ValueError(
            f"{where} {item_id!r} has {int((~finite).sum())} missing (NaN) or non-finite (±inf) values "
            f"({_describe_missing(_missing_counts(values, names))}). Pass `missing_values='mask'` (fill with the "
            "training mean, observed mask 0) or 'ffill' (forward/backward fill, observed mask 0), or clean the data."
        )
    values = np.where(finite, values, np.nan)
    if missing_values == "mask":
        return values
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
    splits: Sequence[str] = SPLITS,
) -> datasets.DatasetDict:
    """Split, scale and window a [`TimeSeriesCollection`]; see [`load_forecasting_dataset`] for the arguments.

    Args:
        splits (`Sequence[str]`, *optional*, defaults to `("train", "validation", "test")`):
            The splits to build; the others are left out of the result. Scaling always uses the training rows, so a
            split is the same whichever others are built with it (one collection can give train/validation windows
            with one target length and test windows with another).
    """
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"`splits` must name some of {SPLITS}, got {tuple(splits)}.")
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
    index_rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {split: [] for split in splits}
    offset = 0
    missing_count, missing_series = 0, 0
    missing_columns: dict[str, tuple[int, int]] = {}
    source = collection.source or collection.name
    for position, index in enumerate(kept):
        raw = collection.values[index]
        item_id = collection.item_ids[index]
        parts = split_borders(len(raw), split_ratios, borders)
        observed = np.isfinite(raw)  # NaN and ±inf are both missing
        if not observed.all():
            missing_count += int((~observed).sum())
            missing_series += 1
            for name, (nan, inf) in _missing_counts(raw, collection.channel_names).items():
                before = missing_columns.get(name, (0, 0))
                missing_columns[name] = (before[0] + nan, before[1] + inf)
        filled = _handle_missing(raw, item_id, missing_values, collection.channel_names, source)
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
        scaled = np.where(np.isnan(scaled), 0.0, scaled).astype(np.float32)
        overflow = ~np.isfinite(scaled)
        if overflow.any():  # finite float64 values beyond the float32 range: no non-finite value reaches a model
            columns = [collection.channel_names[c] for c in np.flatnonzero(overflow.any(axis=0))]
            raise ValueError(
                f"{source}: series {item_id!r} has {int(overflow.sum())} values in columns {columns} beyond the "
                f"float32 range (|x| > {np.finfo(np.float32).max:.3g}){' after scaling' if scale else ''}: rescale "
                "those columns (or keep `scale=True`), or mark the values missing (NaN)."
            )
        chunks.append(scaled)
        masks.append(observed)
        offsets.append(offset)
        lengths.append(len(raw))
        means.append(mean)
        stds.append(std)
        offset += len(raw)
        for split in splits:
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
            f"{missing_count} missing (NaN) or non-finite (±inf) values in {missing_series} of {len(kept)} series of "
            f"{source!r} ({_describe_missing(missing_columns)}) are {how} and flagged 0 in the observed masks; "
            "models never see them and metrics skip them. Pass `missing_values='raise'` to stop."
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
    split_datasets = {}
    for split in splits:
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
        split_datasets[split] = split_ds
    return datasets.DatasetDict(split_datasets)


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
            Missing values: empty or non-numeric cells (NaN) and non-finite ones (±inf) alike. `"mask"` fills them
            with the training mean (0 after scaling), `"ffill"` forward/backward fills them; both warn (with the count
            per column) and set the observed masks to 0 there, so no non-finite value reaches a model input or a
            target. `"raise"` stops with an error naming the file, the columns and the counts.
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


def last_windows_fraction(dataset: datasets.Dataset, fraction: float) -> datasets.Dataset:
    """The last `fraction` of a split's time windows of every series (TTM's few-shot protocol takes them from the end
    of the train split), with all channels of each kept window; the whole split when `fraction` is 1.

    Args:
        dataset (`datasets.Dataset`): A split made by [`load_forecasting_dataset`] / `build_window_datasets`.
        fraction (`float`): In (0, 1]; at least one time window per series is kept.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction}.")
    if fraction == 1.0 or len(dataset) == 0:
        return dataset
    index = window_index_arrays(dataset)
    keep = []
    for series in np.unique(index["series_index"]):
        rows = np.flatnonzero(index["series_index"] == series)
        starts = np.unique(index["start"][rows])
        first_kept = starts[len(starts) - max(1, math.ceil(fraction * len(starts)))]
        keep.append(rows[index["start"][rows] >= first_kept])
    return dataset.select(np.sort(np.concatenate(keep)))


def context_std(dataset: datasets.Dataset) -> np.ndarray:
    """The standard deviation of every item's context (scaled values, missing steps counted as 0): `(n,)` for
    channel-independent items, `(n, C)` for all-channel items; from prefix sums, without building the windows."""
    source = get_window_source(dataset)
    index = window_index_arrays(dataset)
    rows = source.offsets[index["series_index"]] + index["start"].astype(np.int64)
    values = source.values.astype(np.float64)
    zero = np.zeros((1, values.shape[1]))
    sums = np.concatenate([zero, np.cumsum(values, axis=0)])
    squares = np.concatenate([zero, np.cumsum(values**2, axis=0)])
    length = source.context_length
    if source.channel_independent:
        channel = index["channel"]
        mean = (sums[rows + length, channel] - sums[rows, channel]) / length
        second = (squares[rows + length, channel] - squares[rows, channel]) / length
    else:
        mean = (sums[rows + length] - sums[rows]) / length
        second = (squares[rows + length] - squares[rows]) / length
    return np.sqrt(np.maximum(second - mean**2, 0.0))


def drop_flat_context_windows(dataset: datasets.Dataset, min_std: float) -> tuple[datasets.Dataset, int]:
    """The items of a split whose context varies: those with a (every, for all-channel items) context standard deviation
    of at least `min_std`, in scaled units (1 = the channel's spread over the training rows).

    Models that normalise each window by its own context statistics (TimesFM 2.5, Timer-XL, Time-MoE, ...) compute
    their training loss on targets divided by that standard deviation: a context that is nearly constant (a pegged
    exchange rate, a sensor stuck for weeks) followed by a step makes the normalised targets, and the loss, explode
    (a loss of 4e8 against 2.5 for ordinary windows of the same series, with context std 5e-5). Dropping such items
    from the training and validation windows keeps one window from dominating the gradient and the selection; the
    test windows are always kept (the protocol scores every one).

    Returns:
        The kept items and how many were dropped (`min_std <= 0`: the split as it is, 0).
    """
    if min_std <= 0 or len(dataset) == 0:
        return dataset, 0
    spread = context_std(dataset)
    keep = spread >= min_std if spread.ndim == 1 else (spread >= min_std).all(axis=1)
    dropped = int((~keep).sum())
    return (dataset.select(np.flatnonzero(keep)) if dropped else dataset), dropped


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
