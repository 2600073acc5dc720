"""The stages of prune-then-finetune as plain functions, shared by the recipes.

data → zero-shot test → prune run (Trainer + PruningCallback, weights frozen, dropout off, best mask set by
validation) → shrink → finetune (fresh Trainer, early stopping on validation; all weights or LoRA) → test → save.
Each function does one stage and returns plain figures, so `recipes/prune_finetune.py` reads top to bottom.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

from .callback import BestWeightsCallback, PruningCallback
from .data import get_window_source, timesfm_frequency_index
from .evaluation import evaluate_forecaster
from .masks import install_masks
from .scoring import PruningConfig
from .surgery import PruningPlan, shrink
from .training import ForecastCollator, dropout_disabled, training_label_names

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
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("hf_tsprune_mask"))


def test_metrics(
    model: nn.Module, dataset: datasets.Dataset, prediction_length: int, batch_size: int, desc: str
) -> dict:
    """MSE/MAE (scaled) and the window count on a split, with the LTSF protocol of [`hf_tsprune.evaluation`]."""
    result = evaluate_forecaster(
        model, dataset, prediction_length=prediction_length, batch_size=batch_size, desc=desc, metrics=("mse", "mae")
    )
    return {"mse": float(result["mse"]), "mae": float(result["mae"]), "n_windows": int(result["n_windows"])}


def _freq_index(dataset: datasets.Dataset) -> int:
    return timesfm_frequency_index(get_window_source(dataset).freq)


def _training_arguments(
    output_dir: str,
    model: nn.Module,
    *,
    epochs: float,
    batch_size: int,
    gradient_accumulation_steps: int,
    eval_steps: int | None,
    seed: int,
    use_cpu: bool,
    disable_tqdm: bool | None,
    **overrides: Any,
) -> TrainingArguments:
    """The settings both stages share: the family's label names, evaluation every `eval_steps` (else every epoch)."""
    defaults = dict(
        label_names=training_label_names(model),
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        logging_first_step=True,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        eval_strategy="steps" if eval_steps else "epoch",
        eval_steps=eval_steps,
        logging_steps=max(1, (eval_steps or 10) // 2),
        seed=seed,
        use_cpu=use_cpu,
        disable_tqdm=disable_tqdm,
    )
    defaults.update(overrides)
    return TrainingArguments(output_dir, **defaults)


@dataclass
class PruneResult:
    plan: PruningPlan
    best_step: int | None
    best_eval_loss: float | None
    best_sparsity: float | None
    history: list[dict]


def prune_stage(
    model: nn.Module,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset,
    pruning_config: PruningConfig,
    output_dir: str,
    *,
    epochs: float,
    batch_size: int,
    gradient_accumulation_steps: int = 1,
    eval_steps: int | None = None,
    round_to: int = 1,
    seed: int = 42,
    use_cpu: bool = False,
    resume_from_checkpoint: str | None = None,
    disable_tqdm: bool | None = None,
) -> PruneResult:
    """Prune run: masks on, weights frozen, dropout off; keeps the best-validation mask set; then shrinks.

    Shrinking happens after `train()` returns, on the unwrapped model (never inside the running Trainer).
    """
    install_masks(model)
    callback = PruningCallback(pruning_config, resume_from_checkpoint=resume_from_checkpoint)
    shared = dict(gradient_accumulation_steps=gradient_accumulation_steps, eval_steps=eval_steps, seed=seed)
    args = _training_arguments(
        output_dir, model, epochs=epochs, batch_size=batch_size, use_cpu=use_cpu, disable_tqdm=disable_tqdm, **shared,
        save_strategy="steps" if eval_steps else "epoch",  # every prune-run checkpoint can be resumed from
        save_steps=eval_steps,
        max_grad_norm=0.0,  # clipping would rescale the mask gradients, hence the Taylor scores
        learning_rate=1e-3,  # only masks are trainable, and their gradients are dropped after scoring
        weight_decay=0.0,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ForecastCollator(model, _freq_index(train_dataset)),
        callbacks=[callback],
    )
    with dropout_disabled(model):
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    plan = shrink(trainer.model if not hasattr(trainer.model, "module") else trainer.model.module, round_to=round_to)
    return PruneResult(plan, callback.best_step, callback.best_metric, callback.best_sparsity, callback.history)


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of every non-empty `nn.Linear` of the model (LoRA targets after a shrink)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.in_features > 0 and module.out_features > 0
    ]


def finetune_stage(
    model: nn.Module,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset,
    output_dir: str,
    *,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    gradient_accumulation_steps: int = 1,
    eval_steps: int | None = None,
    early_stopping_patience: int = 3,
    weight_decay: float = 0.0,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    seed: int = 42,
    use_cpu: bool = False,
    disable_tqdm: bool | None = None,
) -> tuple[nn.Module, dict]:
    """Finetunes with a fresh Trainer and early stopping on validation loss; LoRA (merged afterwards) if `lora_rank`.

    Returns:
        The finetuned model (LoRA merged into plain weights) and `{"best_eval_loss", "steps"}`.
    """
    for param in model.parameters():
        param.requires_grad_(True)
    trained = model
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=lora_rank, lora_alpha=lora_alpha or 2 * lora_rank, target_modules=lora_target_modules(model)
        )
        trained = get_peft_model(model, lora)
    best_weights = BestWeightsCallback("eval_loss", patience=early_stopping_patience)
    shared = dict(gradient_accumulation_steps=gradient_accumulation_steps, eval_steps=eval_steps, seed=seed)
    args = _training_arguments(
        output_dir, trained, epochs=epochs, batch_size=batch_size, use_cpu=use_cpu, disable_tqdm=disable_tqdm, **shared,
        save_strategy="no",  # the best weights are kept in memory (BestWeightsCallback)
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
    )  # fmt: skip
    trainer = Trainer(
        model=trained,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ForecastCollator(trained, _freq_index(train_dataset)),
        callbacks=[best_weights],
    )
    trainer.train()
    best = best_weights.best_metric
    if lora_rank:
        model = trained.merge_and_unload()
    model.eval()
    return model, {"best_eval_loss": None if best is None else float(best), "steps": trainer.state.global_step}


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy of an (unpruned) model for one grid point."""
    return copy.deepcopy(model)


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
    torch.use_deterministic_algorithms(False)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# -- recipe plumbing: arguments, output folder, model and data loading, saving, summary ------------------------------

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
    """Task, data and run settings shared by the recipes."""

    model_name_or_path: str = field(
        default=REFERENCE_MODEL_DIR,
        metadata={"help": "Hub id or local folder of a supported model; defaults to the bundled reference model."},
    )
    dataset: str = field(default="ETTh1", metadata={"help": "Benchmark name, CSV/parquet file or Hub dataset id."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of benchmark files ($HF_TSPRUNE_DATA_DIR)."})
    target: str | None = field(default=None, metadata={"help": "Target column(s) of a user file (comma-separated)."})
    prediction_length: int = field(default=96, metadata={"help": "Forecast horizon."})
    context_length: int = field(default=512, metadata={"help": "Context length of every window."})
    preset: str = field(default="quick", metadata={"help": f"Data/epoch preset: {sorted(PRESETS)}."})
    train_stride: int | None = field(default=None, metadata={"help": "Step between training windows (preset)."})
    validation_stride: int | None = field(default=None, metadata={"help": "Step between validation windows (preset)."})
    output_dir: str = field(default="runs/prune_finetune", metadata={"help": "Where results and checkpoints go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a previous run in output_dir."})
    per_device_train_batch_size: int = field(default=64)
    per_device_eval_batch_size: int = field(default=256)
    gradient_accumulation_steps: int = field(default=1)
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate (and rank the prune run's mask set) every N steps (preset)."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Finetune learning rate."})
    finetune_epochs: float | None = field(default=None, metadata={"help": "Finetune epochs (preset)."})
    early_stopping_patience: int = field(default=3)
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
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/timesfm-pruned-etth1).")


def parse_arguments(dataclass_type: type, argv: list[str] | None = None):
    """Parses `dataclass_type` from the command line; `--config file.yaml` supplies defaults that flags override."""
    import yaml
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = {}
    if "--config" in argv:
        position = argv.index("--config")
        path = argv[position + 1]
        del argv[position : position + 2]
        with open(path) as f:
            defaults = yaml.safe_load(f) or {}
        known = {f.name for f in dataclasses.fields(dataclass_type)}
        unknown = set(defaults) - known
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(known)}.")
    parser = HfArgumentParser(dataclass_type)
    parser.set_defaults(**defaults)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def prepare_output_dir(args: TaskArguments, is_main_process: bool = True) -> None:
    """Refuses an output folder that holds another run (unless `--overwrite_output_dir`), before any work."""
    results = Path(args.output_dir) / "results.json"
    if results.exists() and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise ValueError(
            f"{args.output_dir} already holds a run ({results}). Choose another --output_dir or pass "
            "--overwrite_output_dir."
        )
    if is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)


def load_model(model_name_or_path: str) -> nn.Module:
    """Loads a supported model (Hub id or folder; pruned hf_tsprune checkpoints included), in eval mode."""
    if model_name_or_path == REFERENCE_MODEL_DIR and not os.path.isfile(
        os.path.join(REFERENCE_MODEL_DIR, "config.json")
    ):
        raise ValueError(f"The bundled reference model is missing from {REFERENCE_MODEL_DIR}; reinstall hf_tsprune.")
    from .evaluation import load_forecaster

    model = load_forecaster(model_name_or_path)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{model_name_or_path!r} is a naive baseline: prune and finetune need a model.")
    return model


def load_data(args: TaskArguments, model: nn.Module) -> dict[str, datasets.Dataset]:
    """Train/validation windows at the family's training horizon and test windows at `prediction_length`."""
    from .adapters import get_adapter
    from .data import load_forecasting_dataset
    from .training import training_horizon

    horizon = training_horizon(model, args.prediction_length)
    keep_channel_axis = not get_adapter(model).univariate
    common = dict(
        context_length=args.context_length,
        data_dir=args.data_dir,
        target=args.target,
        keep_channel_axis=keep_channel_axis,
    )
    train = load_forecasting_dataset(
        args.dataset, prediction_length=horizon, stride=args.train_stride, eval_stride=args.validation_stride, **common
    )
    test = load_forecasting_dataset(args.dataset, prediction_length=args.prediction_length, eval_stride=1, **common)
    return {"train": train["train"], "validation": train["validation"], "test": test["test"]}


def example_inputs(model: nn.Module) -> dict:
    """The spec's batch-1 forward inputs (seed 0), for FLOP counts."""
    from .architectures import get_spec

    return get_spec(model).example_inputs(model, 1, generator=torch.Generator().manual_seed(0))


def save_outputs(args: TaskArguments, model: nn.Module, plan: PruningPlan | None, results: dict) -> str:
    """Saves the (pruned) checkpoint with its model card under `output_dir/model`; pushes it when asked."""
    from .modeling import save_pruned

    folder = os.path.join(args.output_dir, "model")
    if plan is not None:
        save_pruned(
            model, folder, base_model=args.model_name_or_path, pruning_config=results.get("settings"), plan=plan,
            seed=args.seed, extra={"results": {k: results[k] for k in ("zero_shot", "pruned", "finetuned") if results.get(k)}},
        )  # fmt: skip
    else:
        model.save_pretrained(folder)
    try:
        from .hub import write_model_card
    except ImportError:
        write_model_card = None
    if write_model_card is not None:
        write_model_card(folder, results)
    if args.push_to_hub:
        from .hub import push_folder_to_hub

        push_folder_to_hub(folder, args.hub_model_id, private=args.hub_private_repo)
    return folder


def print_summary(results: dict) -> None:
    """A short comparison table of the stages."""
    rows = [
        ("zero-shot", results.get("zero_shot")),
        ("pruned", results.get("pruned")),
        ("finetuned", results.get("finetuned")),
    ]
    print(f"\n{results['dataset']} | horizon {results['prediction_length']} | context {results['context_length']}")
    print("| stage | test MSE | test MAE | windows |\n|---|---|---|---|")
    for name, stage in rows:
        if stage and stage.get("test"):
            test = stage["test"]
            print(f"| {name} | {test['mse']:.4f} | {test['mae']:.4f} | {test['n_windows']} |")
    if "params_after" in results:
        print(
            f"params {results['params_before']:,} -> {results['params_after']:,} "
            f"({results['params_after'] / results['params_before']:.1%}), FLOPs {results['flops_before']:,} -> "
            f"{results['flops_after']:,}, sparsity {results.get('sparsity', 0):.1%}"
        )
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results.get("timings_seconds", {}).items()))
