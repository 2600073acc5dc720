"""Finetuning a pruned checkpoint past one process: two CPU processes (DDP over gloo) finetune it, the saved checkpoint
reloads exactly; `--use_fsdp` on CPU processes, which accelerate runs as DDP, is said so instead of passing silently."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from test_surgery import random_masks
from transformers import AutoModelForTimeSeriesPrediction, TimesFm2_5Config, TimesFm2_5ModelForPrediction

from hf_tsprune import install_masks, save_pruned, shrink
from hf_tsprune.data import load_forecasting_dataset
from hf_tsprune.evaluation import evaluate_forecaster

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no"]


def pruned_task(folder: Path) -> None:
    t = np.arange(1200)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "date": pd.date_range("2020-01-01", periods=len(t), freq="h"),
        "a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(len(t)),
        "b": np.cos(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(len(t)),
    })  # fmt: skip
    frame.to_csv(folder / "tiny.csv", index=False)
    torch.manual_seed(0)
    config = TimesFm2_5Config(
        patch_length=8, context_length=64, horizon_length=16, num_hidden_layers=2, hidden_size=32,
        intermediate_size=64, head_dim=8, num_attention_heads=4, num_key_value_heads=4, output_quantile_len=16,
        max_position_embeddings=64,
    )  # fmt: skip
    model = TimesFm2_5ModelForPrediction(config).eval()
    install_masks(model)
    save_pruned(model, folder / "pruned", plan=shrink(model, random_masks(model, 0.4)))


def finetune(folder: Path, out: str, *launch_flags: str) -> subprocess.CompletedProcess:
    argv = [
        "--model_name_or_path", str(folder / "pruned"), "--dataset", str(folder / "tiny.csv"), "--context_length",
        "64", "--prediction_length", "16", "--output_dir", str(folder / out), "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "64", "--disable_tqdm", "true", "--use_cpu", "true", "--finetune_epochs", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    command = [*LAUNCH, *launch_flags, str(ROOT / "recipes" / "finetune.py"), *argv]
    return subprocess.run(command, env=env, check=True, timeout=600, capture_output=True, text=True)


def test_pruned_checkpoint_finetuned_on_two_processes_saves_and_reloads_exactly(tmp_path):
    pruned_task(tmp_path)
    run = finetune(tmp_path, "ddp", "--multi_gpu")
    assert "FSDP was requested" not in run.stderr
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2
    model, info = AutoModelForTimeSeriesPrediction.from_pretrained(
        tmp_path / "ddp" / "model", output_loading_info=True
    )
    assert not any(info.values())
    before = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "pruned")
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.state_dict().items()}
    assert any(not torch.equal(v, before.state_dict()[k]) for k, v in model.state_dict().items())  # it trained
    data = load_forecasting_dataset(str(tmp_path / "tiny.csv"), context_length=64, prediction_length=16)
    test = evaluate_forecaster(model.eval(), data["test"], prediction_length=16, batch_size=64, metrics=("mse",))
    assert test["mse"] == results["finetuned"]["test"]["mse"]  # the reloaded weights are the finetuned ones, exactly


def test_fsdp_on_cpu_processes_is_said_to_run_as_ddp(tmp_path):
    pruned_task(tmp_path)
    run = finetune(tmp_path, "fsdp", "--use_fsdp", "--fsdp_version", "2")
    assert "FSDP was requested" in run.stderr and "MULTI_CPU" in run.stderr
    assert json.loads((tmp_path / "fsdp" / "results.json").read_text())["world_size"] == 2
