"""Tests of recipes/zero_shot.py: results.json, summary line, YAML config, models from a folder, the acceptance run."""

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from hf_tsprune.data import DATA_DIR_ENV

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "zero_shot.py"
DATA_DIR = Path(os.environ.get(DATA_DIR_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "ETT-small" / "ETTh1.csv").is_file(),
    reason=f"LTSF benchmark files not found under {DATA_DIR} (set {DATA_DIR_ENV})",
)


@pytest.fixture(scope="module")
def zero_shot():
    spec = importlib.util.spec_from_file_location("zero_shot_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    length = 300
    frame = pd.DataFrame({"date": pd.date_range("2023-01-01", periods=length, freq="h")})
    for c in range(2):
        frame[f"v{c}"] = np.sin(np.arange(length) * 2 * np.pi / 24 + c) + 0.1 * rng.normal(size=length)
    path = tmp_path_factory.mktemp("zs") / "tiny.csv"
    frame.to_csv(path, index=False)
    return path


def test_baseline_on_a_csv_writes_results(zero_shot, csv_path, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", "repeat_last", "--dataset", str(csv_path), "--prediction_length", "12"]
    argv += ["--context_length", "48", "--output_dir", str(out), "--metrics", "mse,mae,mase,smape"]
    argv += ["--splits", "validation,test", "--show_progress", "false"]
    returned = zero_shot.main(argv)
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "repeat_last" and results["dataset"] == "tiny"
    assert results["prediction_length"] == 12 and results["context_length"] == 48
    test = results["test"]
    assert test["n_windows"] == int(300 * 0.2) - 12 + 1 and test["n_items"] == 2 * test["n_windows"]
    assert {"mse", "mae", "mase", "smape"} <= set(test) and len(test["per_horizon"]["mae"]) == 12
    assert "validation" in results and returned["test"]["mse"] == test["mse"]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("tiny | repeat_last | H=12 L=48 | test mse=") and "n_windows=49" in line


def test_yaml_config_with_cli_override(zero_shot, csv_path, tmp_path):
    config = tmp_path / "zero_shot.yaml"
    out = tmp_path / "yaml_out"
    config.write_text(
        f"model_name_or_path: seasonal_naive\ndataset: {csv_path}\nprediction_length: 24\ncontext_length: 48\n"
        f"output_dir: {out}\ntarget: v1\nshow_progress: false\n"
    )
    zero_shot.main(["--config", str(config), "--prediction_length", "6"])
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "seasonal_naive" and results["prediction_length"] == 6
    assert results["channels"] == ["v1"] and results["test"]["n_items"] == results["test"]["n_windows"]


def test_local_model_folder_uses_its_channels(zero_shot, csv_path, tmp_path):
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    torch.manual_seed(0)
    config = PatchTSTConfig(
        context_length=32,
        prediction_length=8,
        num_input_channels=2,
        patch_length=8,
        patch_stride=8,
        d_model=16,
        num_attention_heads=2,
        num_hidden_layers=1,
        ffn_dim=32,
    )
    PatchTSTForPrediction(config).save_pretrained(tmp_path / "model")
    out = tmp_path / "model_out"
    argv = ["--model_name_or_path", str(tmp_path / "model"), "--dataset", str(csv_path), "--prediction_length", "16"]
    argv += ["--context_length", "40", "--output_dir", str(out), "--device", "cpu", "--show_progress", "false"]
    zero_shot.main(argv)
    results = json.loads((out / "results.json").read_text())
    assert results["channel_independent"] is False  # a 2-channel model gets multivariate windows
    assert np.isfinite(results["test"]["mse"]) and results["test"]["n_items"] == results["test"]["n_windows"]


def test_unknown_dataset_lists_known_benchmarks(zero_shot, tmp_path):
    with pytest.raises(ValueError, match="Known benchmarks: ETTh1"):
        zero_shot.main(["--model_name_or_path", "repeat_last", "--dataset", "ETTh9", "--output_dir", str(tmp_path)])


@needs_data
@pytest.mark.parametrize(
    "baseline, expected_mse, expected_mae", [("repeat_last", 1.294, 0.713), ("seasonal_naive", 0.512, None)]
)
def test_acceptance_etth1_baselines(zero_shot, tmp_path, baseline, expected_mse, expected_mae):
    argv = ["--model_name_or_path", baseline, "--dataset", "ETTh1", "--data_dir", str(DATA_DIR)]
    argv += ["--prediction_length", "96", "--output_dir", str(tmp_path), "--show_progress", "false"]
    zero_shot.main(argv)
    test = json.loads((tmp_path / "results.json").read_text())["test"]
    assert test["n_windows"] == 2785
    assert test["mse"] == pytest.approx(expected_mse, abs=1e-3)
    if expected_mae is not None:
        assert test["mae"] == pytest.approx(expected_mae, abs=1e-3)


def test_no_arguments_evaluates_the_bundled_reference_model_on_bundled_etth1(zero_shot, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TSPRUNE_DATA_DIR", raising=False)
    results = zero_shot.main(["--output_dir", str(tmp_path), "--max_windows", "64"])
    assert results["model"].endswith("reference_model") and results["dataset"] == "ETTh1"
    assert results["test"]["mse"] < 1.0 and results["prediction_length"] == 96


def test_shared_parser_and_seed_default(zero_shot, csv_path, tmp_path):
    from hf_tsprune.pipeline import parse_arguments

    assert parse_arguments(zero_shot.ZeroShotArguments, []).seed == 42  # as the other recipes
    config = tmp_path / "zero_shot.yaml"
    config.write_text(f"model_name_or_path: repeat_last\ndataset: {csv_path}\nmetrics: [mse, mae]\nnot_a_setting: 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        zero_shot.main(["--config", str(config)])
