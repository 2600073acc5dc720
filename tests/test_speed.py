"""benchmarks/speed.py: interleaved timing (behaviour on a fake clock, never wall-clock figures), the benchmark of a
tiny model on the CPU in float32 and bfloat16 (the `--device`/`--dtype` path; CUDA itself is not available here), and
a prune step at a macro batch through gradient accumulation."""

import importlib.util
from pathlib import Path

import pytest
from models import TINY

SPEED = Path(__file__).resolve().parent.parent / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("hf_tsprune_benchmark_speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaved_timing_alternates_and_stops_when_the_spread_is_small(speed, monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(speed.time, "perf_counter", clock)

    def run(name, seconds):
        def call():
            calls.append(name)
            clock.now += seconds

        return call

    result = speed.interleaved_timing(run("dense", 2.0), run("shrunk", 1.0), warmup=1, min_pairs=5)
    assert result["pairs"] == 5 and result["speedup"] == result["speedup_q1"] == result["speedup_q3"] == 2.0
    assert (result["dense_ms"], result["shrunk_ms"], result["dense_iqr_ms"]) == (2000.0, 1000.0, 0.0)
    # warm-up, then pairs in alternating order, so that a drift of the machine's speed hits both alike
    assert calls[:2] == ["dense", "shrunk"] and calls[2:6] == ["dense", "shrunk", "shrunk", "dense"]


def test_interleaved_timing_reports_the_spread_and_respects_the_budget(speed, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(speed.time, "perf_counter", clock)
    durations = iter([1.0, 1.0] + [1.0, 0.5, 0.4, 1.2] * 100)  # (warm-up), then shrunk at 0.5 or 0.4 vs 1.0 or 1.2

    def call():
        clock.now += next(durations)

    result = speed.interleaved_timing(call, call, warmup=1, min_pairs=3, max_pairs=8, max_seconds=1e9)
    assert result["pairs"] == 8  # the spread never got small: stopped at max_pairs
    assert result["speedup_q1"] < result["speedup"] < result["speedup_q3"]
    durations = iter([1.0, 1.0] + [1.0, 0.5, 0.4, 1.2] * 100)
    result = speed.interleaved_timing(call, call, warmup=1, min_pairs=3, max_pairs=400, max_seconds=5.0)
    assert result["pairs"] < 400  # the time budget stopped it


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_benchmark_of_a_tiny_model(speed, monkeypatch, dtype):
    monkeypatch.setitem(speed.BUILDERS, "patchtst", TINY["patchtst"])
    result = speed.benchmark(
        "patchtst", batch_sizes=(1, 4), timing={"min_pairs": 3, "max_pairs": 3}, step_batch=0, dtype=dtype
    )
    assert result["family"] == "patchtst" and result["params_after"] < result["params_before"]
    assert result["pairs_b1"] == result["pairs_b4"] == 3 and result["max_rel_error"] < 1e-5
    for batch in (1, 4):
        assert result[f"speedup_q1_b{batch}"] <= result[f"speedup_b{batch}"] <= result[f"speedup_q3_b{batch}"]
        assert result[f"never_slower_b{batch}"] == (result[f"speedup_q3_b{batch}"] >= 1.0)
    table = speed.markdown([result], (1, 4))
    assert "PatchTSTForPrediction" in table and "3 pairs" in table


def test_prune_step_at_a_macro_batch(speed, monkeypatch):
    """One optimizer step over 4 micro-batches (gradient accumulation): the Taylor scores see the summed gradients."""
    monkeypatch.setitem(speed.BUILDERS, "patchtst", TINY["patchtst"])
    updates = []
    original = speed.TaylorScorer.update
    monkeypatch.setattr(speed.TaylorScorer, "update", lambda self, g, m: updates.append(1) or original(self, g, m))
    step = speed.step_worker("patchtst", "prune", batch_size=2, repeats=1, accumulate=4)
    assert step["repeats"] == 1 and step["seconds"] > 0 and step["peak_mib"] > 0
    assert len(updates) == 2  # warm-up and the timed step: one score update per macro step, not per micro-batch
    finetune = speed.step_worker("patchtst", "finetune", batch_size=2, repeats=1, accumulate=4, dtype="bfloat16")
    assert finetune["seconds"] > 0  # the bfloat16 path runs on the CPU
