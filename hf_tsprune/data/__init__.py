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

Modules: [`hf_tsprune.data.loading`] reads files, folders, Hub datasets and the benchmarks into raw series;
[`hf_tsprune.data.windows`] splits, scales and windows them; [`hf_tsprune.data.frequencies`] handles pandas
frequencies. Every public name is importable from `hf_tsprune.data`.
"""

from .frequencies import infer_frequency, seasonal_period, timesfm_frequency_index
from .loading import (
    BENCHMARKS,
    BUNDLED_DATA_DIR,
    DATA_DIR_ENV,
    ID_COLUMN_CANDIDATES,
    TIMESTAMP_COLUMN_CANDIDATES,
    BenchmarkSpec,
    TimeSeriesCollection,
    benchmark_name,
    frame_to_collection,
    load_time_series,
    resolve_benchmark_path,
    resolve_data_dir,
)
from .windows import (
    SPLITS,
    ForecastingWindows,
    WindowBatches,
    build_window_datasets,
    context_std,
    drop_flat_context_windows,
    get_window_source,
    last_windows_fraction,
    load_forecasting_dataset,
    split_borders,
    window_index_arrays,
)

__all__ = [
    "BENCHMARKS",
    "BUNDLED_DATA_DIR",
    "DATA_DIR_ENV",
    "ID_COLUMN_CANDIDATES",
    "SPLITS",
    "TIMESTAMP_COLUMN_CANDIDATES",
    "BenchmarkSpec",
    "ForecastingWindows",
    "TimeSeriesCollection",
    "WindowBatches",
    "benchmark_name",
    "build_window_datasets",
    "frame_to_collection",
    "get_window_source",
    "infer_frequency",
    "load_forecasting_dataset",
    "load_time_series",
    "resolve_benchmark_path",
    "resolve_data_dir",
    "seasonal_period",
    "split_borders",
    "timesfm_frequency_index",
    "context_std",
    "drop_flat_context_windows",
    "last_windows_fraction",
    "window_index_arrays",
]
