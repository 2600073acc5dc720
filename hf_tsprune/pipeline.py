"""The stages of prune-then-finetune as plain functions, shared by the recipes.

data → zero-shot test → prune run (Trainer + PruningCallback, weights frozen, dropout off, best mask set by
validation) → shrink → finetune (fresh Trainer, early stopping on validation; all weights or LoRA) → test → save.
Each function does one stage, so `recipes/prune_finetune.py` reads top to bottom.

A recipe's settings are one dataclass ([`TaskArguments`], [`PruneFinetuneArguments`]) parsed once by
[`parse_arguments`] (flags over an optional `--config` YAML file); each stage takes it whole and builds its
`TrainingArguments` from it ([`stage_training_arguments`]). The task horizon is `prediction_length` throughout; the
training and validation windows have targets of `training_target_length` steps (the family's training horizon,
longer than `prediction_length` only for TimesFM 1.x). The run's outcome is a [`RunResult`]
(`hf_tsprune.results`), which [`save_outputs`] and [`print_summary`] read and `results.json` serialises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging

from .callback import BestWeightsCallback, PruningCallback
from .data import (
    build_window_datasets,
    drop_flat_context_windows,
    get_window_source,
    last_windows_fraction,
    load_time_series,
    timesfm_frequency_index,
)
from .evaluation import evaluate_forecaster
from .masks import install_masks
from .results import MaskSetResult, RunResult, SplitMetrics
from .scoring import PruningConfig
from .surgery import PruningPlan, shrink
from .training import ForecastCollator, dropout_disabled, training_label_names, training_target_length

logger = logging.get_logger(__name__)


@dataclass
class StageTimer:
    """Wall-clock seconds per stage."""

    seconds: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str):
        timer = self

        class _Block:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(timer.seconds.get(name, 0.0) + time.perf_counter() - self.start, 3)

        return _Block()


def count_parameters(model: nn.Module) -> int:
    """Parameters of `model`, its pruning masks excluded."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("hf_tsprune_mask"))


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
    torch.use_deterministic_algorithms(False)


def process_state(use_cpu: bool = False):
    """The run's `accelerate.PartialState` (on CPU with `use_cpu`), with a warning where `accelerate launch --use_fsdp`
    asked for FSDP on CPU processes: accelerate applies FSDP on accelerators only and runs CPU processes as plain DDP
    (every rank holds the whole model), silently (accelerate 1.16, torch 2.13, whose own FSDP2 does run on CPU over
    gloo)."""
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and state.device.type == "cpu":
        logger.warning(
            f"FSDP was requested (`accelerate launch --use_fsdp`), but these {state.num_processes} processes run on "
            "CPU, where accelerate runs them as MULTI_CPU data parallelism: each holds the whole model. Drop "
            "--use_fsdp on CPU, or run on GPUs to shard."
        )
    return state


# -- settings: one dataclass per recipe, parsed once ------------------------------------------------------------------

REFERENCE_MODEL_DIR = os.path.join(os.path.dirname(__file__), "reference_model")
"""The bundled reference model (the recipes' offline default)."""

PRESETS: dict[str, dict[str, Any]] = {
    # minutes on 2 CPU cores: every 8th training and validation window, an evaluation (a candidate mask set) every
    # 20 steps, a short finetune with early stopping
    "quick": {"train_stride": 8, "validation_stride": 8, "eval_steps": 20, "finetune_epochs": 4.0},
    # the paper's protocol: every window
    "full": {"train_stride": 1, "validation_stride": 1, "eval_steps": 100, "finetune_epochs": 10.0},
}


@dataclass
class TaskArguments:
    """Task, data and run settings shared by the recipes, and the finetune stage's settings."""

    model_name_or_path: str = field(
        default=REFERENCE_MODEL_DIR,
        metadata={"help": "Hub id or local folder of a supported model; defaults to the bundled reference model."},
    )
    dataset: str = field(default="ETTh1", metadata={"help": "Benchmark name, CSV/parquet file or Hub dataset id."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of benchmark files ($HF_TSPRUNE_DATA_DIR)."})
    target: str | None = field(default=None, metadata={"help": "Target column(s) of a user file (comma-separated)."})
    missing_values: str = field(
        default="mask",
        metadata={
            "help": "Empty, non-numeric and non-finite (±inf) cells: mask (training mean, observed mask 0, warned), "
            "ffill (forward/backward fill, observed mask 0, warned) or raise (stop, naming the columns)."
        },
    )
    prediction_length: int = field(default=96, metadata={"help": "Forecast horizon."})
    context_length: int = field(
        default=512, metadata={"help": "Context length of every window (at most what the model takes)."}
    )
    patch_size: int | None = field(
        default=None,
        metadata={
            "help": "Moirai only (1.x, MoE, 2; other families ignore it): the patch size the model reads the series "
            "with, one of its module's patch sizes; required where it has several (Moirai 1.x: 8, 16, 32, 64, 128)."
        },
    )
    preset: str = field(default="quick", metadata={"help": f"Data/epoch preset: {sorted(PRESETS)}."})
    train_stride: int | None = field(default=None, metadata={"help": "Step between training windows (preset)."})
    train_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Few-shot: train (and prune) on this fraction of the training windows, the last ones of the "
            "train split (TTM's few-shot protocol), e.g. 0.05 or 0.1; validation and test are unchanged."
        },
    )
    min_context_std: float = field(
        default=1e-3,
        metadata={
            "help": "Drop training and validation windows whose context is nearly constant: standard deviation below "
            "this, in scaled units (per-window normalisation makes their loss explode); 0 keeps every window. Test "
            "windows are never dropped."
        },
    )
    validation_stride: int | None = field(default=None, metadata={"help": "Step between validation windows (preset)."})
    output_dir: str = field(
        default="runs/prune_finetune",
        metadata={
            "help": "Where results go: results.json, the saved model in <output_dir>/model, the prune run's "
            "checkpoints in <output_dir>/prune_run."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace a previous run in output_dir: its results.json, model and run folders are deleted."
        },
    )
    per_device_train_batch_size: int = field(default=64)
    per_device_eval_batch_size: int = field(default=256)
    gradient_accumulation_steps: int = field(default=1)
    eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate (and rank the prune run's mask set) every N steps (preset); the prune run also saves a "
            "resumable checkpoint (<output_dir>/prune_run/checkpoint-N) every N steps: there is no --save_steps."
        },
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Finetune learning rate."})
    finetune_epochs: float | None = field(default=None, metadata={"help": "Finetune epochs (preset)."})
    early_stopping_patience: int = field(default=3)
    finetune_dropout: bool = field(
        default=True,
        metadata={
            "help": "Keep the model's dropout during finetuning (false: every dropout probability is 0, the paper's "
            "setting after pruning; prune_finetune.py's default)."
        },
    )
    lora_rank: int = field(default=0, metadata={"help": "Finetune with LoRA of this rank (0 = all weights)."})
    seed: int = field(default=42)
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even if an accelerator is present."})
    disable_tqdm: bool | None = field(default=None)
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "Prune-run checkpoint to resume."})
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None)
    hub_private_repo: bool = field(default=False)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown --preset {self.preset!r}; choose one of {sorted(PRESETS)}.")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.prediction_length < 1 or self.context_length < 1:
            raise ValueError("--prediction_length and --context_length must be positive integers.")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(
                f"--train_fraction must be in (0, 1] (a share of the training windows), got {self.train_fraction}."
            )
        if self.patch_size is not None and self.patch_size < 1:
            raise ValueError(f"--patch_size must be a positive integer (Moirai only), got {self.patch_size}.")
        if self.missing_values not in ("mask", "ffill", "raise"):
            raise ValueError(f"--missing_values must be mask, ffill or raise, got {self.missing_values!r}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/timesfm-pruned-etth1).")


@dataclass
class PruneFinetuneArguments(TaskArguments):
    """Prune-run settings (task, data, finetune and run settings are inherited from `TaskArguments`)."""

    finetune_dropout: bool = field(
        default=False,
        metadata={"help": "Keep the model's dropout while finetuning the pruned model (the paper turns it off)."},
    )
    ratio_per_epoch: float = field(default=0.3, metadata={"help": "Fraction of alive channels pruned per epoch."})
    ema: float = field(default=0.3, metadata={"help": "EMA weight of the newest Taylor scores, in (0, 1]."})
    max_sparsity: float = field(default=0.9, metadata={"help": "Stop pruning at this fraction of channels."})
    prune_epochs: float = field(default=1.0, metadata={"help": "Epochs of the prune run."})
    cost_normalized: bool = field(default=False, metadata={"help": "Rank channels by score per parameter removed."})
    round_to: int = field(default=1, metadata={"help": "Keep feed-forward widths a multiple of this."})
    min_units_per_group: int = field(default=1, metadata={"help": "Channels each group keeps at least."})
    importance: str = field(
        default="taylor",
        metadata={
            "help": "Channel score: taylor (the paper's), taylor_abs (its absolute value before the EMA), magnitude "
            "(weight norm) or random (the chance baseline)."
        },
    )
    min_sparsity: float = field(
        default=0.0,
        metadata={
            "help": "Mask sets below this sparsity are not candidates for the best one (0: the unpruned model is one, "
            "so pruning is kept only where it lowers the validation loss)."
        },
    )
    grid: str | None = field(
        default=None,
        metadata={
            "help": 'Grid chosen on validation loss, e.g. "ratio_per_epoch=0.2,0.4 ema=0.3,0.7 learning_rate=1e-4,5e-4".'
        },
    )
    expert_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Mixture-of-experts models only (Moirai-MoE, Time-MoE): before the prune run, remove each layer's "
            "experts scored at or below this (--expert_score usage: the layer's share of routed tokens relative to "
            "top-k, summing to 1 over the layer; 0 removes only the experts no token reached); a negative value keeps "
            "only the top-k per layer. Default: no expert removal."
        },
    )
    prune_optional_groups: bool = field(
        default=False,
        metadata={
            "help": "Also prune the family's optional groups (Sundial: the hidden channels of its flow-matching "
            "head's MLPs); off by default. Families without optional groups ignore it."
        },
    )
    expert_score: str = field(
        default="usage",
        metadata={
            "help": "Score of --expert_threshold: usage (tokens routed to each expert over the train and validation "
            "windows, no gradients) or taylor (first-order effect of removing the expert, EMA (--ema) over one pass "
            "of the train windows)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.pruning_config()  # a bad prune setting fails here, before any work
        if self.expert_score not in ("usage", "taylor"):
            raise ValueError(f"--expert_score must be usage or taylor, got {self.expert_score!r}.")

    def pruning_config(self) -> PruningConfig:
        """The [`PruningConfig`] of these settings (the callback's part of them)."""
        return PruningConfig(
            ratio_per_epoch=self.ratio_per_epoch, ema=self.ema, max_sparsity=self.max_sparsity,
            cost_normalized=self.cost_normalized, round_to=self.round_to, min_units_per_group=self.min_units_per_group,
            importance=self.importance, seed=self.seed, min_sparsity=self.min_sparsity,
        )  # fmt: skip


def parse_arguments(
    dataclass_types: type | tuple[type, ...], argv: list[str] | None = None, defaults: dict[str, Any] | None = None
):
    """Parses a recipe's settings dataclass(es) from the command line, once, for every recipe.

    Precedence, lowest first: the dataclass defaults, `defaults`, the `--config file.yaml` settings, the flags. A YAML
    `null` leaves a setting at its default; a YAML list given for a single-valued setting becomes a comma-separated
    value (`metrics: [mse, mae]` is `mse,mae`). String values are converted as flags are.

    Args:
        dataclass_types (`type` or `tuple[type, ...]`):
            The settings dataclass, or several (e.g. with `TrainingArguments`); their field names must differ.
        argv (`list[str]`, *optional*): The arguments; `sys.argv[1:]` by default.
        defaults (`dict`, *optional*): The recipe's own defaults, under the YAML settings and the flags.

    Returns:
        One instance per dataclass: the instance itself for one type, a tuple for several.

    Raises:
        `ValueError`: a YAML setting that no dataclass has, or a `--config` without a file.
    """
    import yaml
    from transformers import HfArgumentParser

    types = dataclass_types if isinstance(dataclass_types, tuple) else (dataclass_types,)
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = dict(defaults or {})
    config_flags = [i for i, item in enumerate(argv) if item == "--config" or item.startswith("--config=")]
    if config_flags:
        position = config_flags[-1]
        if argv[position] == "--config":
            if position + 1 >= len(argv):
                raise ValueError("`--config` needs a YAML file path.")
            path = argv[position + 1]
            del argv[position : position + 2]
        else:
            path = argv.pop(position).partition("=")[2]
        with open(path) as f:
            from_file = yaml.safe_load(f) or {}
        known = {f.name for t in types for f in dataclasses.fields(t)}
        unknown = set(from_file) - known
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(known)}.")
        settings.update({key: value for key, value in from_file.items() if value is not None})
    parser = HfArgumentParser(types)
    for key, value in settings.items():
        action = parser._option_string_actions.get(f"--{key}")
        if isinstance(value, (list, tuple)) and action is not None and action.nargs not in ("+", "*"):
            settings[key] = ",".join(map(str, value))
    parser.set_defaults(**settings)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    return parsed[0] if len(types) == 1 else tuple(parsed)


RUN_ARTEFACTS = ("results.json", "model", "prune_run", "finetune_run")
"""What a recipe run writes into its `output_dir` (beside `grid-<i>` folders of a grid search)."""


def previous_run_artefacts(output_dir: str | os.PathLike) -> list[Path]:
    """The artefacts of an earlier run in `output_dir` ([`RUN_ARTEFACTS`] and `grid-<i>` folders), sorted."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name in RUN_ARTEFACTS or re.fullmatch(r"grid-\d+", p.name))


def check_output_dir(args: TaskArguments) -> list[Path]:
    """Refuses an output folder that holds another run's artefacts, listing them, unless `--overwrite_output_dir`
    (they are deleted by [`prepare_output_dir`]) or `--resume_from_checkpoint` (they are continued); writes nothing.

    Returns:
        The artefacts found.
    """
    artefacts = previous_run_artefacts(args.output_dir)
    if artefacts and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        listed = ", ".join(p.name + ("/" if p.is_dir() else "") for p in artefacts)
        raise ValueError(
            f"{args.output_dir} already holds a run ({listed}). Choose another --output_dir, pass "
            "--overwrite_output_dir to delete these first, or --resume_from_checkpoint to continue that run."
        )
    return artefacts


def prepare_output_dir(args: TaskArguments, is_main_process: bool = True) -> list[Path]:
    """Makes `output_dir` ready for a run, right before its first write: refuses a folder holding another run
    ([`check_output_dir`]); with `--overwrite_output_dir` (and no `--resume_from_checkpoint`) deletes that run's
    artefacts ([`RUN_ARTEFACTS`], `grid-<i>` folders; other files stay), so no stale `checkpoint-N` mixes with the
    new run; creates the folder. Only the main process deletes and creates.

    Returns:
        The artefacts deleted.
    """
    artefacts = check_output_dir(args)
    removed = []
    if artefacts and args.overwrite_output_dir and not args.resume_from_checkpoint and is_main_process:
        for path in artefacts:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        logger.warning(
            f"--overwrite_output_dir: deleted the previous run's {', '.join(p.name for p in removed)} in "
            f"{args.output_dir}."
        )
    if is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    return removed


# -- model and data ---------------------------------------------------------------------------------------------------


def task_settings(args: TaskArguments) -> dict[str, Any]:
    """The task settings a family's model may hold (`Family.task_settings`; Moirai: all three)."""
    return dict(
        prediction_length=args.prediction_length, context_length=args.context_length, patch_size=args.patch_size
    )


def load_model(model_name_or_path: str, args: TaskArguments | None = None) -> nn.Module:
    """Loads a supported model (Hub id or folder; pruned hf_tsprune checkpoints included), in eval mode.

    Args:
        model_name_or_path (`str`): Hub id or folder.
        args ([`TaskArguments`], *optional*): The run's settings: a family whose model holds task settings (Moirai:
            `prediction_length`, `context_length`, `patch_size`) is loaded with them ([`task_settings`]).
    """
    if model_name_or_path == REFERENCE_MODEL_DIR and not os.path.isfile(
        os.path.join(REFERENCE_MODEL_DIR, "config.json")
    ):
        raise ValueError(f"The bundled reference model is missing from {REFERENCE_MODEL_DIR}; reinstall hf_tsprune.")
    from .evaluation import load_forecaster
    from .family import families, family_of

    settings = task_settings(args) if args is not None else None
    model = load_forecaster(model_name_or_path, task_settings=settings)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{model_name_or_path!r} is a naive baseline: prune and finetune need a model.")
    family = families().get(family_of(model) or "")
    if args is not None and args.patch_size is not None and family is not None:
        if "patch_size" not in family.task_settings:
            logger.warning(f"--patch_size {args.patch_size} is ignored: only Moirai uses it, not {family.name}.")
    return model


@dataclass
class TaskData:
    """The windows of one run, cut from one read of the data.

    Args:
        train (`datasets.Dataset`): Training windows, with targets of `training_target_length` steps.
        validation (`datasets.Dataset`): Validation windows, with targets of `training_target_length` steps.
        test (`datasets.Dataset`): Test windows (stride 1, the protocol), with targets of `prediction_length` steps.
        prediction_length (`int`): The task horizon: the steps every test figure scores.
        training_target_length (`int`): Target steps of the training and validation windows: the family's training
            horizon for `prediction_length` (`hf_tsprune.training.training_target_length`).
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    prediction_length: int
    training_target_length: int

    @property
    def freq_index(self) -> int:
        """TimesFM's frequency category of the data (the collator's `freq_index`)."""
        return timesfm_frequency_index(get_window_source(self.train).freq)


def check_context_length(args: TaskArguments, model: nn.Module) -> None:
    """Refuses a `--context_length` longer than the model takes (its adapter's `max_context`), before any work: the
    model would only ever read the last steps of each window."""
    from .adapters import get_adapter

    limit = get_adapter(model).max_context(model)
    if limit is not None and args.context_length > limit:
        raise ValueError(
            f"--context_length {args.context_length} is longer than {type(model).__name__} takes ({limit} steps, the "
            f"context length of {args.model_name_or_path}): pass --context_length {limit} or less."
        )


def load_data(args: TaskArguments, model: nn.Module) -> TaskData:
    """Reads the series once and cuts train/validation windows with `training_target_length` targets and test windows
    with `prediction_length` targets from them.

    Raises:
        `ValueError`: `--context_length` is longer than the model takes, or a split has no window (its part of the
            series is too short for `--context_length` and `--prediction_length`), or bad data (see
            `hf_tsprune.data`).
    """
    from .adapters import get_adapter

    check_context_length(args, model)
    target_length = training_target_length(model, args.prediction_length)
    collection = load_time_series(args.dataset, data_dir=args.data_dir, target=args.target)
    windows = dict(
        context_length=args.context_length,
        keep_channel_axis=not get_adapter(model).univariate,
        missing_values=args.missing_values,
    )
    training = build_window_datasets(
        collection, prediction_length=target_length, stride=args.train_stride,
        eval_stride=args.validation_stride, splits=("train", "validation"), **windows,
    )  # fmt: skip
    test = build_window_datasets(
        collection, prediction_length=args.prediction_length, eval_stride=1, splits=("test",), **windows
    )
    splits = {
        "train": last_windows_fraction(training["train"], args.train_fraction),
        "validation": training["validation"],
        "test": test["test"],
    }
    for split in ("train", "validation"):
        total = len(splits[split])
        splits[split], dropped = drop_flat_context_windows(splits[split], args.min_context_std)
        if dropped:
            logger.warning(
                f"Dropped {dropped} of {total} {split} windows whose context is nearly constant (standard deviation "
                f"below --min_context_std {args.min_context_std:g} of the channel's scale): normalised by their own "
                "context, their targets would make the loss explode. --min_context_std 0 keeps them; the test "
                "windows are all scored."
            )
    for split, dataset in splits.items():
        if len(dataset) == 0:
            steps = args.prediction_length if split == "test" else target_length
            raise ValueError(
                f"The {split} split of {collection.source or collection.name} has no window of --context_length "
                f"{args.context_length} + {steps} target steps: train windows need that many training rows, "
                f"validation and test windows {steps} rows of their part after {args.context_length} rows of "
                "context. Lower --context_length or --prediction_length, or use a longer series (or, if the "
                "windows were dropped as nearly constant, lower --min_context_std)."
            )
    return TaskData(
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        prediction_length=args.prediction_length,
        training_target_length=target_length,
    )


def check_expert_removal(args: PruneFinetuneArguments, model: nn.Module) -> None:
    """Refuses `--expert_threshold` for a model without mixture-of-experts blocks (its spec's `ExpertGroup`s), before
    any work."""
    from .family import family_of
    from .masks import describe_expert_blocks

    if getattr(args, "expert_threshold", None) is not None and not describe_expert_blocks(model):
        raise ValueError(
            f"--expert_threshold {args.expert_threshold}: {type(model).__name__} ({family_of(model)}) has no "
            "mixture-of-experts block, so there is no expert to remove (expert removal applies to Moirai-MoE and "
            "Time-MoE). Drop --expert_threshold."
        )


def example_inputs(model: nn.Module) -> dict:
    """The spec's batch-1 forward inputs (seed 0), for FLOP counts."""
    from .family import get_spec

    return get_spec(model).example_inputs(model, 1, generator=torch.Generator().manual_seed(0))


def test_metrics(model: nn.Module, data: TaskData, batch_size: int, desc: str) -> SplitMetrics:
    """MSE/MAE (scaled) and the window count on the test split over `prediction_length` steps, with the LTSF protocol
    of [`hf_tsprune.evaluation`]."""
    result = evaluate_forecaster(
        model, data.test, prediction_length=data.prediction_length, batch_size=batch_size, desc=desc,
        metrics=("mse", "mae"),
    )  # fmt: skip
    return SplitMetrics(mse=float(result["mse"]), mae=float(result["mae"]), n_windows=int(result["n_windows"]))


# -- stages -----------------------------------------------------------------------------------------------------------

STAGE_TRAINER_SETTINGS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "eval_steps",
    "seed",
    "use_cpu",
    "disable_tqdm",
)
"""[`TaskArguments`] fields that are `TrainingArguments` fields of the same name and meaning in both stages."""


def stage_training_arguments(
    args: TaskArguments, output_dir: str, model: nn.Module, **stage_settings: Any
) -> TrainingArguments:
    """The `TrainingArguments` of a stage: the settings both stages share, read from `args`, then the stage's own.

    Args:
        args ([`TaskArguments`]): The run's settings; the [`STAGE_TRAINER_SETTINGS`] fields are taken as they are.
        output_dir (`str`): The stage's folder.
        model (`nn.Module`): The model the stage trains (its family gives the label names).
        stage_settings: The stage's own `TrainingArguments` settings (epochs, learning rate, saving, ...).
    """
    settings = {name: getattr(args, name) for name in STAGE_TRAINER_SETTINGS}
    settings.update(
        label_names=training_label_names(model),
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        logging_first_step=True,
        per_device_eval_batch_size=args.per_device_train_batch_size,  # validation loss in training-sized batches
        eval_strategy="steps" if args.eval_steps else "epoch",
        logging_steps=max(1, (args.eval_steps or 10) // 2),
        logging_nan_inf_filter=False,  # a non-finite loss is logged as it is, and stops the run (the callbacks)
    )
    settings.update(stage_settings)
    return TrainingArguments(output_dir, **settings)


@dataclass
class PruneResult:
    """What the prune run kept.

    Args:
        plan (`PruningPlan`): The shrink of the best-validation mask set.
        best_step (`int`, *optional*): Optimizer step of that mask set.
        best_eval_loss (`float`, *optional*): Its validation loss.
        best_sparsity (`float`, *optional*): Fraction of channels it removes.
        history (`list[dict]`): Every evaluated mask set (`step`, `sparsity`, metric).
    """

    plan: PruningPlan
    best_step: int | None
    best_eval_loss: float | None
    best_sparsity: float | None
    history: list[dict]

    def best_mask_set(self) -> MaskSetResult:
        return MaskSetResult(step=self.best_step, eval_loss=self.best_eval_loss, sparsity=self.best_sparsity)


def few_windows_warnings(
    num_train_windows: int, num_validation_windows: int, optimizer_steps_per_epoch: int, ratio_per_epoch: float
) -> list[str]:
    """What is too small in a prune run for a meaningful choice, as messages that say how many there are and what to
    change (empty when nothing is): fewer than 5 optimizer steps per epoch (each removes a large share of the channels
    at once, on the scores of a handful of batches) or fewer than 20 validation windows (the mask set is chosen on
    them)."""
    warnings = []
    if optimizer_steps_per_epoch < 5:
        share = ratio_per_epoch / max(optimizer_steps_per_epoch, 1)
        warnings.append(
            f"The prune run has {optimizer_steps_per_epoch} optimizer step(s) per epoch ({num_train_windows} training "
            f"windows): each step removes {share:.0%} of the channels at once. Lower --train_stride or "
            "--per_device_train_batch_size (or --gradient_accumulation_steps), or use a shorter --context_length / "
            "--prediction_length, for more steps."
        )
    if num_validation_windows < 20:
        warnings.append(
            f"The mask set is chosen on {num_validation_windows} validation window(s): too few for a meaningful "
            "choice. Lower --validation_stride, or use a shorter --context_length / --prediction_length."
        )
    return warnings


def prune_stage(
    model: nn.Module,
    data: TaskData,
    args: PruneFinetuneArguments,
    output_dir: str,
    callbacks: list[TrainerCallback] | None = None,
) -> PruneResult:
    """Prune run: masks on, weights frozen, dropout off, the family's pruning settings on (`Family.pruning_settings`:
    Time-MoE's auxiliary load-balancing loss off, as in the paper); keeps the best-validation mask set, the unpruned
    model (step 0, evaluated before the first step) included, so a run where every removal hurts validation keeps every
    channel; then shrinks.

    Shrinking happens after `train()` returns, on the unwrapped model (never inside the running Trainer).

    Args:
        model (`nn.Module`): The model, pruned and shrunk in place.
        data ([`TaskData`]): Train and validation windows.
        args ([`PruneFinetuneArguments`]): The run's settings (`pruning_config()`, `prune_epochs`, `round_to`,
            `prune_optional_groups`, `resume_from_checkpoint` and the shared trainer settings).
        output_dir (`str`): Folder of the prune run's checkpoints.
        callbacks (`list[TrainerCallback]`, *optional*): More callbacks of the prune run's Trainer, called after the
            `PruningCallback` (e.g. to record the masks on the way; `benchmarks/accuracy.py`'s controls).
    """
    from .family import get_spec

    spec = get_spec(model)  # with --prune_optional_groups, the spec's optional groups too (Sundial's flow head)
    install_masks(model, spec.with_optional_groups() if args.prune_optional_groups else spec)
    callback = PruningCallback(args.pruning_config(), resume_from_checkpoint=args.resume_from_checkpoint)
    training_args = stage_training_arguments(
        args, output_dir, model,
        num_train_epochs=args.prune_epochs,
        save_strategy="steps" if args.eval_steps else "epoch",  # every prune-run checkpoint can be resumed from
        save_steps=args.eval_steps,
        max_grad_norm=0.0,  # clipping would rescale the mask gradients, hence the Taylor scores
        learning_rate=1e-3,  # only masks are trainable, and their gradients are dropped after scoring
        weight_decay=0.0,
        eval_on_start=True,  # the unpruned model (step 0) is a candidate mask set: pruning never beats it by default
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=ForecastCollator(model, data.freq_index),
        callbacks=[callback, *(callbacks or [])],
    )
    steps_per_epoch = math.ceil(
        len(data.train)
        / (training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size)
    )
    for warning in few_windows_warnings(len(data.train), len(data.validation), steps_per_epoch, args.ratio_per_epoch):
        logger.warning(warning)
    from .family import get_family

    # the family's loss settings for pruning (Time-MoE: no auxiliary load-balancing loss), restored for finetuning
    with dropout_disabled(model), get_family(model).while_pruning(model):
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    unwrapped = trainer.model if not hasattr(trainer.model, "module") else trainer.model.module
    plan = shrink(unwrapped, round_to=args.round_to)
    return PruneResult(plan, callback.best_step, callback.best_metric, callback.best_sparsity, callback.history)


@dataclass
class ExpertRemovalResult:
    """What expert removal (`--expert_threshold`) kept.

    Args:
        score (`str`): `"usage"` or `"taylor"`.
        threshold (`float`): The threshold (negative: the top-k per layer).
        plan (`PruningPlan`): The removal's plan (one `"experts"` group per changed block).
        usage (`dict[str, list[float]]`): Per block, each expert's usage over the train and validation windows,
            relative to top-k (`hf_tsprune.scoring.expert_usage`).
        tokens (`dict[str, list[int]]`): Per block, the tokens routed to each expert over those windows.
        kept_experts (`dict[str, list[int]]`): Per block, the original indices of its kept experts.
        taylor_scores (`dict[str, list[float | None]]`, *optional*): With `taylor`: the EMA Taylor scores (`None`:
            an expert no token reached).
    """

    score: str
    threshold: float
    plan: PruningPlan
    usage: dict[str, list[float]]
    tokens: dict[str, list[int]]
    kept_experts: dict[str, list[int]]
    taylor_scores: dict[str, list[float | None]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `experts` entry of `results.json` and of the checkpoint's pruning record."""
        before = sum(len(v) for v in self.usage.values())
        after = sum(len(v) for v in self.kept_experts.values())
        values = dict(
            score=self.score, threshold=self.threshold, experts_before=before, experts_after=after,
            removed=before - after, params_before=self.plan.params_before, params_after=self.plan.params_after,
            max_rel_error=self.plan.max_rel_error, kept_experts=self.kept_experts, usage=self.usage,
            tokens=self.tokens,
        )  # fmt: skip
        if self.taylor_scores is not None:
            values["taylor_scores"] = self.taylor_scores
        return values


def _batches(model: nn.Module, datasets_: list[datasets.Dataset], batch_size: int, freq_index: int):
    """The family's training inputs of `datasets_`' windows, in order, on the model's device."""
    from torch.utils.data import DataLoader

    collator = ForecastCollator(model, freq_index)
    device = next(model.parameters()).device
    for dataset in datasets_:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
            yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def expert_stage(model: nn.Module, data: TaskData, args: PruneFinetuneArguments) -> ExpertRemovalResult:
    """Expert removal before the prune run (`--expert_threshold`, `--expert_score`), in place: counts the tokens
    routed to each expert over the train and validation windows (eval mode, no gradients); scores the experts by
    that usage, or (`taylor`) by `hf_tsprune.scoring.ExpertTaylorScorer` over one pass of the train windows (weights
    frozen, the gates' gradient of the family's own loss per batch, EMA `--ema`); removes each layer's experts at or
    below the threshold (`hf_tsprune.scoring.experts_to_keep`: a negative one keeps the top-k, never fewer than top-k)
    with `hf_tsprune.surgery.remove_experts`. The scoring runs under the family's pruning settings
    (`Family.pruning_settings`: Time-MoE's auxiliary load-balancing loss off).

    Args:
        model (`nn.Module`): A model whose spec has `ExpertGroup`s (Moirai-MoE, Time-MoE).
        data ([`TaskData`]): Train and validation windows.
        args ([`PruneFinetuneArguments`]): `expert_threshold`, `expert_score`, `ema`, the batch sizes.
    """
    from .family import get_family
    from .masks import describe_expert_blocks, install_expert_gates, remove_expert_gates
    from .scoring import ExpertTaylorScorer, count_expert_tokens, expert_usage, experts_to_keep
    from .surgery import remove_experts

    was_training = model.training
    model.eval()
    blocks = {b.name: b for b in describe_expert_blocks(model)}
    batch_size = args.per_device_eval_batch_size
    with torch.no_grad(), get_family(model).while_pruning(model):
        tokens = count_expert_tokens(
            model, _batches(model, [data.train, data.validation], batch_size, data.freq_index)
        )
    usage = {name: expert_usage(count, blocks[name].top_k) for name, count in tokens.items()}
    scores, taylor = usage, None
    if args.expert_score == "taylor":
        trainable = [(p, p.requires_grad) for p in model.parameters()]
        for param, _ in trainable:
            param.requires_grad_(False)
        scorer = ExpertTaylorScorer(install_expert_gates(model), ema=args.ema)
        try:
            batches = _batches(model, [data.train], args.per_device_train_batch_size, data.freq_index)
            with get_family(model).while_pruning(model):
                for batch in batches:
                    outputs = model(**batch)
                    loss = outputs["loss"] if isinstance(outputs, dict) else outputs.loss
                    loss.backward()
                    scorer.step()
        finally:
            remove_expert_gates(model)
            for param, flag in trainable:
                param.requires_grad_(flag)
        scores = taylor = scorer.scores
    keep = {name: experts_to_keep(scores[name], args.expert_threshold, blocks[name].top_k) for name in blocks}
    plan = remove_experts(model, keep)
    model.train(was_training)

    def plain(values: torch.Tensor) -> list:
        return [None if v != v else float(v) for v in values.tolist()]  # NaN (never used) -> None

    return ExpertRemovalResult(
        score=args.expert_score, threshold=float(args.expert_threshold), plan=plan,
        usage={name: plain(u) for name, u in usage.items()},
        tokens={name: [int(t) for t in count.tolist()] for name, count in tokens.items()},
        kept_experts={name: torch.nonzero(k).flatten().tolist() for name, k in keep.items()},
        taylor_scores=None if taylor is None else {name: plain(t) for name, t in taylor.items()},
    )  # fmt: skip


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of every non-empty `nn.Linear` of the model (LoRA targets after a shrink)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.in_features > 0 and module.out_features > 0
    ]


@dataclass
class FinetuneResult:
    """How the finetune went.

    Args:
        best_eval_loss (`float`, *optional*): Best validation loss (its weights are the ones kept).
        steps (`int`): Optimizer steps run.
    """

    best_eval_loss: float | None
    steps: int


def finetune_stage(
    model: nn.Module, data: TaskData, args: TaskArguments, output_dir: str
) -> tuple[nn.Module, FinetuneResult]:
    """Finetunes with a fresh Trainer and early stopping on validation loss; LoRA (merged afterwards) if `lora_rank`.
    The starting weights are evaluated before the first step and are a candidate for the best weights, so a finetune
    that only makes validation worse returns the model it was given.

    Args:
        model (`nn.Module`): The model to finetune (all its weights are made trainable).
        data ([`TaskData`]): Train and validation windows.
        args ([`TaskArguments`]): The run's settings (`learning_rate`, `finetune_epochs`, `early_stopping_patience`,
            `lora_rank`, `finetune_dropout` and the shared trainer settings); no weight decay, LoRA alpha twice the
            rank.
        output_dir (`str`): The finetune's folder (nothing is saved there: the best weights are kept in memory).

    Returns:
        The finetuned model (LoRA merged into plain weights) and its [`FinetuneResult`].
    """
    for param in model.parameters():
        param.requires_grad_(True)
    trained = model
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules=lora_target_modules(model))
        trained = get_peft_model(model, lora)
    best_weights = BestWeightsCallback("eval_loss", patience=args.early_stopping_patience, stage="finetune")
    training_args = stage_training_arguments(
        args, output_dir, trained,
        num_train_epochs=args.finetune_epochs,
        save_strategy="no",  # the best weights are kept in memory (BestWeightsCallback)
        learning_rate=args.learning_rate,
        weight_decay=0.0,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        eval_on_start=True,  # the starting weights are a candidate for the best weights
    )  # fmt: skip
    trainer = Trainer(
        model=trained,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=ForecastCollator(trained, data.freq_index),
        callbacks=[best_weights],
    )
    with contextlib.nullcontext() if args.finetune_dropout else dropout_disabled(trained):
        trainer.train()
    best = best_weights.best_metric
    if args.lora_rank:
        model = trained.merge_and_unload()
    model.eval()
    return model, FinetuneResult(best_eval_loss=None if best is None else float(best), steps=trainer.state.global_step)


# -- outputs ----------------------------------------------------------------------------------------------------------


def save_outputs(args: TaskArguments, model: nn.Module, plan: PruningPlan | None, result: RunResult) -> str:
    """Saves the (pruned) checkpoint with its model card under `output_dir/model` (the push is [`push_outputs`],
    after `results.json` is written)."""
    from .family import families, family_of
    from .modeling import save_pruned

    folder = os.path.join(args.output_dir, "model")
    if plan is not None:
        serialised = result.to_dict()
        stage_figures = {name: serialised[name] for name in ("zero_shot", "pruned", "finetuned") if name in serialised}
        extra = {"results": stage_figures}
        if result.experts is not None:
            extra["experts"] = result.experts
        save_pruned(
            model, folder, base_model=args.model_name_or_path, pruning_config=result.settings, plan=plan,
            seed=args.seed, extra=extra,
        )  # fmt: skip
    else:
        model.save_pretrained(folder)
    family = families().get(family_of(model) or "")
    if family is not None and not family.has_pruned_classes:
        logger.warning(
            f"No model card written for {folder}: the card writer reads transformers configurations, and "
            f"{family.name} checkpoints are in the family's own format (see README, Moirai)."
        )
        return folder
    try:
        from .hub import write_model_card
    except ImportError:
        write_model_card = None
    if write_model_card is not None:
        write_model_card(folder, result)
    return folder


def check_push_to_hub(args: TaskArguments) -> None:
    """With `--push_to_hub`, checks before any work what the push at the end needs: online mode, a valid
    `--hub_model_id`, a token (environment or `hf auth login`), and that the Hub answers and accepts it
    ([`hf_tsprune.hub.check_push_access`])."""
    if not args.push_to_hub:
        return
    from .hub import check_push_access

    check_push_access(args.hub_model_id, argument="--hub_model_id")


def push_outputs(args: TaskArguments, folder: str) -> Any:
    """With `--push_to_hub`, uploads the saved `folder` in one commit; called once the run's outputs (the folder and
    `results.json`) are complete, so a failed push loses nothing.

    Raises:
        [`hf_tsprune.hub.HubPushError`]: the upload failed; the message names the saved folder and the
            `push_folder_to_hub` call that retries it.
    """
    if not args.push_to_hub:
        return None
    from .hub import HubPushError, push_folder_to_hub

    try:
        return push_folder_to_hub(folder, args.hub_model_id, private=args.hub_private_repo)
    except Exception as err:
        results = os.path.join(args.output_dir, "results.json")
        raise HubPushError(
            f"The push of {folder} to {args.hub_model_id!r} failed ({type(err).__name__}: {err}). The run's outputs "
            f"are complete ({folder}, {results}); retry the upload alone once the problem is fixed: python -c "
            f'"from hf_tsprune.hub import push_folder_to_hub; push_folder_to_hub({folder!r}, '
            f'{args.hub_model_id!r}, private={args.hub_private_repo})"'
        ) from err


def print_summary(result: RunResult) -> None:
    """A short comparison table of the stages."""
    print(f"\n{result.dataset} | horizon {result.prediction_length} | context {result.context_length}")
    print("| stage | test MSE | test MAE | windows |\n|---|---|---|---|")
    for name, stage in (("zero-shot", result.zero_shot), ("pruned", result.pruned), ("finetuned", result.finetuned)):
        if stage is not None:
            test = stage.test
            print(f"| {name} | {test.mse:.4f} | {test.mae:.4f} | {test.n_windows} |")
    if result.params_after is not None:
        print(
            f"params {result.params_before:,} -> {result.params_after:,} "
            f"({result.params_after / result.params_before:.1%}), FLOPs {result.flops_before:,} -> "
            f"{result.flops_after:,}, sparsity {result.sparsity or 0:.1%}"
        )
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings_seconds.items()))
