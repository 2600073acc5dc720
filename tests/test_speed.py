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


def test_short_forecasts_are_timed_until_the_time_adds_up(speed, monkeypatch):
    # 7 pairs of sub-millisecond forecasts can agree by chance within the target spread; `min_seconds` (the
    # benchmark's `--min_seconds`) keeps pairing until they add up to a time the speed-up can be read from
    clock = FakeClock()
    monkeypatch.setattr(speed.time, "perf_counter", clock)

    def run(seconds):
        def call():
            clock.now += seconds

        return call

    dense, shrunk = run(2**-10), run(2**-11)  # (exact in binary: the sums of the fake clock do not round)
    assert speed.interleaved_timing(dense, shrunk, warmup=1, min_pairs=7)["pairs"] == 7
    result = speed.interleaved_timing(dense, shrunk, warmup=1, min_pairs=7, min_seconds=200 * 3 * 2**-11)
    assert result["pairs"] == 200 and result["speedup"] == 2.0


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


def test_two_runs_are_compared_ratio_by_ratio(speed, monkeypatch, tmp_path):
    """`--compare`: every ratio of one run next to its twin of the other, flagged when they differ by over 10 %."""
    monkeypatch.setitem(speed.BUILDERS, "patchtst", TINY["patchtst"])
    result = speed.benchmark("patchtst", batch_sizes=(1, 64), timing={"min_pairs": 3, "max_pairs": 3}, step_batch=0)
    result["prune_over_finetune_time"] = 0.5
    second = {**result, "prune_over_finetune_time": 0.52}
    second.update({key: result[key] * 1.2 for key in ("speedup_b64", "speedup_q1_b64", "speedup_q3_b64")})
    environment = {"command": "python benchmarks/speed.py", "wall_seconds": 1.0}
    runs = [{"environment": environment, "results": [r]} for r in (result, second)]
    rows = {row["ratio"]: row for row in speed.compare_runs(*runs)}
    assert set(rows) == {"speed-up b1", "speed-up b64", "prune / finetune step time"}  # memory: not measured
    assert rows["speed-up b1"]["within"] and rows["speed-up b1"]["change"] == 0.0
    assert not rows["speed-up b64"]["within"] and abs(rows["speed-up b64"]["change"] - 0.2) < 1e-12
    assert rows["prune / finetune step time"]["within"]
    args = speed.argparse.Namespace(output_dir=str(tmp_path), output_name=None)
    table = speed.write_comparison(args, *runs)
    assert "2 within 10 %" in table and "**(over 10 %)**" in table
    assert {p.name for p in tmp_path.iterdir()} == {f"speed-reproducibility.{e}" for e in ("json", "md", "png")}
    # --report: the runs and the comparison as the sections of one speed.md
    environment.update(torch="2", threads=2, device="cpu", dtype="float32", cpu="x86_64", cpu_count=2)
    macro = {**result, "step_batch_macro": 8192, "prune_step_ms_macro": 10.0, "finetune_step_ms_macro": 20.0}
    macro.update(prune_over_finetune_time_macro=0.5, prune_step_peak_mib_macro=1.0, finetune_step_peak_mib_macro=2.0)
    macro.update(prune_over_finetune_memory_macro=0.5, step_error="16 windows: exit -9")
    del macro["prune_over_finetune_time"]
    sections = [("run 1", runs[0]), ("macro", {"environment": environment, "results": [macro]})]
    sections.append(("comparison", speed.json.loads((tmp_path / "speed-reproducibility.json").read_text())))
    report = speed.write_report(
        speed.argparse.Namespace(output_dir=str(tmp_path), output_name=None, batch_sizes=[1, 64]), sections
    )
    assert report == (tmp_path / "speed.md").read_text()
    assert (
        report.index("## run 1") < report.index("## macro") < report.index("## comparison") < report.index("over 10")
    )
    assert (
        "| patchtst | 8192 | 0.50 (10 vs 20 ms) | 0.50 (1 vs 2 MiB) |" in report
    )  # a macro step alone gets its table
    assert "patchtst: step not measured (16 windows: exit -9)." in report


def test_an_uneven_pruned_fraction_leaves_widths_that_round_to_rounds(speed, monkeypatch):
    monkeypatch.setitem(speed.BUILDERS, "patchtst", TINY["patchtst"])
    model = speed.build("patchtst")
    masks = speed.half_masks(model, whole_heads=False, fraction=0.45)
    kept = [int(mask.sum()) for mask in masks.values()]
    assert all(k == m.numel() - int(0.45 * m.numel()) for k, m in zip(kept, masks.values()))
    rounded = speed.benchmark(
        "patchtst", batch_sizes=(1,), timing={"min_pairs": 3, "max_pairs": 3}, step_batch=0, round_to=8,
        whole_heads=False, pruned_fraction=0.45,
    )  # fmt: skip
    assert rounded["masks"] == "value channels, 0.45 of the channels" and rounded["max_rel_error"] < 1e-5


def test_profile_of_dense_and_shrunk_forecasts(speed, monkeypatch, tmp_path):
    monkeypatch.setitem(speed.BUILDERS, "patchtst", TINY["patchtst"])
    profile = speed.profile_forecasts("patchtst", batch=2, calls=2, top=5)
    assert profile["flop_ratio"] > 1 and profile["dense_ms"] > 0 and profile["shrunk_ms"] > 0
    operators = {op["operator"]: op for op in profile["operators"]}
    assert len(operators) == 5 and all(op["calls"] >= 1 for op in operators.values())
    table = speed.profile_markdown([profile])
    assert "### patchtst, batch 2" in table and "share of the shrunk time" in table
    args = speed.argparse.Namespace(output_dir=str(tmp_path), output_name=None, batch_sizes=[1, 64])
    report = speed.write_report(args, [("profile", {"environment": {"command": "cmd"}, "profiles": [profile]})])
    assert report.startswith("## profile\n\n`cmd`") and table in report


def test_short_steps_are_repeated_until_the_time_adds_up(speed, monkeypatch):
    monkeypatch.setitem(speed.BUILDERS, "patchtst", TINY["patchtst"])
    step = speed.step_worker("patchtst", "finetune", batch_size=2, repeats=2, min_seconds=0.3)
    assert 2 < step["repeats"] <= 1000


def test_prune_and_finetune_steps_are_timed_interleaved_in_one_process(speed, monkeypatch):
    """The step-time ratio is the median of per-pair prune / finetune ratios, the pairs in alternating order."""
    clock, calls = FakeClock(), []
    monkeypatch.setattr(speed.time, "perf_counter", clock)

    def fake_step(name, kind, batch_size, accumulate=1, device="cpu", dtype="float32"):
        def step(micro_batches: int = accumulate):
            calls.append(kind)
            clock.now += 1.0 if kind == "prune" else 2.0

        return step

    monkeypatch.setattr(speed, "optimizer_step", fake_step)
    timed = speed.interleaved_steps("patchtst", 2, min_pairs=3, min_seconds=20.0, max_seconds=100.0)
    assert timed["pairs"] == 7  # 3 s a pair: 7 pairs before 20 s have gone (the spread is 0 from the start)
    assert (timed["ratio"], timed["ratio_q1"], timed["ratio_q3"]) == (0.5, 0.5, 0.5)
    assert (timed["prune_ms"], timed["finetune_ms"]) == (1000.0, 2000.0)
    assert calls[:6] == ["prune", "finetune", "prune", "finetune", "finetune", "prune"]  # warm-up, then alternating


def test_the_step_of_the_benchmark(speed):
    """The whole step path on the released PatchTST layout (0.6 M parameters): time ratio and its spread from
    interleaved steps, peak memory from a fresh process per kind, and the table row."""
    result = speed.benchmark(
        "patchtst", batch_sizes=(1,), timing={"min_pairs": 3, "max_pairs": 3}, step_batch=2, min_step_pairs=3,
        step_min_seconds=0.0,
    )  # fmt: skip
    assert result["step_batch"] == 2 and result["step_pairs"] >= 3
    q1, ratio, q3 = (result[f"prune_over_finetune_time{k}"] for k in ("_q1", "", "_q3"))
    assert 0 < q1 <= ratio <= q3
    assert result["prune_step_peak_mib"] > 0 and result["finetune_step_peak_mib"] > 0
    assert f"{ratio:.2f} [{q1:.2f}–{q3:.2f}], {result['step_pairs']} pairs" in speed.markdown([result], (1,))


def test_runs_of_batch_1_alone_are_compared_and_plotted(speed, monkeypatch, tmp_path):
    """`--compare` of two runs timed at `--batch_sizes 1` only: the plot has one panel, not a missing batch 64."""
    monkeypatch.setitem(speed.BUILDERS, "patchtst", TINY["patchtst"])
    result = speed.benchmark("patchtst", batch_sizes=(1,), timing={"min_pairs": 3, "max_pairs": 3}, step_batch=0)
    runs = [{"environment": {"command": "python benchmarks/speed.py", "wall_seconds": 1.0}, "results": [result]}] * 2
    args = speed.argparse.Namespace(output_dir=str(tmp_path), output_name="steps")
    assert "1 ratios, 1 within 10 %" in speed.write_comparison(args, *runs)
    assert (tmp_path / "steps.png").stat().st_size > 0
