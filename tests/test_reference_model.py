"""The bundled reference model (`hf_tsprune/reference_model/`) and its pretraining recipe."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TimesFm2_5ModelForPrediction

import hf_tsprune

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(hf_tsprune.__file__).resolve().parent / "reference_model"


def _recipe():
    spec = importlib.util.spec_from_file_location("pretrain_reference", ROOT / "recipes" / "pretrain_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_reference"] = module
    spec.loader.exec_module(module)
    return module


def test_bundle_files_and_size():
    for name in ("config.json", "model.safetensors", "README.md", "training_log.json"):
        assert (REFERENCE_DIR / name).is_file(), name
    assert (REFERENCE_DIR / "model.safetensors").stat().st_size <= 25 * 2**20
    config = json.loads((REFERENCE_DIR / "config.json").read_text())
    assert config["model_type"] == "timesfm2_5"
    assert config["context_length"] >= 512 and config["horizon_length"] >= 96
    log = json.loads((REFERENCE_DIR / "training_log.json").read_text())
    assert 2e6 <= log["parameters"] <= 10e6
    assert "seed" in log["training_args"] and "synthetic_seed" in log["pretrain_args"]


def test_loads_offline_and_forecasts(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, info = TimesFm2_5ModelForPrediction.from_pretrained(REFERENCE_DIR, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or re-initialised
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 2e6 <= n_params <= 10e6
    t = torch.arange(512, dtype=torch.float32)
    past = torch.stack(
        [torch.sin(2 * torch.pi * t / 24), 5 + 0.01 * t, torch.randn(512, generator=torch.Generator().manual_seed(0))]
    )
    with torch.no_grad():
        out = model(past_values=past, return_dict=True)
    horizon = model.config.horizon_length
    assert out.mean_predictions.shape == (3, horizon)
    assert out.full_predictions.shape == (3, horizon, len(model.config.quantiles) + 1)
    assert torch.isfinite(out.full_predictions).all()
    # a clean daily sine is continued (it is a forecaster, not noise)
    truth = torch.sin(2 * torch.pi * torch.arange(512, 512 + 96) / 24)
    assert torch.mean((out.mean_predictions[0, :96] - truth) ** 2) < 0.1
    # short contexts are front-padded by the model
    with torch.no_grad():
        short = model(past_values=past[:, -100:], return_dict=True).mean_predictions
    assert short.shape == (3, horizon) and torch.isfinite(short).all()


def test_loads_through_evaluation_helper():
    from hf_tsprune.evaluation import forecast, load_forecaster

    model = load_forecaster(REFERENCE_DIR)
    result = forecast(model, np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32), 96)
    assert tuple(result.mean.shape[:2]) == (4, 96)
    assert np.isfinite(np.asarray(result.mean)).all()


def test_every_patch_loss_is_finite_on_flat_and_spiky_series():
    recipe = _recipe()
    config = recipe.build_config(
        recipe.ReferenceModelArguments(
            hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
            num_key_value_heads=2,
        )
    )  # fmt: skip
    model = TimesFm2_5ModelForPrediction(config)
    series = torch.zeros(4, 640)
    series[1] = 3.0  # constant
    series[2, 40:] = 1.0  # flat first patch, then a step
    series[3, 600] = 1e6  # a spike in the horizon
    loss, parts = recipe.every_patch_loss(model, series)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert set(parts) >= {"mse", "pinball", "mse_last"}


def test_pretraining_recipe_smoke(tmp_path):
    recipe = _recipe()
    log = recipe.main(
        [
            "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--hidden_size", "32",
            "--intermediate_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
            "--head_dim", "16", "--num_key_value_heads", "2", "--per_device_train_batch_size", "8",
            "--validation_size", "16", "--chunk_size", "16", "--eval_steps", "1", "--save_steps", "1",
            "--warmup_steps", "1", "--logging_steps", "1", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert log["global_step"] == 2 and log["samples_seen"] == 16
    assert log["best_step"] in (1, 2)
    saved = json.loads((tmp_path / "run" / "training_log.json").read_text())
    assert saved["training_args"]["seed"] == 42 and saved["pretrain_args"]["synthetic_seed"] == 1234
    model, info = TimesFm2_5ModelForPrediction.from_pretrained(tmp_path / "run", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.decode_index in (0, 5)

    # bundling: inference settings chosen on the same held-out synthetic set, card rendered from the template
    bundled = recipe.main(
        ["--bundle_from", str(tmp_path / "run"), "--output_dir", str(tmp_path / "bundle"), "--zero_shot_datasets", ""]
    )
    assert bundled["inference_choice"]["decode_index"] in (0, 5) and bundled["zero_shot"] == []
    assert bundled["bundle_command"].endswith(f"--bundle_from {tmp_path / 'run'} --output_dir {tmp_path / 'bundle'}")
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert bundled["bundle_command"] in card and log["command"] in card
    assert "an amplitude of their own for every" in card  # the generator knobs of the run are described
    model, info = TimesFm2_5ModelForPrediction.from_pretrained(tmp_path / "bundle", output_loading_info=True)
    assert not any(info.values()) and model.config.use_continuous_quantile_head is False


@pytest.mark.skipif(not (REFERENCE_DIR / "README.md").is_file(), reason="no bundled card")
def test_card_has_zero_shot_table():
    card = (REFERENCE_DIR / "README.md").read_text()
    assert "time-series-forecasting" in card
    for dataset in ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather"):
        assert dataset in card
    assert "seasonal naive" in card and "repeat last" in card
