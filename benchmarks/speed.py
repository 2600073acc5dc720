"""Dense vs shrunk forecast latency, FLOP ratios, and the cost of a prune-run step, per architecture.

    python benchmarks/speed.py                                   # every released layout, ~50% pruned
    python benchmarks/speed.py --models chronos chronos_bolt ttm  # needs chronos-forecasting, granite-tsfm
    python benchmarks/speed.py --models patchtst timesfm --repeats 5 --output_dir benchmarks/results

For each architecture's default config (the released layout, random weights) the script prunes about 50% of the
prunable units — half of each attention layer's key/value heads and half of each feed-forward block's channels, chosen
at random — and shrinks the model. It then measures, on CPU:

- forecast latency of the dense and the shrunk model at batch 1 and batch 64 (warm-up, then the median of repeats),
  next to the FLOP ratio counted by `torch.utils.flop_counter`;
- one prune-run step (masks installed, weights frozen: forward, backward, Taylor-score update) against one dense
  finetune step (forward, backward, AdamW step) on the same batch, with the peak resident memory of each, measured in
  a fresh subprocess per step kind.

Chronos, Chronos-Bolt and TTM use the released layouts written out in `tests/families.py` (chronos-t5-small,
chronos-bolt-small, TTM r2 512-96). Chronos' forecast here is one teacher-forced forward over the horizon's tokens
(the logits it samples from), not autoregressive sampling; its training step is the token cross-entropy, Chronos-Bolt's
the quantile loss and TTM's the MSE (`hf_tsprune.training.training_inputs`).

Prints a markdown table and writes `speed.json` and `speed.md` in `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hf_tsprune import PruningConfig, TaylorScorer, get_spec, install_masks, shrink
from hf_tsprune.adapters import family_of, get_adapter
from hf_tsprune.masks import describe_groups
from hf_tsprune.training import training_inputs


def released_layout(name: str):
    """A builder of a family whose released layout is written out in `tests/families.py` (needs its package)."""

    def build_model() -> torch.nn.Module:
        import importlib.util

        path = Path(__file__).resolve().parent.parent / "tests" / "families.py"
        spec = importlib.util.spec_from_file_location("hf_tsprune_test_families", path)
        families = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(families)
        return families.DEFAULT[name]()

    return build_model


BUILDERS = {
    "timesfm": ("TimesFmConfig", "TimesFmModelForPrediction"),
    "timesfm2_5": ("TimesFm2_5Config", "TimesFm2_5ModelForPrediction"),
    "patchtst": ("PatchTSTConfig", "PatchTSTForPrediction"),
    "patchtsmixer": ("PatchTSMixerConfig", "PatchTSMixerForPrediction"),
    "chronos": released_layout("chronos"),
    "chronos_bolt": released_layout("chronos_bolt"),
    "ttm": released_layout("ttm"),
}
"""Name -> transformers (config class, model class) names built with their defaults, or a builder function."""

PACKAGES = {"chronos": "chronos", "chronos_bolt": "chronos", "ttm": "tsfm_public"}
"""Optional packages a family needs (its model class, or Chronos' tokenizer for the training step)."""


def available(name: str) -> bool:
    import importlib.util

    return name not in PACKAGES or importlib.util.find_spec(PACKAGES[name]) is not None


def build(name: str) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    if callable(BUILDERS[name]):
        return BUILDERS[name]().eval()
    config_cls, model_cls = (getattr(transformers, n) for n in BUILDERS[name])
    return model_cls(config_cls()).eval()


def half_masks(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Half of each attention layer's key/value heads and half of each feed-forward block's channels, at random."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for group in describe_groups(model):
        if group.group.kind == "attention":
            heads = torch.ones(group.num_kv_heads, dtype=torch.bool)
            heads[torch.randperm(group.num_kv_heads, generator=generator)[: group.num_kv_heads // 2]] = False
            masks[group.name] = heads.repeat_interleave(group.head_dim)
        else:
            keep = torch.ones(group.num_units, dtype=torch.bool)
            keep[torch.randperm(group.num_units, generator=generator)[: group.num_units // 2]] = False
            masks[group.name] = keep
    return masks


def loss_inputs(model: torch.nn.Module, batch_size: int) -> dict:
    """Forward arguments for one training step with the family's own loss."""
    if family_of(model) in ("chronos", "chronos_bolt", "ttm"):  # tokenised / masked targets: the collator's inputs
        adapter = get_adapter(model)
        context, horizon = adapter.max_context(model), adapter.native_horizon(model)
        channels = 1 if adapter.univariate else int(model.config.num_input_channels)
        generator = torch.Generator().manual_seed(0)
        series = torch.randn(batch_size, context + horizon, channels, generator=generator).cumsum(1) + 10
        features = [{"past_values": s[:context], "future_values": s[context:]} for s in series]
        return training_inputs(model, features)
    inputs = get_spec(model).example_inputs(model, batch_size, generator=torch.Generator().manual_seed(0))
    inputs["future_values"] = targets(model, batch_size)
    return inputs


def targets(model: torch.nn.Module, batch_size: int) -> torch.Tensor:
    config = model.config
    if config.model_type.startswith("timesfm"):
        return torch.randn(batch_size, config.horizon_length)
    return torch.randn(batch_size, config.prediction_length, config.num_input_channels)


@torch.no_grad()
def latency(model: torch.nn.Module, inputs: dict, repeats: int, warmup: int = 1) -> float:
    spec = get_spec(model)
    for _ in range(warmup):
        spec.forecast(model, inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        spec.forecast(model, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_worker(name: str, kind: str, batch_size: int, repeats: int) -> dict:
    """Times one training step of `kind` ("prune" or "finetune") in this (fresh) process."""
    model = build(name).train()
    inputs = loss_inputs(model, batch_size)
    if kind == "prune":
        groups = install_masks(model)
        scorer = TaylorScorer(PruningConfig(), [g.num_units for g in groups], [g.unit_cost for g in groups],
                              [g.group.kind == "mlp" for g in groups])  # fmt: skip

        def step():
            model(**inputs).loss.backward()
            scorer.update([g.mask.grad for g in groups], [g.mask for g in groups])
            for g in groups:
                g.mask.grad = None
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (also allocates optimizer state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_rss_mib": peak_rss_kib() / 1024}


def peak_rss_kib() -> int:
    """This process's peak resident memory (`VmHWM`). Not `ru_maxrss`: Linux carries that across `execve` from the
    forking parent, so a small child would report the benchmark's own footprint."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def run_step(name: str, kind: str, batch_size: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--_step", name, kind, str(batch_size), str(repeats)]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark(name: str, repeats: int, step_batch: int) -> dict:
    model = build(name)
    spec = get_spec(model)
    result = {"model": type(model).__name__}
    inputs = {b: spec.example_inputs(model, b, generator=torch.Generator().manual_seed(0)) for b in (1, 64)}
    dense = {b: latency(model, inputs[b], repeats) for b in (1, 64)}
    install_masks(model)
    plan = shrink(model, half_masks(model), example_inputs=inputs[1])
    shrunk = {b: latency(model, inputs[b], repeats) for b in (1, 64)}
    flop_ratio = plan.flops_before / plan.flops_after
    result.update(
        params_before=plan.params_before,
        params_after=plan.params_after,
        unit_sparsity=plan.sparsity,
        flops_before=plan.flops_before,
        flops_after=plan.flops_after,
        flop_ratio=flop_ratio,
        max_rel_error=plan.max_rel_error,
    )
    for b in (1, 64):
        result[f"dense_ms_b{b}"] = 1e3 * dense[b]
        result[f"shrunk_ms_b{b}"] = 1e3 * shrunk[b]
        result[f"speedup_b{b}"] = dense[b] / shrunk[b]
    result["speedup_over_flop_ratio_b64"] = result["speedup_b64"] / flop_ratio
    del model
    prune, finetune = (run_step(name, k, step_batch, repeats) for k in ("prune", "finetune"))
    result.update(
        step_batch=step_batch,
        prune_step_ms=1e3 * prune["seconds"],
        finetune_step_ms=1e3 * finetune["seconds"],
        prune_over_finetune_time=prune["seconds"] / finetune["seconds"],
        prune_step_peak_rss_mib=prune["peak_rss_mib"],
        finetune_step_peak_rss_mib=finetune["peak_rss_mib"],
        prune_over_finetune_memory=prune["peak_rss_mib"] / finetune["peak_rss_mib"],
    )
    return result


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | params dense → shrunk | FLOP ratio | speed-up b1 | speed-up b64 | b64 speed-up / FLOP ratio | "
        "prune step / finetune step (time) | (peak memory) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['params_before'] / 1e6:.2f}M → {r['params_after'] / 1e6:.2f}M | {r['flop_ratio']:.2f}× | "
            f"{r['speedup_b1']:.2f}× ({r['dense_ms_b1']:.1f} → {r['shrunk_ms_b1']:.1f} ms) | "
            f"{r['speedup_b64']:.2f}× ({r['dense_ms_b64']:.0f} → {r['shrunk_ms_b64']:.0f} ms) | "
            f"{r['speedup_over_flop_ratio_b64']:.2f} | {r['prune_over_finetune_time']:.2f} "
            f"({r['prune_step_ms']:.0f} vs {r['finetune_step_ms']:.0f} ms) | {r['prune_over_finetune_memory']:.2f} "
            f"({r['prune_step_peak_rss_mib']:.0f} vs {r['finetune_step_peak_rss_mib']:.0f} MiB) |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=[n for n in BUILDERS if available(n)], choices=list(BUILDERS),
        help="default: every family whose packages are installed",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step_batch", type=int, default=16, help="batch size of the prune/finetune step timing")
    parser.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--_step", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._step:
        name, kind, batch, repeats = args._step
        print(json.dumps(step_worker(name, kind, int(batch), int(repeats))))
        return
    torch.manual_seed(0)
    results = []
    for name in args.models:
        print(f"benchmarking {name} ...", flush=True)
        results.append(benchmark(name, args.repeats, args.step_batch))
    table = markdown(results)
    print(table)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    (out / "speed.json").write_text(json.dumps({"environment": meta, "results": results}, indent=2))
    (out / "speed.md").write_text(f"CPU, {meta['threads']} threads, torch {meta['torch']}\n\n{table}\n")


if __name__ == "__main__":
    main()
