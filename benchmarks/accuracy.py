"""The paper's accuracy table on one model: zero-shot, full finetune (FT), prune only and prune-then-finetune (PTF),
with a few-shot column and equal-sparsity controls of the importance scores.

    python benchmarks/accuracy.py                                   # ETTh1 H=96, the reference model (~7 min)
    python benchmarks/accuracy.py --full --data_dir ../shared/data  # the paper's grid: 5 datasets x 96/192/336/720
    python benchmarks/accuracy.py --model_name_or_path runs/my-model --datasets ETTm1 --horizons 96 --seeds 42
    python benchmarks/accuracy.py --skip_controls --train_fractions 0.05 0.1

For each cell (dataset x horizon, the LTSF protocol of `hf_tsprune.evaluation`: scaled values, stride-1 test
windows), with the library's own stages (`hf_tsprune.pipeline`: `prune_stage`, `finetune_stage`, `test_metrics`):

- **zero-shot**: the model as loaded;
- **FT**: every weight finetuned, dropout on (the paper's FT) and, separately, off; one run per learning rate of
  `--learning_rates`, the one with the lowest validation loss kept (its test figures are reported);
- **prune only**: the prune run (weights frozen, Taylor + EMA scores, `--ratio_per_epoch` per epoch) keeps the mask
  set of the lowest validation loss, the unpruned model of step 0 included, then shrinks;
- **PTF**: that shrunk model finetuned (dropout off, as in the paper) over the same learning rates, epochs, early
  stopping and seeds as FT, chosen the same way.

The default run (ETTh1, the bundled file, horizon 96, context 512, three seeds; training windows every 32 steps,
validation windows every 32, validation every 15 optimizer steps, 2 finetune epochs with early stopping after 3
evaluations without improvement; the controls score every 8th test window) takes about 7 minutes on 2 CPU cores;
each horizon beyond the reference model's native 128 steps (`--horizons 96 336`) costs several times more, as its
forecasts and training losses decode autoregressively. Every choice is made on the validation
split; the test split is only scored. Headline cells repeat over `--seeds`
(mean ± std). `--train_fractions` adds few-shot cells (the last fraction of the training windows, TTM's protocol) for
FT and PTF on the first seed. The controls (`--controls_cell`, default the first cell) prune the model once per
importance and seed to the largest of `--control_sparsities` in one epoch and score the mask set of each sparsity on
the way (the first one at or above it) on validation and test: Taylor + EMA (ours), Taylor without EMA, weight
magnitude (data-free, so one run) and random scores (the chance baseline).

Writes `accuracy.json`, `accuracy.md` and `accuracy.png` in `--output_dir` (after every cell, so an interrupted run
keeps what it measured) and prints progress and the tables.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from hf_tsprune.data import get_window_source
from hf_tsprune.evaluation import evaluate_forecaster
from hf_tsprune.masks import get_masks, install_masks, masked_groups, set_masks
from hf_tsprune.pipeline import (
    REFERENCE_MODEL_DIR,
    PruneFinetuneArguments,
    count_parameters,
    finetune_stage,
    load_data,
    load_model,
    prune_stage,
    seed_everything,
    test_metrics,
)
from hf_tsprune.training import dropout_probabilities

FULL_DATASETS = ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather"]
FULL_HORIZONS = [96, 192, 336, 720]
CONTROLS = {  # name: (importance, ema)
    "Taylor + EMA (ours)": ("taylor", 0.3),
    "Taylor, no EMA": ("taylor", 1.0),
    "abs(Taylor) + EMA": ("taylor_abs", 0.3),
    "weight magnitude": ("magnitude", 1.0),
    "random": ("random", 1.0),
}
METHODS = ["zero-shot", "FT", "FT (dropout off)", "prune only", "PTF"]


def log(message: str, start: float) -> None:
    print(f"[accuracy {time.time() - start:7.0f} s] {message}", flush=True)


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether any dropout of `model` has a non-zero probability (else FT with dropout on and off are one run)."""
    return any(value > 0 for _, _, value in dropout_probabilities(model))


def split_metrics(model: torch.nn.Module, data, batch_size: int) -> dict:
    """Test and validation MSE/MAE of `model` over the task horizon (validation: the first `prediction_length` steps
    of the validation windows' targets)."""
    test = test_metrics(model, data, batch_size, "test")
    validation = evaluate_forecaster(
        model, data.validation, prediction_length=data.prediction_length, batch_size=batch_size, show_progress=False,
        metrics=("mse", "mae"),
    )  # fmt: skip
    return {
        "test_mse": test.mse, "test_mae": test.mae, "test_windows": test.n_windows,
        "validation_mse": float(validation["mse"]), "validation_mae": float(validation["mae"]),
    }  # fmt: skip


def finetune_over_learning_rates(
    model: torch.nn.Module, data, args: PruneFinetuneArguments, learning_rates: list[float], dropout: bool, folder: str
) -> tuple[torch.nn.Module, dict]:
    """One `finetune_stage` per learning rate from a copy of `model`; the lowest validation loss is kept."""
    best, grid = None, []
    for learning_rate in learning_rates:
        seed_everything(args.seed)
        at = dataclasses.replace(args, learning_rate=learning_rate, finetune_dropout=dropout)
        tuned, info = finetune_stage(copy.deepcopy(model), data, at, folder)
        loss = info.best_eval_loss if info.best_eval_loss is not None else float("inf")
        grid.append({"learning_rate": learning_rate, "validation_loss": loss, "steps": info.steps})
        if best is None or loss < best[1]:
            best = (tuned, loss, learning_rate)
    tuned, loss, learning_rate = best
    return tuned, {"learning_rate": learning_rate, "validation_loss": loss, "grid": grid}


class MaskSetsOnTheWay(TrainerCallback):
    """Records, for each target sparsity, the first mask set of the prune run at or above it (after the step's
    pruning), with its actual sparsity and step."""

    def __init__(self, targets: list[float]):
        self.targets = sorted(targets)
        self.recorded: dict[float, dict] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = [target for target in self.targets if target not in self.recorded]
        if not due:
            return
        masks = [g.mask for g in masked_groups(model)]
        sparsity = 1.0 - float(sum(m.sum() for m in masks)) / sum(m.numel() for m in masks)
        reached = [target for target in due if sparsity >= target - 1e-9]
        if reached:
            record = {"sparsity": sparsity, "step": state.global_step, "masks": get_masks(model)}
            self.recorded.update(dict.fromkeys(reached, record))


def run_controls(base: torch.nn.Module, data, args: PruneFinetuneArguments, opts, folder: str, start: float) -> dict:
    """Prune-only validation and test figures at equal sparsity for each importance of [`CONTROLS`]."""
    top = max(opts.control_sparsities)
    every = opts.controls_test_every
    controls_data = dataclasses.replace(data, test=data.test.select(range(0, len(data.test), every)))
    rows = []
    for name, (importance, ema) in CONTROLS.items():
        seeds = opts.seeds[:1] if importance == "magnitude" else opts.seeds
        for seed in seeds:
            seed_everything(seed)
            model = copy.deepcopy(base)
            recorder = MaskSetsOnTheWay(opts.control_sparsities)
            at = dataclasses.replace(
                args, seed=seed, importance=importance, ema=ema, ratio_per_epoch=min(top + 0.05, 0.95),
                max_sparsity=min(top + 0.05, 0.95),
                prune_epochs=1.0, eval_steps=10**9,  # evaluations only at start and end: the mask sets are recorded
            )  # fmt: skip
            prune_stage(model, data, at, os.path.join(folder, f"controls-{importance}-{ema}-{seed}"), [recorder])
            for target in opts.control_sparsities:
                if target not in recorder.recorded:
                    log(f"controls: {name} seed {seed} never reached sparsity {target}", start)
                    continue
                record = recorder.recorded[target]
                masked = copy.deepcopy(base)
                install_masks(masked)
                set_masks(masked, record["masks"])
                figures = split_metrics(masked, controls_data, opts.batch_size)
                rows.append({"method": name, "importance": importance, "ema": ema, "seed": seed, "target": target,
                             "sparsity": record["sparsity"], "step": record["step"], **figures})  # fmt: skip
                log(
                    f"controls: {name}, seed {seed}, sparsity {record['sparsity']:.3f}: validation MSE "
                    f"{figures['validation_mse']:.4f}, test MSE {figures['test_mse']:.4f}",
                    start,
                )
    return {"rows": rows, "dataset": get_window_source(data.test).name, "horizon": args.prediction_length,
            "test_every": every}  # fmt: skip


def run_cell(opts, dataset: str, horizon: int, folder: str, start: float, controls: bool) -> dict:
    """Every method of one dataset x horizon over the seeds, plus the few-shot runs and (if `controls`) the
    controls."""
    args = PruneFinetuneArguments(
        model_name_or_path=opts.model_name_or_path, dataset=dataset, data_dir=opts.data_dir,
        prediction_length=horizon, context_length=opts.context_length, preset=opts.preset,
        finetune_epochs=opts.finetune_epochs, ratio_per_epoch=opts.ratio_per_epoch, train_stride=opts.train_stride,
        validation_stride=opts.validation_stride, eval_steps=opts.eval_steps,
        per_device_eval_batch_size=opts.batch_size, output_dir=folder, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    model = load_model(args.model_name_or_path, args)
    data = load_data(args, model)
    cell = {"dataset": get_window_source(data.test).name, "source": dataset, "horizon": horizon, "train_windows": len(data.train),
            "validation_windows": len(data.validation), "params": count_parameters(model),
            "model_has_dropout": has_dropout(model), "seeds": []}  # fmt: skip
    cell["zero_shot"] = split_metrics(model, data, opts.batch_size)
    log(f"{dataset} H={horizon}: zero-shot test MSE {cell['zero_shot']['test_mse']:.4f}", start)
    for seed in opts.seeds:
        at = dataclasses.replace(args, seed=seed)
        run = {"seed": seed}
        tuned, run["ft_selection"] = finetune_over_learning_rates(
            model, data, at, opts.learning_rates, True, os.path.join(folder, "ft")
        )
        run["ft"] = split_metrics(tuned, data, opts.batch_size)
        if cell["model_has_dropout"]:
            tuned, run["ft_no_dropout_selection"] = finetune_over_learning_rates(
                model, data, at, opts.learning_rates, False, os.path.join(folder, "ft-off")
            )
            run["ft_no_dropout"] = split_metrics(tuned, data, opts.batch_size)
        else:  # no dropout to turn off: the same run
            run["ft_no_dropout"], run["ft_no_dropout_selection"] = run["ft"], run["ft_selection"]
        log(f"{dataset} H={horizon} seed {seed}: FT test MSE {run['ft']['test_mse']:.4f}", start)
        seed_everything(seed)
        shrunk = copy.deepcopy(model)
        pruned = prune_stage(shrunk, data, at, os.path.join(folder, "prune"))
        run["prune"] = {"best_step": pruned.best_step, "best_eval_loss": pruned.best_eval_loss,
                        "sparsity": pruned.plan.sparsity, "params": count_parameters(shrunk),
                        "history": pruned.history}  # fmt: skip
        run["prune_only"] = split_metrics(shrunk, data, opts.batch_size)
        tuned, run["ptf_selection"] = finetune_over_learning_rates(
            shrunk, data, at, opts.learning_rates, False, os.path.join(folder, "ptf")
        )
        run["ptf"] = split_metrics(tuned, data, opts.batch_size)
        log(
            f"{dataset} H={horizon} seed {seed}: prune only {run['prune_only']['test_mse']:.4f} (sparsity "
            f"{pruned.plan.sparsity:.3f}, step {pruned.best_step}), PTF {run['ptf']['test_mse']:.4f}",
            start,
        )
        cell["seeds"].append(run)
    cell["few_shot"] = []
    for fraction in opts.train_fractions:
        few = dataclasses.replace(args, seed=opts.seeds[0], train_fraction=fraction)
        few_data = load_data(few, model)
        tuned, ft_selection = finetune_over_learning_rates(
            model, few_data, few, opts.learning_rates, True, os.path.join(folder, "few-ft")
        )
        entry = {"train_fraction": fraction, "train_windows": len(few_data.train), "seed": few.seed,
                 "ft": split_metrics(tuned, few_data, opts.batch_size), "ft_selection": ft_selection}  # fmt: skip
        seed_everything(few.seed)
        shrunk = copy.deepcopy(model)
        pruned = prune_stage(shrunk, few_data, few, os.path.join(folder, "few-prune"))
        tuned, entry["ptf_selection"] = finetune_over_learning_rates(
            shrunk, few_data, few, opts.learning_rates, False, os.path.join(folder, "few-ptf")
        )
        entry.update(ptf=split_metrics(tuned, few_data, opts.batch_size), sparsity=pruned.plan.sparsity,
                     best_step=pruned.best_step)  # fmt: skip
        cell["few_shot"].append(entry)
        log(
            f"{dataset} H={horizon} few-shot {fraction:.0%} ({entry['train_windows']} windows): FT "
            f"{entry['ft']['test_mse']:.4f}, PTF {entry['ptf']['test_mse']:.4f} (sparsity {entry['sparsity']:.3f})",
            start,
        )
    if controls:
        cell["controls"] = run_controls(model, data, args, opts, os.path.join(folder, "controls"), start)
    return cell


# -- summaries -----------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(cell: dict) -> dict:
    """Per method, mean and std over seeds of test MSE/MAE (zero-shot: one value)."""
    keys = {"FT": "ft", "FT (dropout off)": "ft_no_dropout", "prune only": "prune_only", "PTF": "ptf"}
    summary = {"zero-shot": {m: (cell["zero_shot"][f"test_{m}"], 0.0) for m in ("mse", "mae")}}
    for method, key in keys.items():
        summary[method] = {m: mean_std([run[key][f"test_{m}"] for run in cell["seeds"]]) for m in ("mse", "mae")}
    summary["sparsity"] = mean_std([run["prune"]["sparsity"] for run in cell["seeds"]])
    summary["params_after"] = mean_std([run["prune"]["params"] for run in cell["seeds"]])
    return summary


def fmt(value: tuple[float, float], bold: bool) -> str:
    text = f"{value[0]:.4f} ± {value[1]:.4f}" if value[1] else f"{value[0]:.4f}"
    return f"**{text}**" if bold else text


def markdown(results: dict) -> str:
    settings = results["settings"]
    lines = [
        f"# Accuracy: {Path(settings['model_name_or_path']).name}",
        "",
        f"{results['machine']}; `{results['command']}` ({results['wall_seconds']:.0f} s). Preset "
        f"`{settings['preset']}`, context {settings['context_length']}, learning rates {settings['learning_rates']} "
        f"(the one of the lowest validation loss kept, for FT and PTF alike), seeds {settings['seeds']}. Test MSE / MAE "
        "on scaled values, mean ± std over seeds; the lowest of each cell in bold. Prune only and PTF: the prune run "
        f"at ratio_per_epoch {settings['ratio_per_epoch']} keeps the mask set of the lowest validation loss, the "
        "unpruned model (step 0) included.",
        "",
        "| dataset | H | " + " | ".join(f"{m} MSE | {m} MAE" for m in METHODS) + " | params dense → PTF | sparsity |",
        "|---|---|" + "---|---|" * len(METHODS) + "---|---|",
    ]
    for cell in results["cells"]:
        summary = summarise(cell)
        best = {m: min(summary[k][m][0] for k in METHODS) for m in ("mse", "mae")}
        row = [cell["dataset"], str(cell["horizon"])]
        for method in METHODS:
            for metric in ("mse", "mae"):
                row.append(fmt(summary[method][metric], summary[method][metric][0] == best[metric]))
        row.append(f"{cell['params']:,} → {summary['params_after'][0]:,.0f}")
        row.append(fmt(summary["sparsity"], False))
        lines.append("| " + " | ".join(row) + " |")
    if not all(cell["model_has_dropout"] for cell in results["cells"]):
        lines += ["", "FT (dropout off) equals FT where the model has no dropout (the same run, reported twice)."]
    lines += [
        "",
        "Per cell and seed: PTF vs FT test MSE (PTF ≤ FT?), and the prune run's kept mask set.",
        "",
        "| dataset | H | seed | FT | PTF | PTF ≤ FT | kept step | sparsity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in results["cells"]:
        for run in cell["seeds"]:
            ft, ptf = run["ft"]["test_mse"], run["ptf"]["test_mse"]
            lines.append(
                f"| {cell['dataset']} | {cell['horizon']} | {run['seed']} | {ft:.4f} | {ptf:.4f} | "
                f"{'yes' if ptf <= ft else 'no'} | {run['prune']['best_step']} | {run['prune']['sparsity']:.3f} |"
            )
    few = [(cell, entry) for cell in results["cells"] for entry in cell.get("few_shot", [])]
    if few:
        lines += ["", "## Few-shot (the last fraction of the training windows; first seed)", "",
                  "| dataset | H | train fraction | train windows | FT MSE | PTF MSE | PTF sparsity |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for cell, entry in few:
            ft, ptf = entry["ft"]["test_mse"], entry["ptf"]["test_mse"]
            lines.append(
                f"| {cell['dataset']} | {cell['horizon']} | {entry['train_fraction']} | {entry['train_windows']} | "
                f"{fmt((ft, 0), ft <= ptf)} | {fmt((ptf, 0), ptf <= ft)} | {entry['sparsity']:.3f} |"
            )
    controls = next((cell["controls"] for cell in results["cells"] if "controls" in cell), None)
    if controls:
        lines += ["", controls_markdown(controls)]
    return "\n".join(lines) + "\n"


def controls_table(controls: dict) -> dict:
    """(target sparsity, method) -> mean/std of validation and test MSE and the actual sparsity over seeds."""
    table = {}
    for row in controls["rows"]:
        table.setdefault((row["target"], row["method"]), []).append(row)
    return {
        key: {
            "validation_mse": mean_std([r["validation_mse"] for r in rows]),
            "test_mse": mean_std([r["test_mse"] for r in rows]),
            "sparsity": mean_std([r["sparsity"] for r in rows]),
            "runs": len(rows),
        }
        for key, rows in table.items()
    }


def controls_markdown(controls: dict) -> str:
    table = controls_table(controls)
    lines = [
        f"## Controls: prune only at equal sparsity ({controls['dataset']}, H={controls['horizon']})",
        "",
        "One prune run per importance and seed to the largest sparsity in one epoch; each row scores the first mask "
        "set at or above its sparsity (no finetuning). Weight magnitude ignores the data and the seed: one run. "
        f"Test MSE over every {controls['test_every']}-th test window.",
        "",
        "| sparsity | importance | runs | actual sparsity | validation MSE | test MSE | beats random (validation) |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in sorted({t for t, _ in table}):
        random_validation = table.get((target, "random"), {}).get("validation_mse", (float("nan"), 0))[0]
        for method in CONTROLS:
            if (target, method) not in table:
                continue
            entry = table[(target, method)]
            beats = "–" if method == "random" else ("yes" if entry["validation_mse"][0] < random_validation else "no")
            lines.append(
                f"| {target:.0%} | {method} | {entry['runs']} | {entry['sparsity'][0]:.3f} | "
                f"{fmt(entry['validation_mse'], False)} | {fmt(entry['test_mse'], False)} | {beats} |"
            )
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    from matplotlib.figure import Figure

    cells = results["cells"]
    controls = next((cell["controls"] for cell in cells if "controls" in cell), None)
    figure = Figure(figsize=(13, 4.2), layout="constrained")
    axes = figure.subplots(1, 3 if controls else 2, width_ratios=[3, 1, 2] if controls else [3, 1])
    labels = [f"{c['dataset']}\nH={c['horizon']}" for c in cells]
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        means, stds = zip(*(summarise(c)[method]["mse"] for c in cells))
        xs = [x + (i - (len(METHODS) - 1) / 2) * width for x in range(len(cells))]
        axes[0].bar(xs, means, width, yerr=stds, label=method, capsize=2)
    axes[0].set_xticks(range(len(cells)), labels)
    axes[0].set_ylabel("test MSE (scaled)")
    axes[0].set_title("test MSE per method (mean ± std over seeds)")
    low = min(min(summarise(c)[m]["mse"][0] for m in METHODS) for c in cells)
    high = max(max(summarise(c)[m]["mse"][0] for m in METHODS) for c in cells)
    axes[0].set_ylim(low - 0.15 * (high - low + 1e-9) - 0.02, high + 0.1 * (high - low + 1e-9) + 0.01)
    axes[0].legend(fontsize=8, ncols=3)
    sparsity = [summarise(c)["sparsity"] for c in cells]
    axes[1].bar(range(len(cells)), [s[0] for s in sparsity], yerr=[s[1] for s in sparsity], color="tab:purple")
    axes[1].set_xticks(range(len(cells)), labels)
    axes[1].set_ylabel("fraction of channels removed")
    axes[1].set_title("PTF sparsity (selected)")
    if controls:
        table = controls_table(controls)
        for method in CONTROLS:
            points = sorted((t, v["validation_mse"]) for (t, m), v in table.items() if m == method)
            if points:
                axes[2].errorbar([p[0] for p in points], [p[1][0] for p in points], yerr=[p[1][1] for p in points],
                                 marker="o", capsize=3, label=method)  # fmt: skip
        axes[2].set_xlabel("sparsity")
        axes[2].set_ylabel("validation MSE, prune only")
        axes[2].set_title(f"controls ({controls['dataset']}, H={controls['horizon']})")
        axes[2].legend(fontsize=8)
    figure.savefig(path, dpi=110)


def write(results: dict, output_dir: str, name: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1)
    if results["cells"] and all(cell["seeds"] for cell in results["cells"]):
        with open(os.path.join(output_dir, f"{name}.md"), "w") as f:
            f.write(markdown(results))
        plot(results, os.path.join(output_dir, f"{name}.png"))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model_name_or_path", default=REFERENCE_MODEL_DIR, help="folder or Hub id")
    parser.add_argument("--datasets", nargs="+", default=["ETTh1"])
    parser.add_argument("--horizons", type=int, nargs="+", default=[96])
    parser.add_argument("--full", action="store_true", help=f"{', '.join(FULL_DATASETS)} x {FULL_HORIZONS}")
    parser.add_argument("--data_dir", default=None, help="folder of the benchmark files (ETTh1 is bundled)")
    parser.add_argument("--context_length", type=int, default=512)
    parser.add_argument("--preset", default="quick", help="the recipes' preset (strides, eval steps, epochs)")
    parser.add_argument("--finetune_epochs", type=float, default=2.0)
    parser.add_argument("--train_stride", type=int, default=32, help="steps between training windows")
    parser.add_argument("--validation_stride", type=int, default=32, help="steps between validation windows")
    parser.add_argument("--eval_steps", type=int, default=15, help="validation every N optimizer steps")
    parser.add_argument(
        "--controls_test_every", type=int, default=8, help="the controls score every N-th test window (1: all)"
    )
    parser.add_argument("--ratio_per_epoch", type=float, default=0.3)
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-4, 5e-4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--train_fractions", type=float, nargs="*", default=[0.1], help="few-shot cells (first seed)")
    parser.add_argument("--control_sparsities", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--controls_cell", default=None, help="dataset:horizon of the controls (default: first cell)")
    parser.add_argument("--skip_controls", action="store_true")
    parser.add_argument("--batch_size", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--output_name", default="accuracy")
    opts = parser.parse_args(argv)
    if opts.full:
        opts.datasets, opts.horizons = FULL_DATASETS, FULL_HORIZONS
    return opts


def main(argv: list[str] | None = None) -> dict:
    opts = parse(argv)
    start = time.time()
    cells = [(d, h) for d in opts.datasets for h in opts.horizons]
    controls_cell = cells[0] if opts.controls_cell is None else (
        opts.controls_cell.split(":")[0], int(opts.controls_cell.split(":")[1])
    )  # fmt: skip
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results = {
        "command": "python benchmarks/accuracy.py"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": f"{device}, {platform.machine()}, {threads} thread(s), torch {torch.__version__}",
        "settings": {k: v for k, v in vars(opts).items() if k not in ("output_dir",)},
        "cells": [],
        "wall_seconds": 0.0,
    }
    results["settings"]["model_name_or_path"] = opts.model_name_or_path
    with tempfile.TemporaryDirectory(prefix="hf_tsprune-accuracy-") as scratch:
        for index, (dataset, horizon) in enumerate(cells):
            log(f"cell {index + 1}/{len(cells)}: {dataset} H={horizon}", start)
            folder = os.path.join(scratch, f"{dataset}-{horizon}")
            controls = not opts.skip_controls and (dataset, horizon) == controls_cell
            results["cells"].append(run_cell(opts, dataset, horizon, folder, start, controls))
            results["wall_seconds"] = time.time() - start
            write(results, opts.output_dir, opts.output_name)
    print(markdown(results))
    log(f"done: {opts.output_dir}/{opts.output_name}.{{json,md,png}}", start)
    return results


if __name__ == "__main__":
    main()
