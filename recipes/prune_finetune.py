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

Moirai (1.x, MoE, 2; a `uni2ts` module folder or Hub id; `--patch_size` where the module has several), and
Moirai-MoE's expert removal before the prune run (`--expert_threshold 0`: the experts no token reached; negative: the
top-k per layer; `--expert_score usage|taylor`):

    python recipes/prune_finetune.py --model_name_or_path Salesforce/moirai-1.0-R-small --patch_size 32
    python recipes/prune_finetune.py --model_name_or_path Salesforce/moirai-moe-1.0-R-small --expert_threshold 0

The paper's selection: a grid over (ratio_per_epoch, ema, learning_rate), chosen on validation loss only:

    python recipes/prune_finetune.py --grid "ratio_per_epoch=0.2,0.4 ema=0.3,0.7 learning_rate=1e-4,5e-4"

Settings from a YAML file (command-line flags override it):

    python recipes/prune_finetune.py --config recipes/presets/etth1_quick.yaml

Multi-process (CPU DDP over gloo; on GPUs drop `--use_cpu true`):

    accelerate launch --multi_gpu --num_processes 2 recipes/prune_finetune.py --use_cpu true

`--cpu --num_processes 2` silently starts a single process: use `--multi_gpu` with `--use_cpu true` as above.
FSDP: shrink changes parameter shapes, so prune and shrink first (DDP or one process), then launch the finetune on the
saved pruned checkpoint (`recipes/finetune.py --model_name_or_path <output_dir>/model`) with an FSDP
`accelerate` config; never wrap a model in FSDP before shrinking it.

What a run writes (only the main process writes):

- `<output_dir>/results.json`: the test figures per stage, parameters, FLOPs, the selected mask set, timings, settings;
- `<output_dir>/model`: the pruned and finetuned checkpoint with its model card (`README.md`, `kept_units.png`);
- `<output_dir>/prune_run/checkpoint-N`: the prune run's resumable checkpoints (`--resume_from_checkpoint`), saved at
  every evaluation, i.e. every `--eval_steps` steps, and at its last step (there is no `--save_steps`); the finetune
  keeps its best weights in memory and saves no checkpoint. With `--grid`, each grid point runs in
  `<output_dir>/grid-<i>`; grid points that differ only in `learning_rate` share one prune run (in the folder of the
  first of them).

An `output_dir` holding another run is refused; `--overwrite_output_dir` deletes that run's `results.json`, `model`,
`prune_run`, `finetune_run` and `grid-<i>` first (other files stay). `--push_to_hub` is checked before any work
(online, a token, a valid `--hub_model_id`) and uploads `<output_dir>/model` once `results.json` is written.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from dataclasses import asdict, dataclass

from torch import nn

from hf_tsprune.pipeline import (
    ExpertRemovalResult,
    FinetuneResult,
    PruneFinetuneArguments,
    PruneResult,
    StageTimer,
    TaskData,
    check_expert_removal,
    check_output_dir,
    check_push_to_hub,
    count_parameters,
    example_inputs,
    expert_stage,
    finetune_stage,
    load_data,
    load_model,
    parse_arguments,
    prepare_output_dir,
    print_summary,
    process_state,
    prune_stage,
    push_outputs,
    save_outputs,
    seed_everything,
    test_metrics,
)
from hf_tsprune.results import FinetunedResult, RunResult, StageResult
from hf_tsprune.surgery import count_flops

__all__ = [
    "FINETUNE_GRID_KEYS",
    "GRID_KEYS",
    "GridPointRun",
    "PruneFinetuneArguments",
    "grid_point_arguments",
    "main",
    "parse_grid",
    "prune_and_finetune",
]

GRID_KEYS = ("ratio_per_epoch", "ema", "learning_rate", "max_sparsity", "prune_epochs")
FINETUNE_GRID_KEYS = ("learning_rate",)
"""Grid keys that change only the finetune: grid points that differ only in them share one prune run."""


def _number(text: str, item: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"Bad --grid entry {item!r}: {text!r} is not a number. Use KEY=v1,v2 with numbers, e.g. "
            '--grid "ratio_per_epoch=0.2,0.4 learning_rate=1e-4,5e-4".'
        ) from None


def parse_grid(grid: str | None) -> list[dict]:
    """`"a=1,2 b=3"` -> `[{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 3.0}]`.

    Raises:
        `ValueError`: an entry that is not `KEY=v1,v2` with a key of [`GRID_KEYS`] and numbers (the message names
            `--grid` and the entry).
    """
    if not grid:
        return [{}]
    axes = {}
    for item in grid.split():
        key, _, values = item.partition("=")
        if key not in GRID_KEYS or not values:
            raise ValueError(f"Bad --grid entry {item!r}: use KEY=v1,v2 with KEY in {GRID_KEYS}.")
        axes[key] = [_number(value, item) for value in values.split(",")]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def grid_point_arguments(args: PruneFinetuneArguments, point: dict[str, float]) -> PruneFinetuneArguments:
    """`args` at a grid `point`; a setting the point makes invalid raises a `ValueError` naming `--grid`."""
    try:
        return dataclasses.replace(args, **point)
    except ValueError as err:
        raise ValueError(f"--grid point {point}: {err}") from None


@dataclass
class GridPointRun:
    """One grid point's prune run, shrink and finetune.

    Args:
        point (`dict[str, float]`): The grid settings of the run (`{}` without a grid).
        model (`nn.Module`): The pruned and finetuned model.
        shrunk (`nn.Module`): The pruned model before finetuning.
        pruned ([`PruneResult`]): What the prune run kept.
        finetuned ([`FinetuneResult`]): How the finetune went.
        timer ([`StageTimer`]): Seconds of its expert removal, prune and finetune stages.
        experts ([`ExpertRemovalResult`], *optional*): What expert removal kept (`--expert_threshold`).
    """

    point: dict[str, float]
    model: nn.Module
    shrunk: nn.Module
    pruned: PruneResult
    finetuned: FinetuneResult
    timer: StageTimer
    experts: ExpertRemovalResult | None = None

    @property
    def validation_loss(self) -> float:
        loss = self.finetuned.best_eval_loss
        return loss if loss is not None else float("inf")


def prune_and_finetune(
    args: PruneFinetuneArguments,
    point: dict[str, float],
    base_model: nn.Module,
    data: TaskData,
    folder: str,
    prune_runs: dict | None = None,
) -> GridPointRun:
    """One grid point: (expert removal +) prune run + shrink + finetune on a copy of the base model, with `args` at the
    grid `point`.

    Args:
        prune_runs (`dict`, *optional*): Prune runs of earlier grid points, by their prune settings (the point without
            its [`FINETUNE_GRID_KEYS`]); a point whose prune settings are there finetunes a copy of that shrunk model
            instead of pruning again, and this point's run is added otherwise.
    """
    args = grid_point_arguments(args, point)
    prune_settings = tuple(sorted((k, v) for k, v in point.items() if k not in FINETUNE_GRID_KEYS))
    timer = StageTimer()
    if prune_runs is not None and prune_settings in prune_runs:
        shrunk, pruned, experts = prune_runs[prune_settings]
    else:
        shrunk = copy.deepcopy(base_model)
        experts = None
        if args.expert_threshold is not None:
            with timer("experts"):
                experts = expert_stage(shrunk, data, args)
        with timer("prune"):
            pruned = prune_stage(shrunk, data, args, os.path.join(folder, "prune_run"))
        if prune_runs is not None:
            prune_runs[prune_settings] = (shrunk, pruned, experts)
    model = copy.deepcopy(shrunk)  # `shrunk` stays the pruned model before finetuning, for its own test figures
    with timer("finetune"):
        model, finetuned = finetune_stage(model, data, args, os.path.join(folder, "finetune_run"))
    return GridPointRun(point, model, shrunk, pruned, finetuned, timer, experts)


def main(argv: list[str] | None = None) -> RunResult:
    args = parse_arguments(PruneFinetuneArguments, argv)
    state = process_state(args.use_cpu)
    grid = parse_grid(args.grid)
    for point in grid:  # every setting is checked before any work starts
        grid_point_arguments(args, point)
    check_output_dir(args)
    check_push_to_hub(args)
    seed_everything(args.seed)
    timer = StageTimer()
    with timer("load"):
        model = load_model(args.model_name_or_path, args)
        check_expert_removal(args, model)
        data = load_data(args, model)
    example = example_inputs(model)
    params_before, flops_before = count_parameters(model), count_flops(model, example)
    batch = args.per_device_eval_batch_size

    with timer("zero_shot_test"):
        zero_shot = test_metrics(model, data, batch, "zero-shot test")

    prepare_output_dir(args, state.is_main_process)  # right before the first write: every check has passed
    state.wait_for_everyone()
    runs, prune_runs = [], {}
    for index, point in enumerate(grid):
        folder = args.output_dir if len(grid) == 1 else os.path.join(args.output_dir, f"grid-{index}")
        runs.append(prune_and_finetune(args, point, model, data, folder, prune_runs))
        for stage, seconds in runs[-1].timer.seconds.items():
            timer.seconds[stage] = round(timer.seconds.get(stage, 0.0) + seconds, 3)
    best = min(runs, key=lambda run: run.validation_loss)
    final, plan = best.model, best.pruned.plan

    with timer("pruned_test"):
        pruned = test_metrics(best.shrunk, data, batch, "pruned test")
    with timer("finetuned_test"):
        finetuned = test_metrics(final, data, batch, "finetuned test")

    result = RunResult(
        model=args.model_name_or_path,
        dataset=args.dataset,
        prediction_length=args.prediction_length,
        context_length=args.context_length,
        zero_shot=StageResult(zero_shot),
        pruned=StageResult(pruned),
        finetuned=FinetunedResult(finetuned, validation_loss=best.finetuned.best_eval_loss),
        params_before=params_before,
        params_after=count_parameters(final),
        flops_before=flops_before,
        flops_after=count_flops(final, example),
        sparsity=plan.sparsity,
        best_mask_set=best.pruned.best_mask_set(),
        selected_grid_point=best.point,
        grid=[
            {"point": run.point, "validation_loss": run.finetuned.best_eval_loss, "sparsity": run.pruned.plan.sparsity}
            for run in runs
        ]
        if len(runs) > 1
        else None,
        plan=plan.to_dict(),
        timings_seconds=timer.seconds,  # the same dict: the save time below is in results.json too
        settings=asdict(args),
        seed=args.seed,
        world_size=state.num_processes,
        experts=best.experts.to_dict() if best.experts is not None else None,
    )
    if state.is_main_process:  # only rank 0 writes
        with timer("save"):
            result.saved_to = save_outputs(args, final, plan, result)
        result.save(os.path.join(args.output_dir, "results.json"))
        print_summary(result)
        push_outputs(args, result.saved_to)  # the local outputs are complete: a failed push loses nothing
    state.wait_for_everyone()
    return result


if __name__ == "__main__":
    main()
