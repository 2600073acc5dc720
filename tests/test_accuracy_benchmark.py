"""`benchmarks/accuracy.py` end to end on a tiny TimesFM 2.5 and a tiny CSV (one seed, short runs)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402


def test_accuracy_benchmark_writes_the_table_the_few_shot_cells_and_the_controls(task, tmp_path):
    out = tmp_path / "results"
    results = accuracy.main([
        "--model_name_or_path", str(task / "model"), "--datasets", str(task / "tiny.csv"), "--horizons", "16",
        "--context_length", "64", "--seeds", "1", "2", "--learning_rates", "1e-3", "--finetune_epochs", "1",
        "--train_fractions", "0.5", "--control_sparsities", "0.1", "0.3", "--train_stride", "8", "--validation_stride",
        "8", "--eval_steps", "2", "--controls_test_every", "2", "--output_dir", str(out),
    ])  # fmt: skip
    saved = json.loads((out / "accuracy.json").read_text())
    assert saved["cells"][0]["horizon"] == 16 and len(saved["cells"][0]["seeds"]) == 2
    run = saved["cells"][0]["seeds"][0]
    for method in ("ft", "ft_no_dropout", "prune_only", "ptf"):
        assert run[method]["test_windows"] > 0 and run[method]["validation_mse"] > 0
    assert run["prune"]["history"][0]["step"] == 0  # the unpruned model is a candidate mask set
    kept = min(run["prune"]["history"], key=lambda h: h["eval_loss"])
    assert run["prune"]["best_step"] == kept["step"]
    assert run["ft_selection"]["learning_rate"] == 1e-3
    few = saved["cells"][0]["few_shot"][0]
    assert few["train_fraction"] == 0.5 and 0 < few["train_windows"] < saved["cells"][0]["train_windows"]
    rows = saved["cells"][0]["controls"]["rows"]
    assert {r["method"] for r in rows} == set(accuracy.CONTROLS)
    assert len([r for r in rows if r["method"] == "random"]) == 2 * 2  # 2 sparsities x 2 seeds
    assert len([r for r in rows if r["method"] == "weight magnitude"]) == 2  # data-free: one seed
    for row in rows:
        assert row["sparsity"] >= row["target"] - 1e-9 and row["sparsity"] < row["target"] + 0.1
    # random masks differ between seeds
    random_rows = {(r["seed"], r["target"]): r["validation_mse"] for r in rows if r["method"] == "random"}
    assert random_rows[(1, 0.3)] != random_rows[(2, 0.3)]
    table = (out / "accuracy.md").read_text()
    assert "| tiny | 16 |" in table and "## Controls" in table and "## Few-shot" in table and "**" in table
    assert (out / "accuracy.png").stat().st_size > 10_000
    assert results["cells"][0]["zero_shot"]["test_mse"] == pytest.approx(saved["cells"][0]["zero_shot"]["test_mse"])
