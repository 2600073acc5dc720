"""Baseline: full finetune of the unpruned model, with the same protocol and results.json as prune_finetune.py.

    python recipes/finetune.py                                   # bundled reference model on bundled ETTh1 (quick)
    python recipes/finetune.py --preset full --output_dir runs/etth1-finetune-full
    python recipes/finetune.py --model_name_or_path runs/prune_finetune/model --lora_rank 8   # a pruned checkpoint

The paper's selection over learning rates is done on validation loss only: `--grid "learning_rate=1e-4,5e-4"`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hf_tsprune.pipeline import (
    StageTimer,
    TaskArguments,
    check_output_dir,
    check_push_to_hub,
    count_parameters,
    example_inputs,
    finetune_stage,
    load_data,
    load_model,
    parse_arguments,
    prepare_output_dir,
    print_summary,
    process_state,
    push_outputs,
    save_outputs,
    seed_everything,
    test_metrics,
)
from hf_tsprune.results import FinetunedResult, RunResult, StageResult
from hf_tsprune.surgery import count_flops


@dataclass
class FinetuneArguments(TaskArguments):
    """Finetune settings (task, data and run settings are inherited from `TaskArguments`)."""

    output_dir: str = field(default="runs/finetune", metadata={"help": "Where results and checkpoints go."})
    grid: str | None = field(
        default=None, metadata={"help": 'Learning rates chosen on validation: "learning_rate=1e-4,5e-4".'}
    )


def parse_learning_rates(args: FinetuneArguments) -> list[float]:
    """The learning rates of `--grid "learning_rate=v1,v2"` (`[--learning_rate]` without a grid).

    Raises:
        `ValueError`: a grid over something else, or a value that is not a positive number (naming `--grid`).
    """
    if not args.grid:
        return [args.learning_rate]
    key, _, values = args.grid.partition("=")
    if key != "learning_rate" or not values:
        raise ValueError(f"Bad --grid {args.grid!r}: finetune.py searches only learning_rate=v1,v2,...")
    rates = []
    for value in values.split(","):
        try:
            rates.append(float(value))
        except ValueError:
            raise ValueError(
                f"Bad --grid {args.grid!r}: {value!r} is not a number. Use learning_rate=v1,v2 with numbers, e.g. "
                '--grid "learning_rate=1e-4,5e-4".'
            ) from None
        if not rates[-1] > 0:
            raise ValueError(f"Bad --grid {args.grid!r}: learning rates must be positive, got {value!r}.")
    return rates


def main(argv: list[str] | None = None) -> RunResult:
    args = parse_arguments(FinetuneArguments, argv)
    state = process_state(args.use_cpu)
    learning_rates = parse_learning_rates(args)
    check_output_dir(args)
    check_push_to_hub(args)
    seed_everything(args.seed)
    timer = StageTimer()
    with timer("load"):
        model = load_model(args.model_name_or_path, args)
        data = load_data(args, model)
    example = example_inputs(model)
    batch = args.per_device_eval_batch_size
    with timer("zero_shot_test"):
        zero_shot = test_metrics(model, data, batch, "zero-shot test")
    prepare_output_dir(args, state.is_main_process)  # right before the first write: every check has passed
    state.wait_for_everyone()
    runs = []
    with timer("finetune"):
        for index, learning_rate in enumerate(learning_rates):
            folder = str(Path(args.output_dir) / (f"grid-{index}" if len(learning_rates) > 1 else "finetune_run"))
            at_learning_rate = dataclasses.replace(args, learning_rate=learning_rate)
            tuned, info = finetune_stage(copy.deepcopy(model), data, at_learning_rate, folder)
            runs.append((tuned, info, learning_rate))
    tuned, info, learning_rate = min(
        runs, key=lambda r: r[1].best_eval_loss if r[1].best_eval_loss is not None else float("inf")
    )
    with timer("finetuned_test"):
        finetuned = test_metrics(tuned, data, batch, "finetuned test")
    params = count_parameters(tuned)
    result = RunResult(
        model=args.model_name_or_path,
        dataset=args.dataset,
        prediction_length=args.prediction_length,
        context_length=args.context_length,
        zero_shot=StageResult(zero_shot),
        finetuned=FinetunedResult(finetuned, validation_loss=info.best_eval_loss, learning_rate=learning_rate),
        grid=[{"learning_rate": lr, "validation_loss": i.best_eval_loss} for _, i, lr in runs]
        if len(runs) > 1
        else None,
        params_before=params,
        params_after=params,
        flops_before=count_flops(model, example),
        flops_after=count_flops(tuned, example),
        timings_seconds=timer.seconds,
        settings=asdict(args),
        seed=args.seed,
        world_size=state.num_processes,
    )
    if state.is_main_process:
        result.saved_to = save_outputs(args, tuned, None, result)
        result.save(os.path.join(args.output_dir, "results.json"))
        print_summary(result)
        push_outputs(args, result.saved_to)  # the local outputs are complete: a failed push loses nothing
    state.wait_for_everyone()
    return result


if __name__ == "__main__":
    main()
