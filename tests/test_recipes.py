"""End-to-end recipes on a tiny TimesFM 2.5 and a tiny hourly CSV (offline, CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import finetune as finetune_recipe  # noqa: E402
import prune_finetune  # noqa: E402


def argv(task, out, *extra):
    return [
        "--model_name_or_path", str(task / "model"), "--dataset", str(task / "tiny.csv"), "--context_length", "64",
        "--prediction_length", "16", "--output_dir", str(out), "--per_device_train_batch_size", "32",
        "--per_device_eval_batch_size", "64", "--disable_tqdm", "true", "--use_cpu", "true", *extra,
    ]  # fmt: skip


def test_prune_finetune_end_to_end(task, tmp_path):
    results = prune_finetune.main(
        argv(task, tmp_path / "run", "--eval_steps", "10", "--finetune_epochs", "1")
    ).to_dict()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for stage in ("zero_shot", "pruned", "finetuned"):
        test = saved[stage]["test"]
        assert test["n_windows"] > 0 and np.isfinite(test["mse"]) and np.isfinite(test["mae"])
    assert saved["params_after"] < saved["params_before"] and saved["flops_after"] < saved["flops_before"]
    assert 0.25 <= saved["sparsity"] <= 0.35  # one prune epoch at ratio 0.3
    assert saved["settings"]["ratio_per_epoch"] == 0.3 and saved["seed"] == 42
    assert {"prune", "finetune", "zero_shot_test", "finetuned_test"} <= set(saved["timings_seconds"])
    assert saved["finetuned"]["test"]["mse"] == pytest.approx(results["finetuned"]["test"]["mse"])
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_grid_selects_on_validation(task, tmp_path):
    results = prune_finetune.main(
        argv(task, tmp_path / "grid", "--grid", "ratio_per_epoch=0.2,0.4", "--finetune_epochs", "1")
    ).to_dict()
    losses = [g["validation_loss"] for g in results["grid"]]
    assert len(losses) == 2 and results["finetuned"]["validation_loss"] == min(losses)


def test_learning_rate_grid_shares_one_prune_run(task, tmp_path):
    out = tmp_path / "lr-grid"
    results = prune_finetune.main(
        argv(task, out, "--grid", "learning_rate=1e-3,1e-4", "--finetune_epochs", "1", "--eval_steps", "10")
    ).to_dict()
    assert (out / "grid-0" / "prune_run").is_dir() and not (out / "grid-1" / "prune_run").exists()
    assert [g["point"]["learning_rate"] for g in results["grid"]] == [1e-3, 1e-4]
    assert results["grid"][0]["sparsity"] == results["grid"][1]["sparsity"]
    losses = [g["validation_loss"] for g in results["grid"]]
    assert losses[0] != losses[1] and results["finetuned"]["validation_loss"] == min(losses)
    assert results["selected_grid_point"]["learning_rate"] == [1e-3, 1e-4][losses.index(min(losses))]


def test_finetune_baseline(task, tmp_path):
    results = finetune_recipe.main(argv(task, tmp_path / "ft", "--finetune_epochs", "1")).to_dict()
    assert results["params_after"] == results["params_before"]
    assert np.isfinite(results["finetuned"]["test"]["mse"])
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["zero_shot"]["test"]["n_windows"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "ETTx9"], "Unknown dataset"),
        (["--prediction_length", "64"], "native horizon"),
        (["--ratio_per_epoch", "1.5"], "ratio_per_epoch"),
        (["--ema", "0"], "ema"),
        (["--grid", "foo=1"], "Bad --grid"),
    ],
)
def test_bad_arguments_fail_before_work(task, tmp_path, extra, message):
    args = argv(task, tmp_path / "bad")
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(ValueError, match=message):
        prune_finetune.main(args)
    assert not (tmp_path / "bad" / "prune_run").exists()


def test_output_folder_holding_another_run(task, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a run"):
        prune_finetune.main(argv(task, tmp_path / "used"))


def test_resume_prune_run_reaches_the_same_masks(task, tmp_path):
    common = ["--eval_steps", "5", "--finetune_epochs", "1", "--ratio_per_epoch", "0.4"]
    full = prune_finetune.main(argv(task, tmp_path / "full", *common)).to_dict()
    checkpoint = tmp_path / "full" / "prune_run" / "checkpoint-5"
    assert (checkpoint / "hf_tsprune_pruning_state.pt").is_file()
    resumed = prune_finetune.main(
        argv(task, tmp_path / "resumed", *common, "--resume_from_checkpoint", str(checkpoint))
    ).to_dict()
    assert resumed["plan"]["groups"] == full["plan"]["groups"]
    assert resumed["best_mask_set"] == full["best_mask_set"]


def test_two_processes_match_one(task, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    script = str(ROOT / "recipes" / "prune_finetune.py")
    two = argv(task, tmp_path / "two", "--per_device_train_batch_size", "16", "--finetune_epochs", "1")
    subprocess.run([*launch, script, *two], env=env, check=True, timeout=600, capture_output=True)
    one = argv(task, tmp_path / "one", "--finetune_epochs", "1")
    subprocess.run([sys.executable, script, *one], env=env, check=True, timeout=600, capture_output=True)
    two_results = json.loads((tmp_path / "two" / "results.json").read_text())
    one_results = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two_results["world_size"] == 2 and one_results["world_size"] == 1
    assert two_results["plan"]["groups"] == one_results["plan"]["groups"]  # same masks from the same global batch
    assert two_results["best_mask_set"]["step"] == one_results["best_mask_set"]["step"]


def test_yaml_config_and_flags_override(tmp_path):
    from hf_tsprune.pipeline import parse_arguments

    args = parse_arguments(
        prune_finetune.PruneFinetuneArguments, ["--config", str(ROOT / "recipes/presets/etth1_full.yaml")]
    )
    assert args.preset == "full" and args.train_stride == 1 and args.grid.startswith("ratio_per_epoch")
    args = parse_arguments(
        prune_finetune.PruneFinetuneArguments,
        ["--config", str(ROOT / "recipes/presets/etth1_quick.yaml"), "--ema", "0.5"],
    )
    assert args.ema == 0.5 and args.train_stride == 8 and args.output_dir == "runs/etth1-quick"
    bad = tmp_path / "bad.yaml"
    bad.write_text("not_a_setting: 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        parse_arguments(prune_finetune.PruneFinetuneArguments, ["--config", str(bad)])


def test_lora_finetune_is_merged_before_saving(task, tmp_path):
    results = prune_finetune.main(
        argv(task, tmp_path / "lora", "--lora_rank", "4", "--finetune_epochs", "1")
    ).to_dict()
    assert np.isfinite(results["finetuned"]["test"]["mse"])
    from hf_tsprune.pipeline import load_model

    reloaded = load_model(str(tmp_path / "lora" / "model"))
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    assert sum(p.numel() for p in reloaded.parameters()) == results["params_after"]


def test_results_json_is_the_run_result_serialisation(task, tmp_path):
    from hf_tsprune.results import RunResult

    result = finetune_recipe.main(argv(task, tmp_path / "ft", "--finetune_epochs", "1"))
    assert isinstance(result, RunResult) and result.finetuned.test.n_windows > 0
    saved = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert saved == json.loads(json.dumps(result.to_dict(), default=str))
    assert RunResult.load(tmp_path / "ft" / "results.json").to_dict() == saved
    assert "pruned" not in saved and saved["grid"] is None and saved["finetuned"]["learning_rate"] == 1e-4


def test_run_result_keys():
    from hf_tsprune.results import FinetunedResult, MaskSetResult, RunResult, SplitMetrics, StageResult

    result = RunResult(
        model="m", dataset="d", prediction_length=96, context_length=512,
        zero_shot=StageResult(SplitMetrics(0.5, 0.4, 10)), finetuned=FinetunedResult(SplitMetrics(0.3, 0.2, 10)),
        best_mask_set=MaskSetResult(step=None, eval_loss=None, sparsity=None), selected_grid_point={}, seed=42,
    )  # fmt: skip
    written = result.to_dict()
    assert list(written) == [
        "model", "dataset", "prediction_length", "context_length", "zero_shot", "finetuned", "best_mask_set",
        "selected_grid_point", "grid", "timings_seconds", "settings", "seed",
    ]  # fmt: skip
    assert written["finetuned"] == {"test": {"mse": 0.3, "mae": 0.2, "n_windows": 10}, "validation_loss": None}
    assert written["best_mask_set"] == {"step": None, "eval_loss": None, "sparsity": None} and written["grid"] is None
    assert RunResult.from_dict(written) == result
    with pytest.raises(ValueError, match="unknown keys"):
        RunResult.from_dict({**written, "finetuned_mse": 0.3})


def test_shared_parser_with_several_dataclasses_and_recipe_defaults(tmp_path):
    from dataclasses import dataclass

    from transformers import TrainingArguments

    from hf_tsprune.pipeline import parse_arguments

    @dataclass
    class Extra:
        metrics: str = "mse"
        splits: str = "test"

    config = tmp_path / "run.yaml"
    config.write_text("metrics: [mse, mae]\nsplits: null\nlearning_rate: 0.01\nmax_steps: 7\n")
    extra, training = parse_arguments(
        (Extra, TrainingArguments),
        ["--config", str(config), "--max_steps", "9", "--output_dir", str(tmp_path)],
        defaults={"learning_rate": "1e-3", "seed": "7", "use_cpu": "true"},
    )
    assert extra.metrics == "mse,mae" and extra.splits == "test"  # YAML list joined, YAML null left at the default
    assert training.learning_rate == 0.01 and training.max_steps == 9  # YAML over defaults, flags over YAML
    assert training.seed == 7 and training.use_cpu is True  # recipe defaults, converted like flags


def test_too_few_windows_for_a_meaningful_choice_are_said(task, tmp_path, caplog):
    from hf_tsprune.pipeline import few_windows_warnings

    assert few_windows_warnings(10_000, 500, 50, 0.3) == []
    steps, validation = few_windows_warnings(100, 5, 2, 0.3)
    assert "2 optimizer step(s) per epoch (100 training windows)" in steps and "15% of the channels" in steps
    assert "--train_stride" in steps and "5 validation window(s)" in validation and "--validation_stride" in validation
    with caplog.at_level("WARNING", logger="hf_tsprune.pipeline"):
        prune_finetune.main(argv(task, tmp_path / "few", "--train_stride", "64", "--finetune_epochs", "1"))
    assert any("optimizer step(s) per epoch" in r.getMessage() for r in caplog.records)


def test_train_fraction_trains_on_the_last_windows(task, tmp_path):
    few = prune_finetune.main(argv(task, tmp_path / "few", "--train_fraction", "0.25", "--finetune_epochs", "1"))
    result = few.to_dict()
    assert result["settings"]["train_fraction"] == 0.25 and np.isfinite(result["finetuned"]["test"]["mse"])
    with pytest.raises(ValueError, match="--train_fraction must be in"):
        prune_finetune.main(argv(task, tmp_path / "bad", "--train_fraction", "1.5"))


def test_nearly_constant_contexts_are_dropped_from_training_and_validation(task, tmp_path, caplog):
    """A pegged series (constant up to 1e-5 noise, then a step): per-window normalisation divides the step by the
    context's tiny standard deviation, so those windows' loss explodes; the loader drops them (not the test windows)."""
    from hf_tsprune.data import context_std, drop_flat_context_windows
    from hf_tsprune.pipeline import PruneFinetuneArguments, load_data, load_model
    from hf_tsprune.training import ForecastCollator

    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.standard_normal(1200)) * 0.01
    pegged = walk.copy()
    pegged[300:700] = pegged[300] + 1e-5 * rng.standard_normal(400)
    pegged[700:] += 0.05
    frame = pd.DataFrame({"date": pd.date_range("2000-01-01", periods=1200, freq="D"), "walk": walk, "pegged": pegged})
    frame.to_csv(tmp_path / "pegged.csv", index=False)
    settings = dict(
        model_name_or_path=str(task / "model"), dataset=str(tmp_path / "pegged.csv"), context_length=64,
        prediction_length=16, train_stride=1, validation_stride=1, output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    model = load_model(settings["model_name_or_path"])
    kept_all = load_data(PruneFinetuneArguments(**settings, min_context_std=0.0), model)
    spread = context_std(kept_all.train)
    direct = [float(np.std(np.asarray(kept_all.train[i]["past_values"]))) for i in range(0, len(kept_all.train), 97)]
    assert np.allclose(spread[::97], direct, atol=1e-6)
    flat = np.flatnonzero(spread < 1e-3)
    assert len(flat) > 20
    collate = ForecastCollator(model)
    with torch.no_grad():
        losses = [float(model(**collate([kept_all.train[int(i)]])).loss) for i in flat[-12:]]
        ordinary = float(model(**collate([kept_all.train[i] for i in range(0, 40)])).loss)
    assert max(losses) > 1e4 * ordinary  # the spike: a step after a flat context, divided by its tiny std
    with caplog.at_level("WARNING", logger="hf_tsprune.pipeline"):
        dropped = load_data(PruneFinetuneArguments(**settings), model)  # default --min_context_std 1e-3
    assert len(dropped.train) == len(kept_all.train) - len(flat)
    assert (context_std(dropped.train) >= 1e-3).all() and len(dropped.test) == len(kept_all.test)
    assert any(f"Dropped {len(flat)} of {len(kept_all.train)} train windows" in r.getMessage() for r in caplog.records)
    same, none = drop_flat_context_windows(kept_all.train, 0.0)
    assert none == 0 and len(same) == len(kept_all.train)
