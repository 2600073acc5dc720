"""Dense vs shrunk forecast latency, FLOP ratios, and the cost of a prune-run step, per architecture.

    python benchmarks/speed.py                                     # a released layout per family, ~50% pruned
    python benchmarks/speed.py --models all                        # every released layout (larger Moirai, Time-MoE)
    python benchmarks/speed.py --models chronos chronos_bolt ttm    # needs chronos-forecasting, granite-tsfm
    python benchmarks/speed.py --round_to 1 8 --value_channels --pruned_fraction 0.45  # does round_to buy speed?
    python benchmarks/speed.py --macro_batch 8192 --models timesfm2_5 chronos_bolt  # the paper's prune-run step
    python benchmarks/speed.py --device cuda --dtype bfloat16         # on a GPU: speed-cuda.json / speed-cuda.md
    python benchmarks/speed.py --compare run1.json run2.json       # every ratio of two runs: speed-reproducibility.*
    python benchmarks/speed.py --report run.json macro.json        # collate runs as the sections of one speed.md
    python benchmarks/speed.py --profile --models ttm --batch_sizes 1   # per-operator time, dense vs shrunk

For each architecture's default config (the released layout, random weights) the script prunes about 50% of the
prunable units — half of each attention layer's key/value heads and half of each feed-forward block's channels, chosen
at random — and shrinks a copy of the model. It then measures:

- forecast latency of the dense and the shrunk model at batch 1 and batch 64, timed interleaved (dense, shrunk,
  shrunk, dense, ... after warm-up, on a fixed number of intra-op threads, `--threads`, default 1), at least
  `--min_pairs` pairs and `--min_seconds` (1 s: a sub-millisecond forecast gets hundreds of pairs), then until the
  interquartile range of the per-pair speed-ups is within 3% of their median or the time budget is spent; the
  speed-up reported is the median of the per-pair speed-ups with its interquartile range and the number of pairs,
  next to the FLOP ratio counted by `torch.utils.flop_counter`. "Never slower" means the third quartile of the
  speed-ups is at least 1;
- one prune-run step (masks installed, weights frozen: forward, backward, Taylor-score update) against one dense
  finetune step (forward, backward, AdamW step) on the same batch: both built in one fresh subprocess and timed
  interleaved (prune, finetune, finetune, prune, ...), the ratio the median of the per-pair ratios with its
  interquartile range, so that a difference between two processes does not enter it (Timer-XL's ratio still moves
  between runs, 0.48 to 0.55: see `run_interleaved_steps`); the peak memory of each (resident memory on CPU,
  allocated memory on CUDA) in a fresh subprocess per step kind. With `--macro_batch N`, also one optimizer step over
  N windows through gradient accumulation of `--macro_micro_batch` windows at a time (the paper's macro batch is
  8192) for `--macro_models`, warmed up by one micro-batch, each kind timed once in its fresh subprocess.

Chronos, Chronos-Bolt and TTM use the released layouts written out in `tests/families.py` (chronos-t5-small,
chronos-bolt-small, TTM r2 512-96), Chronos-2 the 120 M widths of `tests/test_chronos2.py` (context 512), Moirai 1.0-R small/base/large, Moirai-MoE 1.0-R
small/base and Moirai 2.0-R small the layouts of `tests/test_moirai*.py` (context 512, horizon 96; Moirai-2: 64),
Timer-XL the `thuml/timer-base-84m` layout (hf_tsprune's own implementation, `hf_tsprune.models.timer_xl`; context of
8 patches of 96, its one head of 96; half of each kept head's rotary query/key pairs go too), Sundial the
`thuml/sundial-base-128m` layout (`hf_tsprune.models.sundial`; context of 32 patches of 16; its forecast is 2 sampled
trajectories of 720 values with 50 flow steps, the noise seeded; heads, rotary pairs and feed-forward channels as
Timer-XL's, the flow head, an optional group, whole), Time-MoE the TimeMoE-50M and -200M layouts of
`tests/test_time_moe.py` (`hf_tsprune.models.time_moe`; its forecast row is one forward over 512 points with its
longest head, its training step the multi-horizon Huber loss on 512 + 96 points; half of the heads, rotary pairs and
SwiGLU channels of every expert, of the shared expert and of the attention go, every expert stays). Chronos' forecast here is one teacher-forced forward over the horizon's tokens
(the logits it samples from), not autoregressive sampling; its training step is the token cross-entropy, Chronos-Bolt's
the quantile loss and TTM's the MSE (`hf_tsprune.training.training_inputs`).

Prints markdown tables and writes `speed.json` and `speed.md` (`speed-cuda.*` on a GPU) in `--output_dir`.
The committed `results/speed.md` is a `--report` of the last of three back-to-back runs (`speed-run7/8/9.json`), the
comparisons of runs 7 and 8 and of runs 8 and 9, the macro steps, the `round_to` check and the profiles; the commands
that made each are in their sections.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hf_tsprune import PruningConfig, TaylorScorer, get_family, get_spec, install_masks, shrink
from hf_tsprune.adapters import family_of, get_adapter
from hf_tsprune.masks import describe_groups
from hf_tsprune.training import training_inputs


def released_layout(name: str, filename: str = "families.py", build_released: Callable | None = None):
    """A builder of a family whose released layout is written out in a test file (needs its package): by default
    `tests/families.py`'s `DEFAULT[name]`, else `build_released(module)` of `tests/<filename>`."""

    def build_model() -> torch.nn.Module:
        import importlib.util

        tests = Path(__file__).resolve().parent.parent / "tests"
        sys.path.insert(0, str(tests))  # the test files import their helpers by name
        try:
            spec = importlib.util.spec_from_file_location(f"hf_tsprune_test_{Path(filename).stem}", tests / filename)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(tests))
        return build_released(module) if build_released else module.DEFAULT[name]()

    return build_model


def time_moe_released(size: str) -> Callable[[], torch.nn.Module]:
    """A builder of Time-MoE with the layout of `Maple728/TimeMoE-<size>` (`"50M"`: 12 layers, 12 heads, hidden 384,
    8 experts of 768 top-2, a shared expert of 1536; `"200M"`: hidden 768, experts of 1536, shared expert of 3072;
    `tests/test_time_moe.py`'s `RELEASED`), random weights."""

    def build_released(module) -> torch.nn.Module:
        from hf_tsprune.models.time_moe import TimeMoeConfig, TimeMoeForPrediction

        settings, _ = module.RELEASED[f"TimeMoE-{size}"]
        return TimeMoeForPrediction(TimeMoeConfig(**settings))

    return released_layout("time_moe", "test_time_moe.py", build_released)


def timer_xl_base() -> torch.nn.Module:
    """Timer-XL with the layout of `thuml/timer-base-84m` (8 layers, 8 heads, hidden 1024, intermediate 2048,
    patches of 96, one output head of 96; `tests/test_timer_xl_family.py`'s `RELEASED`), random weights."""
    from hf_tsprune.models.timer_xl import TimerConfig, TimerForPrediction

    config = TimerConfig(
        input_token_len=96, hidden_size=1024, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
        output_token_lens=[96], max_position_embeddings=10000,
    )  # fmt: skip
    return TimerForPrediction(config)


def sundial_base() -> torch.nn.Module:
    """Sundial with the layout of `thuml/sundial-base-128m` (12 layers, 12 heads, hidden 768, intermediate 3072,
    patches of 16, a flow head of 3 residual blocks forecasting 720 values with 50 sampling steps;
    `tests/test_sundial_family.py`'s `RELEASED`), random weights."""
    from hf_tsprune.models.sundial import SundialConfig, SundialForPrediction

    config = SundialConfig(
        input_token_len=16, hidden_size=768, intermediate_size=3072, output_token_lens=[720], num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=10000, flow_loss_depth=3, num_sampling_steps=50,
    )  # fmt: skip
    return SundialForPrediction(config)


STEP_CONTEXT = {"timer_xl": 8 * 96, "sundial": 32 * 16, "time_moe": 512}
"""Context of the training step for families whose limit is no window length (Timer-XL, Sundial: 10000 patches;
Time-MoE: 4096 points): that of their forecast rows (the spec's example inputs)."""

STEP_HORIZON = {"time_moe": 96}
"""Target of the training step for families whose native horizon is a rollout longer than a task's horizon (Time-MoE's
adapter rolls out 720 points): the shortest horizon of the long-term benchmarks."""

MOIRAI_FORECAST = {"prediction_length": 96, "context_length": 512, "patch_size": 32}
"""The forecast the Moirai rows time (Moirai-MoE: patches of 16, its only size; Moirai-2: 64 steps in one pass)."""

BUILDERS = {
    "timesfm": ("TimesFmConfig", "TimesFmModelForPrediction"),
    "timesfm2_5": ("TimesFm2_5Config", "TimesFm2_5ModelForPrediction"),
    "patchtst": ("PatchTSTConfig", "PatchTSTForPrediction"),
    "patchtsmixer": ("PatchTSMixerConfig", "PatchTSMixerForPrediction"),
    "chronos": released_layout("chronos"),
    "chronos_bolt": released_layout("chronos_bolt"),
    "ttm": released_layout("ttm"),
    "chronos2": released_layout("chronos2", "test_chronos2.py", lambda module: module.build(module.RELEASED)),
    **{
        f"moirai_{size}": released_layout(
            "moirai", "test_moirai.py", lambda m, size=size: m.build(m.MOIRAI_1_0_R[size], forecast=MOIRAI_FORECAST)
        )
        for size in ("small", "base", "large")
    },
    **{
        f"moirai_moe_{size}": released_layout(
            "moirai_moe",
            "test_moirai_moe.py",
            lambda m, size=size: m.build(m.MOIRAI_MOE_1_0_R[size], forecast={**MOIRAI_FORECAST, "patch_size": 16}),
        )  # fmt: skip
        for size in ("small", "base")
    },
    "moirai2_small": released_layout(
        "moirai2",
        "test_moirai2.py",
        lambda m: m.build(m.MOIRAI_2_0_R_SMALL, forecast={"prediction_length": 64, "context_length": 512}),
    ),  # fmt: skip
    "timer_xl": timer_xl_base,
    "sundial": sundial_base,
    "time_moe_50m": time_moe_released("50M"),
    "time_moe_200m": time_moe_released("200M"),
}
"""Name -> transformers (config class, model class) names built with their defaults, or a builder function."""

LARGER_LAYOUTS = ("moirai_base", "moirai_large", "moirai_moe_base", "time_moe_200m")
"""Layouts of a family that already has a smaller row in the default run (`--models all` adds them): the default
run times one released layout per family, the smallest, so that it fits twice in an hour on 2 CPU cores."""

PACKAGES = {"chronos": "chronos", "chronos_bolt": "chronos", "chronos2": "chronos", "ttm": "tsfm_public"}
PACKAGES.update({name: "uni2ts" for name in BUILDERS if name.startswith("moirai")})
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


def half_masks(
    model: torch.nn.Module, seed: int = 0, whole_heads: bool = True, fraction: float = 0.5
) -> dict[str, torch.Tensor]:
    """Half of each attention layer's key/value heads (`whole_heads`), and `fraction` of every other group's units (its
    feed-forward channels, rotary query/key pairs, or with `whole_heads=False` its value channels: then the kept
    heads' value head dimension is the largest kept count), at random. A `fraction` other than 0.5 leaves widths that
    are no round numbers (2048 channels, 0.45: 1127 kept), which is what `round_to` is for."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for group in describe_groups(model):
        if group.kind == "attention" and whole_heads:  # (rotary query/key pairs: half of them, at random)
            heads = torch.ones(group.num_kv_heads, dtype=torch.bool)
            heads[torch.randperm(group.num_kv_heads, generator=generator)[: group.num_kv_heads // 2]] = False
            masks[group.name] = heads.repeat_interleave(group.head_dim)
        else:
            keep = torch.ones(group.num_units, dtype=torch.bool)
            keep[torch.randperm(group.num_units, generator=generator)[: int(group.num_units * fraction)]] = False
            masks[group.name] = keep
    return masks


def dense_and_shrunk(name: str, *, whole_heads: bool = True, fraction: float = 0.5, round_to: int = 1):
    """The dense model `name`, a shrunk copy (`half_masks`), its spec and the shrink plan."""
    dense = build(name)
    spec = get_spec(dense)
    example = spec.example_inputs(dense, 1, generator=torch.Generator().manual_seed(0))
    shrunk = copy.deepcopy(dense)
    install_masks(shrunk)
    masks = half_masks(shrunk, whole_heads=whole_heads, fraction=fraction)
    plan = shrink(shrunk, masks, example_inputs=example, round_to=round_to)
    return dense, shrunk, spec, plan


def loss_inputs(model: torch.nn.Module, batch_size: int) -> dict:
    """Forward arguments for one training step with the family's own loss."""
    if family_of(model) not in ("timesfm", "timesfm2_5", "patchtst", "patchtsmixer"):  # the collator's inputs
        # (tokenised or masked targets)
        adapter = get_adapter(model)
        context = STEP_CONTEXT.get(family_of(model)) or adapter.max_context(model)
        horizon = STEP_HORIZON.get(family_of(model)) or adapter.native_horizon(model)
        channels = adapter.num_input_channels(model) or 1
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


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def timed_pairs(
    run_first: Callable[[], object],
    run_second: Callable[[], object],
    *,
    warmup: int = 2,
    min_pairs: int = 7,
    max_pairs: int = 400,
    max_seconds: float = 60.0,
    min_seconds: float = 0.0,
    target_spread: float = 0.03,
    synchronize: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Times two callables interleaved (first, second, second, first, ...: each pair in alternating order, so that a
    drift of the machine's speed hits both alike) after `warmup` calls of each.

    Pairs are timed until the interquartile range of the per-pair time ratios is at most `target_spread` of their
    median (and at least `min_pairs` pairs and `min_seconds` have gone), or `max_pairs` / `max_seconds` is reached.

    Returns:
        The seconds of each call of `run_first` and of `run_second`, pair by pair.
    """
    sync = synchronize or (lambda: None)

    def timed(run) -> float:
        sync()
        start = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - start

    for _ in range(warmup):
        timed(run_first)
        timed(run_second)
    first, second, started = [], [], time.perf_counter()
    while len(first) < max_pairs:
        if len(first) % 2 == 0:
            first.append(timed(run_first))
            second.append(timed(run_second))
        else:
            second.append(timed(run_second))
            first.append(timed(run_first))
        elapsed = time.perf_counter() - started
        if len(first) >= min_pairs and elapsed >= min_seconds:
            q1, median, q3 = _quartiles([a / b for a, b in zip(first, second)])
            if (q3 - q1) <= target_spread * median or elapsed > max_seconds:
                break
    return first, second


def interleaved_timing(run_dense: Callable[[], object], run_shrunk: Callable[[], object], **timing) -> dict:
    """Dense against shrunk, timed interleaved (`timed_pairs`, which takes the `timing` keywords).

    Returns:
        `{"dense_ms", "dense_iqr_ms", "shrunk_ms", "shrunk_iqr_ms", "speedup", "speedup_q1", "speedup_q3", "pairs"}`:
        medians and interquartile ranges of the times, and the median and quartiles of the per-pair speed-ups
        (dense time / shrunk time of the same pair).
    """
    dense, shrunk = timed_pairs(run_dense, run_shrunk, **timing)
    ratio_q1, ratio, ratio_q3 = _quartiles([d / s for d, s in zip(dense, shrunk)])
    (d1, dense_ms, d3), (s1, shrunk_ms, s3) = _quartiles(dense), _quartiles(shrunk)
    return {
        "dense_ms": 1e3 * dense_ms,
        "dense_iqr_ms": 1e3 * (d3 - d1),
        "shrunk_ms": 1e3 * shrunk_ms,
        "shrunk_iqr_ms": 1e3 * (s3 - s1),
        "speedup": ratio,
        "speedup_q1": ratio_q1,
        "speedup_q3": ratio_q3,
        "pairs": len(dense),
    }


def to_device(inputs: dict, device: str, dtype: torch.dtype) -> dict:
    """Tensors of `inputs` on `device`; floating ones in `dtype`."""
    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        moved[key] = value
    return moved


def synchronizer(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def optimizer_step(
    name: str, kind: str, batch_size: int, accumulate: int = 1, device: str = "cpu", dtype: str = "float32"
) -> Callable[..., None]:
    """One optimizer step of `kind` ("prune" or "finetune") on a freshly built `name`, as a callable: `accumulate`
    micro-batches of `batch_size` windows (forward + backward each; gradient accumulation gives the macro batch), then
    the Taylor score update (prune: weights frozen, gradients reach only the masks) or the AdamW step (finetune).
    `step(micro_batches)` runs that many micro-batches instead (the warm-up runs one)."""
    torch_dtype = getattr(torch, dtype)
    model = build(name).to(device=device, dtype=torch_dtype).train()
    inputs = to_device(loss_inputs(model, batch_size), device, torch_dtype)
    if kind == "prune":
        groups = install_masks(model)
        scorer = TaylorScorer(PruningConfig(), [g.num_units for g in groups], [g.unit_cost for g in groups],
                              [g.group.kind == "mlp" for g in groups])  # fmt: skip

        def step(micro_batches: int = accumulate):
            for _ in range(micro_batches):
                model(**inputs)["loss"].backward()  # (a ModelOutput, or the dict of a wrapper such as Moirai's)
            scorer.update([g.mask.grad for g in groups], [g.mask for g in groups])
            for g in groups:
                g.mask.grad = None
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step(micro_batches: int = accumulate):
            for _ in range(micro_batches):
                model(**inputs)["loss"].backward()  # (a ModelOutput, or the dict of a wrapper such as Moirai's)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def step_worker(
    name: str,
    kind: str,
    batch_size: int,
    repeats: int,
    accumulate: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    min_seconds: float = 0.0,
) -> dict:
    """Times `optimizer_step(name, kind, ...)` in this (fresh) process: a warm-up of one micro-batch and the score
    update or the AdamW step (which allocates its state), then at least `repeats` steps, more until they add up to
    `min_seconds`. Returns the median time, the process's peak memory and the number of steps timed."""
    step = optimizer_step(name, kind, batch_size, accumulate, device, dtype)
    sync = synchronizer(device) or (lambda: None)
    step(1)  # warm-up: one micro-batch, then the score update or the AdamW step (which allocates its state)
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 1000):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_kib() / 1024
    return {"seconds": statistics.median(times), "peak_mib": peak, "repeats": len(times)}


def interleaved_steps(
    name: str,
    batch_size: int,
    *,
    min_pairs: int = 3,
    min_seconds: float = 10.0,
    max_seconds: float = 60.0,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """The prune step against the dense finetune step of `name` at `batch_size` windows, both built in this process and
    timed interleaved (`timed_pairs`: prune, finetune, finetune, prune, ...), so that the ratio of the two does
    not carry the difference between two processes. Pairs go on until `min_seconds` (both kinds together) and
    `min_pairs`, then until the spread of the per-pair ratios is small or `max_seconds` is reached.

    Returns:
        `{"prune_ms", "finetune_ms", "ratio", "ratio_q1", "ratio_q3", "pairs"}`: the median step times, and the median
        and quartiles of the per-pair prune / finetune time ratios.
    """
    prune, finetune = timed_pairs(
        optimizer_step(name, "prune", batch_size, device=device, dtype=dtype),
        optimizer_step(name, "finetune", batch_size, device=device, dtype=dtype),
        warmup=1, min_pairs=min_pairs, min_seconds=min_seconds, max_seconds=max_seconds,
        synchronize=synchronizer(device),
    )  # fmt: skip
    ratio_q1, ratio, ratio_q3 = _quartiles([p / f for p, f in zip(prune, finetune)])
    return {
        "prune_ms": 1e3 * statistics.median(prune),
        "finetune_ms": 1e3 * statistics.median(finetune),
        "ratio": ratio,
        "ratio_q1": ratio_q1,
        "ratio_q3": ratio_q3,
        "pairs": len(prune),
    }


def peak_rss_kib() -> int:
    """This process's peak resident memory (`VmHWM`). Not `ru_maxrss`: Linux carries that across `execve` from the
    forking parent, so a small child would report the benchmark's own footprint."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def in_fresh_process(worker: str, *arguments: object) -> dict:
    """This script's hidden `--<worker>` mode (`_step` or `_steps`) in a fresh subprocess on the same thread count:
    the json it prints last."""
    cmd = [sys.executable, __file__, f"--{worker}", *map(str, arguments), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_step(
    name: str, kind: str, batch_size: int, repeats: int, accumulate: int, device: str, dtype: str, min_seconds: float
) -> dict:
    """`step_worker` in a fresh subprocess (its peak memory is the step's alone)."""
    return in_fresh_process("_step", name, kind, batch_size, repeats, accumulate, device, dtype, min_seconds)


def run_interleaved_steps(
    name: str, batch_size: int, min_pairs: int, min_seconds: float, max_seconds: float, device: str, dtype: str
) -> dict:
    """`interleaved_steps` in a fresh subprocess. Timed in the benchmark's own process, after the forecast timings of
    the same model, the TimesFM 2.5 prune / finetune ratio came out 0.63 and 0.52 in two runs, against 0.48 to 0.52
    in three fresh processes. The fresh process does not remove every such effect: Timer-XL's ratio was 0.48 to 0.50
    in the 6 processes started by a benchmark that had not timed batch-64 forecasts before (or by none), and 0.48 to
    0.55 (4 of 5 over 0.52) in those started after it had; the cause is not isolated."""
    return in_fresh_process("_steps", name, batch_size, min_pairs, min_seconds, max_seconds, device, dtype)


def benchmark(
    name: str,
    *,
    batch_sizes: tuple[int, ...] = (1, 64),
    round_to: int = 1,
    whole_heads: bool = True,
    pruned_fraction: float = 0.5,
    timing: dict | None = None,
    step_batch: int = 16,
    min_step_pairs: int = 3,
    step_min_seconds: float = 5.0,
    macro_batch: int = 0,
    macro_micro_batch: int = 128,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """Dense vs shrunk forecast latency (interleaved, see `interleaved_timing`) at each batch size, FLOPs and
    parameters, and the prune-run step vs the dense finetune step (at `step_batch`, and at `macro_batch` windows
    through gradient accumulation of micro-batches of `macro_micro_batch` windows when given; `step_batch=0` skips
    the steps)."""
    torch_dtype = getattr(torch, dtype)
    dense, shrunk, spec, plan = dense_and_shrunk(
        name, whole_heads=whole_heads, fraction=pruned_fraction, round_to=round_to
    )
    result = {"name": name, "model": type(dense).__name__, "family": get_family(dense).name, "round_to": round_to}
    result["masks"] = "whole heads" if whole_heads else "value channels"
    if pruned_fraction != 0.5:
        result["masks"] += f", {pruned_fraction:g} of the channels"
    result.update(
        params_before=plan.params_before,
        params_after=plan.params_after,
        unit_sparsity=plan.sparsity,
        flops_before=plan.flops_before,
        flops_after=plan.flops_after,
        flop_ratio=plan.flops_before / plan.flops_after,
        max_rel_error=plan.max_rel_error,
    )
    dense.to(device=device, dtype=torch_dtype)
    shrunk.to(device=device, dtype=torch_dtype)
    for batch in batch_sizes:
        inputs = to_device(
            spec.example_inputs(dense, batch, generator=torch.Generator().manual_seed(0)), device, torch_dtype
        )
        with torch.no_grad():
            measured = interleaved_timing(
                functools.partial(spec.forecast, dense, inputs),
                functools.partial(spec.forecast, shrunk, inputs),
                synchronize=synchronizer(device),
                **(timing or {}),
            )
        result.update({f"{key}_b{batch}": value for key, value in measured.items()})
        result[f"speedup_over_flop_ratio_b{batch}"] = measured["speedup"] / result["flop_ratio"]
        # never slower: a speed-up below 1 only within the measured spread
        result[f"never_slower_b{batch}"] = measured["speedup_q3"] >= 1.0
    del dense, shrunk
    steps = [(step_batch, 1)] if step_batch else []
    if macro_batch:
        steps.append((macro_micro_batch, -(-macro_batch // macro_micro_batch)))
    for batch, accumulate in steps:
        suffix = "" if accumulate == 1 else "_macro"
        try:  # the peak memory of each kind in a fresh process (at the macro batch: its one timed step as well)
            prune, finetune = (
                run_step(name, k, batch, 1, accumulate, device, dtype, 0.0) for k in ("prune", "finetune")
            )
        except subprocess.CalledProcessError as error:  # e.g. killed for memory: the latency figures still count
            result[f"step_error{suffix}"] = f"{batch * accumulate} windows: exit {error.returncode}"
            print(f"{name}: the step at {batch * accumulate} windows failed (exit {error.returncode})", flush=True)
            continue
        if accumulate == 1:  # short steps: both kinds in one more fresh process, timed interleaved
            steps_timed = run_interleaved_steps(
                name, batch, min_step_pairs, 2 * step_min_seconds, 6 * step_min_seconds, device, dtype
            )
        else:
            steps_timed = {"prune_ms": 1e3 * prune["seconds"], "finetune_ms": 1e3 * finetune["seconds"], "pairs": 1}
            steps_timed["ratio"] = prune["seconds"] / finetune["seconds"]
        result.update({
            f"step_batch{suffix}": batch * accumulate,
            f"prune_step_ms{suffix}": steps_timed["prune_ms"],
            f"finetune_step_ms{suffix}": steps_timed["finetune_ms"],
            f"prune_over_finetune_time{suffix}": steps_timed["ratio"],
            f"prune_step_peak_mib{suffix}": prune["peak_mib"],
            f"finetune_step_peak_mib{suffix}": finetune["peak_mib"],
            f"prune_over_finetune_memory{suffix}": prune["peak_mib"] / finetune["peak_mib"],
            f"step_pairs{suffix}": steps_timed["pairs"],
        })  # fmt: skip
        if "ratio_q1" in steps_timed:
            result[f"prune_over_finetune_time_q1{suffix}"] = steps_timed["ratio_q1"]
            result[f"prune_over_finetune_time_q3{suffix}"] = steps_timed["ratio_q3"]
    return result


def _speedup(r: dict, batch: int) -> str:
    return (
        f"{r[f'speedup_b{batch}']:.2f}× [{r[f'speedup_q1_b{batch}']:.2f}–{r[f'speedup_q3_b{batch}']:.2f}] "
        f"({r[f'dense_ms_b{batch}']:.3g} → {r[f'shrunk_ms_b{batch}']:.3g} ms, {r[f'pairs_b{batch}']} pairs)"
    )


def _step_spread(r: dict, suffix: str) -> str:
    """The interquartile range and the count of the interleaved step pairs, where they were timed so."""
    if f"prune_over_finetune_time_q1{suffix}" not in r:
        return ""
    q1, q3 = r[f"prune_over_finetune_time_q1{suffix}"], r[f"prune_over_finetune_time_q3{suffix}"]
    return f" [{q1:.2f}–{q3:.2f}], {r[f'step_pairs{suffix}']} pairs"


def markdown(results: list[dict], batch_sizes: tuple[int, ...] = (1, 64)) -> str:
    """The latency table (speed-up: median [interquartile range] of the per-pair speed-ups) and, where measured, the
    prune-step table."""
    head = " | ".join(f"speed-up b{b}" for b in batch_sizes)
    ratio = " | ".join(f"b{b} / FLOP ratio" for b in batch_sizes)
    lines = [
        f"| model | pruned, round_to | params dense → shrunk | FLOP ratio | {head} | {ratio} |",
        "|---|---|---|---|" + "---|" * (2 * len(batch_sizes)),
    ]
    for r in results:
        cells = " | ".join(_speedup(r, b) for b in batch_sizes)
        ratios = " | ".join(f"{r[f'speedup_over_flop_ratio_b{b}']:.2f}" for b in batch_sizes)
        lines.append(
            f"| {r.get('name', r['model'])} (`{r['model']}`) | {r.get('masks', 'whole heads')}, {r['round_to']} | {r['params_before'] / 1e6:.2f}M → {r['params_after'] / 1e6:.2f}M | "
            f"{r['flop_ratio']:.2f}× | {cells} | {ratios} |"
        )
    steps = [r for r in results if "prune_step_ms" in r or "prune_step_ms_macro" in r]
    if steps:
        lines += [
            "",
            "| model | windows per step | prune step / finetune step (time) [IQR] | (peak memory) |",
            "|---|---|---|---|",
        ]
        for r in steps:
            for suffix in ("", "_macro"):
                if f"prune_step_ms{suffix}" in r:
                    lines.append(
                        f"| {r.get('name', r['model'])} | {r[f'step_batch{suffix}']} | {r[f'prune_over_finetune_time{suffix}']:.2f}"
                        f"{_step_spread(r, suffix)} ({r[f'prune_step_ms{suffix}']:.0f} vs {r[f'finetune_step_ms{suffix}']:.0f} ms) | "
                        f"{r[f'prune_over_finetune_memory{suffix}']:.2f} ({r[f'prune_step_peak_mib{suffix}']:.0f} vs "
                        f"{r[f'finetune_step_peak_mib{suffix}']:.0f} MiB) |"
                    )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=[n for n in BUILDERS if available(n) and n not in LARGER_LAYOUTS],
        choices=[*BUILDERS, "all"],
        help="default: one released layout of every family whose packages are installed (`all`: every layout)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (fixed for every measurement)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--round_to", type=int, nargs="+", default=[1], help="shrink with each of these round_to")
    parser.add_argument(
        "--value_channels", action="store_true",
        help="prune half of each attention layer's value channels instead of half of its heads (uneven sizes)",
    )  # fmt: skip
    parser.add_argument(
        "--pruned_fraction", type=float, default=0.5,
        help="fraction of the feed-forward channels (and rotary pairs, value channels) pruned; heads: always half",
    )  # fmt: skip
    parser.add_argument(
        "--compare", nargs=2, metavar=("FIRST_JSON", "SECOND_JSON"),
        help="compare two runs' results (every ratio, run 2 / run 1) into <output_name or speed-reproducibility>.*",
    )  # fmt: skip
    parser.add_argument(
        "--report", nargs="+", metavar="JSON",
        help="collate runs' (and comparisons') json files, one section each, into <output_name or speed>.md",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="instead of timing: torch.profiler of dense vs shrunk forecasts per operator (speed-profile.*)",
    )  # fmt: skip
    parser.add_argument("--min_pairs", type=int, default=7, help="fewest interleaved dense/shrunk timing pairs")
    parser.add_argument(
        "--min_seconds", type=float, default=1.0,
        help="fewest seconds of forecast pairs per model and batch size (sub-millisecond forecasts get many pairs)",
    )  # fmt: skip
    parser.add_argument("--max_seconds", type=float, default=60.0, help="timing budget per model and batch size")
    parser.add_argument("--step_batch", type=int, default=16, help="micro-batch of the prune/finetune step (0: skip)")
    parser.add_argument("--min_step_pairs", type=int, default=3, help="fewest interleaved prune/finetune step pairs")
    parser.add_argument(
        "--step_min_seconds", type=float, default=5.0,
        help="time step pairs until each kind adds up to about this; then until their spread is small (up to 6x)",
    )  # fmt: skip
    parser.add_argument(
        "--macro_batch", type=int, default=0, help="also time steps of this many windows (accumulated)"
    )
    parser.add_argument(
        "--macro_micro_batch",
        type=int,
        default=128,
        help="micro-batch of the accumulated macro step (memory bound; on CPU 16-32 are faster per window)",
    )
    parser.add_argument("--macro_models", nargs="+", default=["timesfm2_5", "chronos_bolt"], choices=list(BUILDERS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--output_name", default=None, help="file stem of the results (default speed / speed-cuda)")
    parser.add_argument("--_step", nargs=8, help=argparse.SUPPRESS)
    parser.add_argument("--_steps", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._step:
        name, kind, batch, repeats, accumulate, device, dtype, min_seconds = args._step
        step = step_worker(name, kind, int(batch), int(repeats), int(accumulate), device, dtype, float(min_seconds))
        print(json.dumps(step))
        return
    if args._steps:
        name, batch, min_pairs, min_seconds, max_seconds, device, dtype = args._steps
        steps = interleaved_steps(
            name, int(batch), min_pairs=int(min_pairs), min_seconds=float(min_seconds),
            max_seconds=float(max_seconds), device=device, dtype=dtype,
        )  # fmt: skip
        print(json.dumps(steps))
        return
    if args.profile:
        profiles = []
        for name in args.models:
            for batch in args.batch_sizes:
                print(f"profiling {name} at batch {batch} ...", flush=True)
                profiles.append(profile_forecasts(name, batch))
        out, stem = Path(args.output_dir), args.output_name or "speed-profile"
        out.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]])
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "command": command}
        (out / f"{stem}.json").write_text(json.dumps({"environment": meta, "profiles": profiles}, indent=2))
        table = profile_markdown(profiles)
        (out / f"{stem}.md").write_text(
            f"{meta['threads']} thread(s), torch {meta['torch']}; `{command}`.\n\n" + table
        )
        print(table)
        return
    if args.report:
        print(write_report(args, [(Path(f).stem, json.loads(Path(f).read_text())) for f in args.report]))
        return
    if args.compare:
        print(write_comparison(args, *(json.loads(Path(f).read_text()) for f in args.compare)))
        return
    if "all" in args.models:
        args.models = [n for n in BUILDERS if available(n)]
    torch.manual_seed(0)
    timing = {"min_pairs": args.min_pairs, "min_seconds": args.min_seconds, "max_seconds": args.max_seconds}
    results, started = [], time.perf_counter()
    for name in args.models:
        for round_to in args.round_to:
            print(f"benchmarking {name} (round_to {round_to}) ...", flush=True)
            results.append(
                benchmark(
                    name, batch_sizes=tuple(args.batch_sizes), round_to=round_to, timing=timing,
                    whole_heads=not args.value_channels, pruned_fraction=args.pruned_fraction,
                    step_batch=args.step_batch if round_to == args.round_to[0] else 0, min_step_pairs=args.min_step_pairs,
                    step_min_seconds=args.step_min_seconds,
                    macro_batch=args.macro_batch if name in args.macro_models and round_to == args.round_to[0] else 0,
                    macro_micro_batch=args.macro_micro_batch,
                    device=args.device, dtype=args.dtype,
                )
            )  # fmt: skip
            write_results(args, results, started)
    print(write_results(args, results, started))


def write_results(args: argparse.Namespace, results: list[dict], started: float) -> str:
    """Writes `<stem>.json` and `<stem>.md` for the results so far (after every model, so that an interrupted run
    keeps what it measured); returns the table."""
    table = markdown(results, tuple(args.batch_sizes))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "min_pairs": args.min_pairs,
        "max_seconds_per_timing": args.max_seconds,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]]),
    }
    stem = args.output_name or ("speed" if args.device == "cpu" else "speed-cuda")
    run = {"environment": meta, "results": results}
    (out / f"{stem}.json").write_text(json.dumps(run, indent=2))
    (out / f"{stem}.md").write_text(run_markdown(run, tuple(args.batch_sizes)) + "\n")
    return table


def run_markdown(run: dict, batch_sizes: tuple[int, ...] = (1, 64)) -> str:
    """One run's `speed.json` as markdown: where and how it ran, the steps that failed, and `markdown`'s tables."""
    meta = run["environment"]
    where = (
        f"{meta['device']}, {meta['dtype']}"
        if meta["device"] != "cpu"
        else f"CPU ({meta['cpu']}, {meta['cpu_count']} cores)"
    )
    errors = "".join(
        f" {r['name']}: step not measured ({r[key]})."
        for r in run["results"]
        for key in r
        if key.startswith("step_error")
    )
    return (
        f"{where}, {meta['threads']} thread(s), torch {meta['torch']}; `{meta['command']}` ({meta['wall_seconds']:.0f} s)."
        f"\nSpeed-ups: median [interquartile range] of dense/shrunk time over interleaved pairs.{errors}\n\n"
        + markdown(run["results"], batch_sizes)
    )


def write_report(args: argparse.Namespace, sections: list[tuple[str, dict]]) -> str:
    """`--report`: several runs' (or comparisons') json files as the sections of one `<output_name or speed>.md`,
    each under its file's stem."""
    parts = []
    for title, content in sections:
        if "markdown" in content:  # a comparison
            body = content["markdown"]
        elif "profiles" in content:
            body = f"`{content['environment']['command']}`\n\n" + profile_markdown(content["profiles"])
        else:
            body = run_markdown(content, tuple(args.batch_sizes))
        parts.append(f"## {title}\n\n{body}\n")
    text = "\n".join(parts)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.output_name or 'speed'}.md").write_text(text)
    return text


def profile_forecasts(name: str, batch: int, calls: int = 10, top: int = 12) -> dict:
    """Where the time of a forecast goes, dense vs shrunk: `torch.profiler` over `calls` forecasts of each (after two
    warm-up calls), the self CPU time per operator. Operators whose time pruning does not shrink (element-wise work
    on unpruned widths, routing, copies) are what keeps a speed-up below the FLOP ratio."""
    from torch.profiler import ProfilerActivity, profile

    dense, shrunk, spec, plan = dense_and_shrunk(name)
    inputs = spec.example_inputs(dense, batch, generator=torch.Generator().manual_seed(0))
    per_model = {}
    with torch.no_grad():
        for label, model in (("dense", dense), ("shrunk", shrunk)):
            for _ in range(2):
                spec.forecast(model, inputs)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(calls):
                    spec.forecast(model, inputs)
            per_model[label] = {
                e.key: {"self_ms": e.self_cpu_time_total / 1e3 / calls, "count": e.count // calls}
                for e in prof.key_averages()
            }
    totals = {label: sum(op["self_ms"] for op in ops.values()) for label, ops in per_model.items()}
    keys = sorted(per_model["dense"], key=lambda k: -per_model["dense"][k]["self_ms"])[:top]
    operators = [
        {
            "operator": key,
            "dense_ms": per_model["dense"][key]["self_ms"],
            "shrunk_ms": per_model["shrunk"].get(key, {}).get("self_ms", 0.0),
            "calls": per_model["dense"][key]["count"],
        }
        for key in keys
    ]
    return {
        "name": name, "batch": batch, "calls": calls, "flop_ratio": plan.flops_before / plan.flops_after,
        "dense_ms": totals["dense"], "shrunk_ms": totals["shrunk"], "operators": operators,
    }  # fmt: skip


def profile_markdown(profiles: list[dict]) -> str:
    lines = []
    for r in profiles:
        lines += [
            f"### {r['name']}, batch {r['batch']} (self CPU time per forecast, mean of {r['calls']})",
            "",
            f"Total {r['dense_ms']:.3g} → {r['shrunk_ms']:.3g} ms ({r['dense_ms'] / r['shrunk_ms']:.2f}×; FLOP ratio "
            f"{r['flop_ratio']:.2f}×).",
            "",
            "| operator | calls | dense ms | shrunk ms | dense / shrunk | share of the shrunk time |",
            "|---|---|---|---|---|---|",
        ]
        for op in r["operators"]:
            ratio = f"{op['dense_ms'] / op['shrunk_ms']:.2f}×" if op["shrunk_ms"] else "–"
            lines.append(
                f"| `{op['operator']}` | {op['calls']} | {op['dense_ms']:.3g} | {op['shrunk_ms']:.3g} | {ratio} | "
                f"{100 * op['shrunk_ms'] / r['shrunk_ms']:.0f} % |"
            )
        lines.append("")
    return "\n".join(lines)


RATIOS = {
    "speedup_b1": "speed-up b1",
    "speedup_b64": "speed-up b64",
    "prune_over_finetune_time": "prune / finetune step time",
    "prune_over_finetune_memory": "prune / finetune step memory",
}
"""The ratios a run reports per model (`compare_runs` checks each against its twin of another run)."""


def compare_runs(first: dict, second: dict, tolerance: float = 0.10) -> list[dict]:
    """Every ratio of `RATIOS` that both runs measured, per model (keyed by name and round_to): the two values and
    `second / first - 1`; `within` says whether that is at most `tolerance` in size."""
    twins = {(r["name"], r["round_to"]): r for r in second["results"]}
    rows = []
    for r in first["results"]:
        other = twins.get((r["name"], r["round_to"]))
        for key, label in RATIOS.items():
            if other is None or key not in r or key not in other:
                continue
            change = other[key] / r[key] - 1
            row = {"name": r["name"], "round_to": r["round_to"], "ratio": label, "first": r[key], "second": other[key]}
            rows.append({**row, "change": change, "within": abs(change) <= tolerance})
    return rows


def write_comparison(args: argparse.Namespace, first: dict, second: dict) -> str:
    """`compare_runs` as `<stem>.json` / `<stem>.md` and the two runs' speed-ups (with their interquartile ranges)
    against the FLOP ratio as `<stem>.png`; returns the table."""
    rows = compare_runs(first, second)
    outside = [row for row in rows if not row["within"]]
    worst = max(rows, key=lambda row: abs(row["change"]))
    lines = [
        f"Run 1: `{first['environment']['command']}` ({first['environment']['wall_seconds']:.0f} s); run 2: "
        f"`{second['environment']['command']}` ({second['environment']['wall_seconds']:.0f} s).",
        f"{len(rows)} ratios, {len(rows) - len(outside)} within 10 % of their twin; the largest change is "
        f"{100 * worst['change']:+.1f} % ({worst['name']}, {worst['ratio']}).",
        "",
        "| model | ratio | run 1 | run 2 | change |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        flag = "" if row["within"] else " **(over 10 %)**"
        lines.append(
            f"| {row['name']} | {row['ratio']} | {row['first']:.3f} | {row['second']:.3f} | "
            f"{100 * row['change']:+.1f} %{flag} |"
        )
    table = "\n".join(lines)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.output_name or "speed-reproducibility"
    summary = {"runs": [first["environment"], second["environment"]], "ratios": rows, "outside_10_percent": outside}
    summary["markdown"] = table  # (what `--report` shows of a comparison)
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    (out / f"{stem}.md").write_text(table + "\n")
    plot_runs(first["results"], second["results"], out / f"{stem}.png")
    return table


def plot_runs(first: list[dict], second: list[dict], path: Path) -> None:
    """Speed-ups at batch 1 and 64 (those of them both runs timed) per model (median, bars: interquartile
    range), each over its FLOP ratio (the dotted mark)."""
    from matplotlib.figure import Figure

    twins = {(r["name"], r["round_to"]): r for r in second}
    pairs = [(r, twins[(r["name"], r["round_to"])]) for r in first if (r["name"], r["round_to"]) in twins]
    speedups = [key for key in RATIOS if key.startswith("speedup_b") and all(key in run for run in pairs[0])]
    batches = [int(key.removeprefix("speedup_b")) for key in speedups]  # those `compare_runs` compares
    figure = Figure(figsize=(max(6.0, 0.7 * len(pairs)), 3.5 * len(batches)), layout="constrained")
    for axes, batch in zip(figure.subplots(len(batches), 1, sharex=True, squeeze=False)[:, 0], batches):
        for offset, run, label in ((-0.15, 0, "run 1"), (0.15, 1, "run 2")):
            x = [i + offset for i in range(len(pairs))]
            rows = [pair[run] for pair in pairs]
            median = [r[f"speedup_b{batch}"] for r in rows]
            spread = [
                [m - r[f"speedup_q1_b{batch}"] for m, r in zip(median, rows)],
                [r[f"speedup_q3_b{batch}"] - m for m, r in zip(median, rows)],
            ]
            axes.errorbar(x, median, yerr=spread, fmt="o", capsize=3, label=label)
        axes.scatter(
            range(len(pairs)), [p[0]["flop_ratio"] for p in pairs], marker="_", s=300, c="k", label="FLOP ratio"
        )
        axes.axhline(1.0, color="grey", linewidth=0.8)
        axes.set_ylabel(f"speed-up, batch {batch}")
        axes.legend(loc="upper left", fontsize=8)
    axes.set_xticks(range(len(pairs)), [p[0]["name"] for p in pairs], rotation=45, ha="right")
    figure.suptitle("Dense / shrunk forecast time in two runs")
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
