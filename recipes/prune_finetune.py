"""Prune-then-finetune a time-series foundation model on one forecasting task ("Less is More", arXiv 2505.23195).

Default run (offline, the bundled reference model on the bundled ETTh1, quick preset, a few minutes on 2 CPU cores):

    python recipes/prune_finetune.py

Full protocol (stride-1 training windows, more epochs):

    python recipes/prune_finetune.py --preset full --output_dir runs/etth1-full

Another model / dataset / horizon, LoRA finetuning, and a Hub push:

    python recipes/prune_finetune.py --model_name_or_path google/timesfm-2.5-200m-transformers \\
        --dataset ETTm1 --data_dir /path/to/ltsf --prediction_length 96 --lora_rank 8 \\
        --push_to_hub --hub_model_id me/timesfm-2.5-pruned-ettm1

Your own data (any CSV/parquet with a time column, or a Hub dataset id):

    python recipes/prune_finetune.py --dataset my_sensors.csv --target load --prediction_length 48

The paper's selection: a grid over (ratio_per_epoch, ema, learning_rate), chosen on validation loss only:

    python recipes/prune_finetune.py --grid "ratio_per_epoch=0.2,0.4 ema=0.3,0.7 learning_rate=1e-4,5e-4"

Settings from a YAML file (command-line flags override it):

    python recipes/prune_finetune.py --config recipes/presets/etth1_quick.yaml

Multi-process (CPU DDP over gloo; on GPUs drop `--use_cpu true`):

    accelerate launch --multi_gpu --num_processes 2 recipes/prune_finetune.py --use_cpu true

`--cpu --num_processes 2` silently starts a single process: use `--multi_gpu` with `--use_cpu true` as above.
FSDP: shrink changes parameter shapes, so prune and shrink first (DDP or one process), then launch the finetune on the
saved pruned checkpoint (`recipes/finetune.py --model_name_or_path <output_dir>/pruned_model`) with an FSDP
`accelerate` config; never wrap a model in FSDP before shrinking it.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import PartialState

from hf_tsprune import PruningConfig
from hf_tsprune.pipeline import (
    StageTimer,
    TaskArguments,
    count_parameters,
    example_inputs,
    finetune_stage,
    load_data,
    load_model,
    parse_arguments,
    prepare_output_dir,
    print_summary,
    prune_stage,
    save_outputs,
    seed_everything,
    test_metrics,
)
from hf_tsprune.surgery import count_flops


@dataclass
class PruneFinetuneArguments(TaskArguments):
    """Prune-run settings (task, data, finetune and run settings are inherited from `TaskArguments`)."""

    ratio_per_epoch: float = field(default=0.3, metadata={"help": "Fraction of alive channels pruned per epoch."})
    ema: float = field(default=0.3, metadata={"help": "EMA weight of the newest Taylor scores, in (0, 1]."})
    max_sparsity: float = field(default=0.9, metadata={"help": "Stop pruning at this fraction of channels."})
    prune_epochs: float = field(default=1.0, metadata={"help": "Epochs of the prune run."})
    cost_normalized: bool = field(default=False, metadata={"help": "Rank channels by score per parameter removed."})
    round_to: int = field(default=1, metadata={"help": "Keep feed-forward widths a multiple of this."})
    min_units_per_group: int = field(default=1, metadata={"help": "Channels each group keeps at least."})
    grid: str | None = field(
        default=None,
        metadata={
            "help": 'Grid chosen on validation loss, e.g. "ratio_per_epoch=0.2,0.4 ema=0.3,0.7 learning_rate=1e-4,5e-4".'
        },
    )

    def pruning_config(self, **overrides) -> PruningConfig:
        values = dict(
            ratio_per_epoch=self.ratio_per_epoch, ema=self.ema, max_sparsity=self.max_sparsity,
            cost_normalized=self.cost_normalized, round_to=self.round_to, min_units_per_group=self.min_units_per_group,
        )  # fmt: skip
        values.update({k: v for k, v in overrides.items() if k in values})
        return PruningConfig(**values)


GRID_KEYS = ("ratio_per_epoch", "ema", "learning_rate", "max_sparsity", "prune_epochs")


def parse_grid(grid: str | None) -> list[dict]:
    """`"a=1,2 b=3"` -> `[{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 3.0}]`."""
    if not grid:
        return [{}]
    axes = {}
    for item in grid.split():
        key, _, values = item.partition("=")
        if key not in GRID_KEYS or not values:
            raise ValueError(f"Bad --grid entry {item!r}: use KEY=v1,v2 with KEY in {GRID_KEYS}.")
        axes[key] = [float(v) for v in values.split(",")]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def prune_and_finetune(args: PruneFinetuneArguments, base_model, data: dict, point: dict, folder: str) -> dict:
    """One grid point: prune run + shrink + finetune on a copy of the base model."""
    model = copy.deepcopy(base_model)
    timer = StageTimer()
    with timer("prune"):
        pruned = prune_stage(
            model, data["train"], data["validation"], args.pruning_config(**point), os.path.join(folder, "prune_run"),
            epochs=point.get("prune_epochs", args.prune_epochs), batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, eval_steps=args.eval_steps,
            round_to=args.round_to, seed=args.seed, use_cpu=args.use_cpu,
            resume_from_checkpoint=args.resume_from_checkpoint, disable_tqdm=args.disable_tqdm,
        )  # fmt: skip
    shrunk = copy.deepcopy(model)  # the pruned model before finetuning, for its own test figures
    with timer("finetune"):
        model, finetuned = finetune_stage(
            model, data["train"], data["validation"], os.path.join(folder, "finetune_run"),
            epochs=args.finetune_epochs, batch_size=args.per_device_train_batch_size,
            learning_rate=point.get("learning_rate", args.learning_rate),
            gradient_accumulation_steps=args.gradient_accumulation_steps, eval_steps=args.eval_steps,
            early_stopping_patience=args.early_stopping_patience, lora_rank=args.lora_rank, seed=args.seed,
            use_cpu=args.use_cpu, disable_tqdm=args.disable_tqdm,
        )  # fmt: skip
    return {"model": model, "shrunk": shrunk, "point": point, "prune": pruned, "finetune": finetuned, "timer": timer}


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(PruneFinetuneArguments, argv)
    state = PartialState()
    grid = parse_grid(args.grid)
    for point in grid:  # every setting is checked before any work starts
        args.pruning_config(**point)
    prepare_output_dir(args, state.is_main_process)
    seed_everything(args.seed)
    timer = StageTimer()
    with timer("load"):
        model = load_model(args.model_name_or_path)
        data = load_data(args, model)
    example = example_inputs(model)
    params_before, flops_before = count_parameters(model), count_flops(model, example)
    batch = args.per_device_eval_batch_size

    with timer("zero_shot_test"):
        zero_shot = test_metrics(model, data["test"], args.prediction_length, batch, "zero-shot test")

    runs = []
    for index, point in enumerate(grid):
        folder = args.output_dir if len(grid) == 1 else os.path.join(args.output_dir, f"grid-{index}")
        runs.append(prune_and_finetune(args, model, data, point, folder))
        for stage, seconds in runs[-1]["timer"].seconds.items():
            timer.seconds[stage] = round(timer.seconds.get(stage, 0.0) + seconds, 3)
    best = min(
        runs,
        key=lambda r: r["finetune"]["best_eval_loss"] if r["finetune"]["best_eval_loss"] is not None else float("inf"),
    )
    final, plan = best["model"], best["prune"].plan

    with timer("pruned_test"):
        pruned = test_metrics(best["shrunk"], data["test"], args.prediction_length, batch, "pruned test")
    with timer("finetuned_test"):
        finetuned = test_metrics(final, data["test"], args.prediction_length, batch, "finetuned test")

    results = {
        "model": args.model_name_or_path,
        "dataset": args.dataset,
        "prediction_length": args.prediction_length,
        "context_length": args.context_length,
        "zero_shot": {"test": zero_shot},
        "pruned": {"test": pruned},
        "finetuned": {"test": finetuned, "validation_loss": best["finetune"]["best_eval_loss"]},
        "params_before": params_before,
        "params_after": count_parameters(final),
        "flops_before": flops_before,
        "flops_after": count_flops(final, example),
        "sparsity": plan.sparsity,
        "best_mask_set": {"step": best["prune"].best_step, "eval_loss": best["prune"].best_eval_loss,
                          "sparsity": best["prune"].best_sparsity},
        "selected_grid_point": best["point"],
        "grid": [{"point": r["point"], "validation_loss": r["finetune"]["best_eval_loss"],
                  "sparsity": r["prune"].plan.sparsity} for r in runs] if len(runs) > 1 else None,
        "plan": plan.to_dict(),
        "timings_seconds": timer.seconds,
        "settings": asdict(args),
        "seed": args.seed,
        "world_size": state.num_processes,
    }  # fmt: skip
    if state.is_main_process:  # only rank 0 writes
        with timer("save"):
            results["saved_to"] = save_outputs(args, final, plan, results)
        Path(args.output_dir, "results.json").write_text(json.dumps(results, indent=2, default=str))
        print_summary(results)
    state.wait_for_everyone()
    return results


if __name__ == "__main__":
    main()
