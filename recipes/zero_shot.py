"""Zero-shot evaluation of a forecasting model, or a naive baseline, on a long-horizon benchmark or any file.

Writes `<output_dir>/results.json` and prints a one-line summary. Metrics follow the LTSF protocol: MSE/MAE on
standard-scaled values (train-split statistics), every test window (stride 1), every channel.

Launch:

```bash
# the bundled reference model on the bundled ETTh1, horizon 96 (offline, no arguments)
python recipes/zero_shot.py

# naive baselines on ETTh1, horizon 96 (reference: MSE 1.294 / MAE 0.713, seasonal naive MSE 0.512)
python recipes/zero_shot.py --model_name_or_path repeat_last --dataset ETTh1 --data_dir ../shared/data \
    --prediction_length 96 --output_dir out/etth1_repeat_last
python recipes/zero_shot.py --model_name_or_path seasonal_naive --dataset ETTh1 --data_dir ../shared/data \
    --prediction_length 96 --output_dir out/etth1_seasonal_naive

# a foundation model from the Hub (or a local folder), more metrics, the validation split too
python recipes/zero_shot.py --model_name_or_path google/timesfm-2.0-500m-pytorch --dataset ETTm2 \
    --data_dir ../shared/data --prediction_length 336 --context_length 512 --metrics mse,mae,mase,smape,wql \
    --splits validation,test --output_dir out/timesfm_ettm2_336

# Moirai (a uni2ts module folder or Hub id, dense or pruned by hf_tsprune; --patch_size where it has several)
python recipes/zero_shot.py --model_name_or_path Salesforce/moirai-1.0-R-small --patch_size 32 \
    --prediction_length 96 --context_length 512 --output_dir out/moirai_small_etth1

# any CSV/parquet file with a time column (70/10/20 split), forecasting one column
python recipes/zero_shot.py --model_name_or_path repeat_last --dataset my_data.csv --target OT \
    --prediction_length 24 --context_length 96 --output_dir out/my_data

# arguments from a YAML file (command-line flags override it; lists such as `metrics: [mse, mae]` are allowed)
python recipes/zero_shot.py --config zero_shot.yaml --prediction_length 192
```
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from hf_tsprune.adapters import get_adapter
from hf_tsprune.data import get_window_source, load_forecasting_dataset
from hf_tsprune.evaluation import NaiveForecaster, evaluate_forecaster, load_forecaster
from hf_tsprune.pipeline import REFERENCE_MODEL_DIR, parse_arguments


@dataclass
class ZeroShotArguments:
    """Arguments of `recipes/zero_shot.py`."""

    model_name_or_path: str = field(
        default=REFERENCE_MODEL_DIR,
        metadata={
            "help": "Hub id or local folder of a supported model, or a baseline: repeat_last, seasonal_naive, "
            "seasonal_average (default: the bundled reference model)."
        },
    )
    dataset: str = field(
        default="ETTh1",
        metadata={
            "help": "Benchmark name (ETTh1, ETTh2, ETTm1, ETTm2, weather, electricity, traffic, exchange_rate, "
            "illness), a CSV/parquet file with a time column, a local dataset folder or a Hub dataset id."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder of the benchmark files (default: $HF_TSPRUNE_DATA_DIR)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    prediction_length: int = field(default=96, metadata={"help": "Forecast horizon."})
    context_length: int = field(default=512, metadata={"help": "Context length of every window."})
    patch_size: int | None = field(
        default=None,
        metadata={
            "help": "Moirai only (1.x, MoE, 2; other models ignore it): the patch size the model reads the series "
            "with, one of its module's patch sizes; required where it has several (Moirai 1.x: 8, 16, 32, 64, 128)."
        },
    )
    output_dir: str = field(default="out/zero_shot", metadata={"help": "Where results.json is written."})
    target: str | None = field(
        default=None, metadata={"help": "Comma-separated columns to forecast (default: every numeric column)."}
    )
    timestamp_column: str | None = field(default=None, metadata={"help": "Time column (guessed by default)."})
    id_column: str | None = field(default=None, metadata={"help": "Series id column of a long table."})
    freq: str | None = field(default=None, metadata={"help": "Pandas frequency (inferred by default)."})
    splits: str = field(default="test", metadata={"help": "Comma-separated splits to evaluate: validation, test."})
    channel_independent: bool | None = field(
        default=None,
        metadata={"help": "One channel per window; default: yes, except for models that take several channels."},
    )
    metrics: str = field(default="mse,mae", metadata={"help": "Comma-separated: mse, mae, mase, smape, wql."})
    season_length: int | None = field(
        default=None, metadata={"help": "Season of seasonal_naive and MASE (default: from the data frequency)."}
    )
    eval_stride: int = field(default=1, metadata={"help": "Step between evaluation windows (the protocol uses 1)."})
    batch_size: int | None = field(default=None, metadata={"help": "Windows per batch (default 256, 8192 naive)."})
    max_windows: int | None = field(
        default=None,
        metadata={
            "help": "Score only the first N dataset items (smoke tests). With channel-independent data an item is one "
            "channel of one time window, so N items cover N / channels time windows."
        },
    )
    device: str | None = field(default=None, metadata={"help": "Device of the model (default: cuda if available)."})
    torch_dtype: str | None = field(default=None, metadata={"help": "Model dtype: float32, bfloat16, float16."})
    per_horizon: bool = field(default=True, metadata={"help": "Store per-step metric curves in results.json."})
    seed: int = field(default=42, metadata={"help": "Random seed (sampled quantiles of distribution heads)."})
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


def _split_list(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(ZeroShotArguments, argv)
    set_seed(args.seed)
    dtype = getattr(torch, args.torch_dtype) if args.torch_dtype else None
    task = dict(
        prediction_length=args.prediction_length, context_length=args.context_length, patch_size=args.patch_size
    )
    forecaster = load_forecaster(
        args.model_name_or_path, season_length=args.season_length, task_settings=task,
        **({"dtype": dtype} if dtype else {}),
    )  # fmt: skip
    channel_independent = args.channel_independent
    if channel_independent is None:
        channels = (
            None if isinstance(forecaster, NaiveForecaster) else get_adapter(forecaster).num_input_channels(forecaster)
        )
        channel_independent = channels is None or channels == 1
    if not isinstance(forecaster, NaiveForecaster):
        forecaster = forecaster.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    target = _split_list(args.target)
    data = load_forecasting_dataset(
        args.dataset,
        context_length=args.context_length,
        prediction_length=args.prediction_length,
        data_dir=args.data_dir,
        dataset_config=args.dataset_config,
        target=target[0] if target and len(target) == 1 else target,
        timestamp_column=args.timestamp_column,
        id_column=args.id_column,
        freq=args.freq,
        channel_independent=channel_independent,
        eval_stride=args.eval_stride,
    )
    source = get_window_source(data["test"])
    results = {
        "model": args.model_name_or_path,
        "dataset": source.name,
        "prediction_length": args.prediction_length,
        "context_length": args.context_length,
        "channel_independent": channel_independent,
        "freq": source.freq,
        "channels": source.channel_names,
    }
    metrics = _split_list(args.metrics)
    for split in _split_list(args.splits):
        if split not in data:
            raise ValueError(f"Unknown split {split!r}; choose among {list(data)}.")
        results[split] = evaluate_forecaster(
            forecaster,
            data[split],
            metrics=metrics,
            batch_size=args.batch_size,
            per_horizon=args.per_horizon,
            season_length=args.season_length,
            max_windows=args.max_windows,
            show_progress=args.show_progress,
            desc=f"{split}",
        )
    results["args"] = asdict(args)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "results.json", "w") as handle:
        json.dump(results, handle, indent=2)
    last = _split_list(args.splits)[-1]
    scores = " ".join(f"{name}={results[last][name]:.4f}" for name in metrics)
    print(
        f"{results['dataset']} | {args.model_name_or_path} | H={args.prediction_length} L={args.context_length} | "
        f"{last} {scores} n_windows={results[last]['n_windows']} ({results[last]['seconds']:.1f}s) -> "
        f"{os.fspath(output_dir / 'results.json')}"
    )
    return results


if __name__ == "__main__":
    main()
