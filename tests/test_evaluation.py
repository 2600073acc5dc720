"""Tests of hf_tsprune.evaluation and hf_tsprune.adapters with naive baselines and tiny random-weight models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import (
    PatchTSMixerConfig,
    PatchTSMixerForPrediction,
    PatchTSTConfig,
    PatchTSTForPrediction,
    TimesFm2_5Config,
    TimesFm2_5ModelForPrediction,
    TimesFmConfig,
    TimesFmModelForPrediction,
)

from hf_tsprune import families
from hf_tsprune.adapters import get_adapter
from hf_tsprune.data import get_window_source, load_forecasting_dataset
from hf_tsprune.evaluation import NaiveForecaster, evaluate_forecaster, forecast, load_forecaster
from hf_tsprune.metrics import make_compute_metrics, mse


def tiny_patchtst(channels=1, context=32, horizon=8, loss="mse"):
    torch.manual_seed(0)
    config = PatchTSTConfig(
        context_length=context,
        prediction_length=horizon,
        num_input_channels=channels,
        patch_length=8,
        patch_stride=8,
        d_model=16,
        num_attention_heads=2,
        num_hidden_layers=1,
        ffn_dim=32,
        loss=loss,
    )
    return PatchTSTForPrediction(config).eval()


def tiny_timesfm():
    torch.manual_seed(0)
    config = TimesFmConfig(
        patch_length=8,
        context_length=32,
        horizon_length=8,
        num_hidden_layers=1,
        hidden_size=16,
        intermediate_size=16,
        head_dim=8,
        num_attention_heads=2,
    )
    return TimesFmModelForPrediction(config).eval()


def tiny_timesfm2_5():
    torch.manual_seed(0)
    config = TimesFm2_5Config(
        patch_length=8,
        context_length=64,
        horizon_length=8,
        num_hidden_layers=1,
        hidden_size=16,
        intermediate_size=16,
        head_dim=8,
        num_attention_heads=2,
        num_key_value_heads=2,
        output_quantile_len=16,
    )
    return TimesFm2_5ModelForPrediction(config).eval()


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    length = 240
    steps = np.arange(length)
    frame = pd.DataFrame({"date": pd.date_range("2022-01-01", periods=length, freq="h")})
    for c in range(3):
        frame[f"c{c}"] = np.sin(2 * np.pi * steps / 24 + c) * (c + 1) + 0.1 * rng.normal(size=length) + 5 * c
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def windows(csv_path):
    return load_forecasting_dataset(csv_path, context_length=32, prediction_length=16)


def manual_scores(dataset, predict):
    batch = dataset[:]
    pred = predict(batch["past_values"])
    return mse(pred, batch["future_values"].numpy())


def test_naive_forecasters_on_arrays():
    past = np.arange(2 * 10, dtype=float).reshape(2, 10)
    np.testing.assert_array_equal(NaiveForecaster("repeat_last").predict(past, 3), [[9, 9, 9], [19, 19, 19]])
    np.testing.assert_array_equal(NaiveForecaster("seasonal_naive", 4).predict(past, 6)[0], [6, 7, 8, 9, 6, 7])
    multivariate = np.stack([past, -past], axis=-1)
    assert NaiveForecaster("seasonal_naive", 4).predict(multivariate, 6).shape == (2, 6, 2)
    with pytest.raises(ValueError, match="context of at least 12"):
        NaiveForecaster("seasonal_naive", 12).predict(past, 3)
    with pytest.raises(ValueError, match="Unknown baseline"):
        NaiveForecaster("drift")


def test_seasonal_average_is_the_mean_of_the_same_step_of_the_last_seasons():
    past = np.random.default_rng(0).normal(size=(3, 30))
    forecast = NaiveForecaster("seasonal_average", season_length=4, num_seasons=3).predict(past, 6)
    expected = [[past[i, [30 + h % 4 - 4 * k for k in (1, 2, 3)]].mean() for h in range(6)] for i in range(3)]
    np.testing.assert_allclose(forecast, expected)
    one_season = NaiveForecaster("seasonal_average", season_length=4, num_seasons=1).predict(past, 6)
    np.testing.assert_array_equal(one_season, NaiveForecaster("seasonal_naive", 4).predict(past, 6))
    assert NaiveForecaster("seasonal_average", 4, 3).predict(np.stack([past, -past], -1), 6).shape == (3, 6, 2)
    with pytest.raises(ValueError, match="context of at least 36"):
        NaiveForecaster("seasonal_average", season_length=4, num_seasons=9).predict(past, 3)
    with pytest.raises(ValueError, match="num_seasons"):
        NaiveForecaster("seasonal_average", 4, num_seasons=0)


def test_evaluate_naive_baselines(windows):
    test = windows["test"]
    result = evaluate_forecaster("repeat_last", test, metrics=("mse", "mae", "mase", "smape"), show_progress=False)
    expected = manual_scores(test, lambda past: past[:, -1:].numpy().repeat(16, axis=1))
    assert result["mse"] == pytest.approx(expected, rel=1e-6)
    assert result["n_items"] == len(test) and result["n_windows"] == len(test) // 3
    assert len(result["per_horizon"]["mse"]) == 16 and all(np.isfinite(result[m]) for m in ("mae", "mase", "smape"))
    seasonal = evaluate_forecaster("seasonal_naive", test, show_progress=False)  # hourly data: season 24
    expected = manual_scores(test, lambda past: NaiveForecaster("seasonal_naive", 24).predict(past.numpy(), 16))
    assert seasonal["mse"] == pytest.approx(expected, rel=1e-6)
    assert seasonal["mse"] < result["mse"]  # the data are daily-periodic
    short = evaluate_forecaster("repeat_last", test, prediction_length=4, max_windows=30, show_progress=False)
    assert short["n_items"] == 30 and len(short["per_horizon"]["mse"]) == 4
    with pytest.raises(ValueError, match="between 1 and the windows' horizon 16"):
        evaluate_forecaster("repeat_last", test, prediction_length=32)


def test_patchtst_contexts_and_rollout(windows):
    test = windows["test"]
    batch = test[:4]
    past = batch["past_values"]
    exact = tiny_patchtst(context=32, horizon=8)
    with torch.no_grad():
        native = exact(past_values=past[..., None]).prediction_outputs[..., 0]
    out = forecast(exact, past, 8)
    torch.testing.assert_close(out.mean, native)
    # horizon 16 > native 8: autoregressive rollout, the first 8 steps unchanged
    rolled = forecast(exact, past, 16).mean
    assert rolled.shape == (4, 16)
    torch.testing.assert_close(rolled[:, :8], native)
    with torch.no_grad():
        second = exact(past_values=torch.cat([past, native], 1)[:, -32:, None]).prediction_outputs[..., 0]
    torch.testing.assert_close(rolled[:, 8:], second)
    # longer model context (front padding, masked) and shorter one (last steps kept)
    assert forecast(tiny_patchtst(context=48), past, 8).mean.shape == (4, 8)
    shorter = tiny_patchtst(context=16)
    torch.testing.assert_close(forecast(shorter, past, 8).mean, forecast(shorter, past[:, -16:], 8).mean)
    result = evaluate_forecaster(exact, test, batch_size=64, show_progress=False)
    assert result["n_items"] == len(test) and np.isfinite(result["mse"])
    expected = manual_scores(test, lambda p: forecast(exact, p, 16).mean.numpy())
    assert result["mse"] == pytest.approx(expected, rel=1e-5)


def test_patchtst_multivariate_and_channel_checks(csv_path, windows):
    multivariate = load_forecasting_dataset(
        csv_path, context_length=32, prediction_length=8, channel_independent=False
    )
    model = tiny_patchtst(channels=3)
    result = evaluate_forecaster(model, multivariate["test"], show_progress=False)
    assert result["n_windows"] == len(multivariate["test"]) and np.isfinite(result["mse"])
    with pytest.raises(ValueError, match="takes 3 channels but the data has 1.*channel_independent=False"):
        evaluate_forecaster(model, windows["test"], show_progress=False)
    # a one-channel model forecasts each channel of multivariate windows: same as channel-independent windows
    single = tiny_patchtst(channels=1)
    ci = load_forecasting_dataset(csv_path, context_length=32, prediction_length=8)
    a = evaluate_forecaster(single, multivariate["test"], show_progress=False)
    b = evaluate_forecaster(single, ci["test"], show_progress=False)
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-5)


def test_patchtst_distribution_head_gives_quantiles(windows):
    torch.manual_seed(0)
    model = tiny_patchtst(loss="nll", horizon=16)
    result = evaluate_forecaster(model, windows["test"], metrics=("mse", "wql"), max_windows=24, show_progress=False)
    assert np.isfinite(result["mse"]) and np.isfinite(result["wql"])


def test_patchtsmixer_with_prediction_channel_indices(csv_path):
    torch.manual_seed(0)
    config = PatchTSMixerConfig(
        context_length=32,
        prediction_length=8,
        num_input_channels=3,
        patch_length=8,
        patch_stride=8,
        d_model=16,
        num_layers=1,
        prediction_channel_indices=[2],
    )
    model = PatchTSMixerForPrediction(config).eval()
    data = load_forecasting_dataset(csv_path, context_length=32, prediction_length=8, channel_independent=False)
    result = evaluate_forecaster(model, data["test"], show_progress=False)
    batch = data["test"][:]
    with torch.no_grad():
        pred = model(past_values=batch["past_values"]).prediction_outputs
    assert result["mse"] == pytest.approx(mse(pred, batch["future_values"][..., 2:]), rel=1e-5)
    with pytest.raises(ValueError, match="Cannot roll out"):
        forecast(model, batch["past_values"][:2], 16)


def test_timesfm_rollout_quantiles_and_metrics(windows):
    model = tiny_timesfm()
    past = windows["test"][:5]["past_values"]
    out = forecast(model, past, 20, freq="h")
    assert out.mean.shape == (5, 20) and out.quantiles.shape == (5, 20, 9) and len(out.quantile_levels) == 9
    with torch.no_grad():
        native = model(past_values=past, freq=[0] * 5).mean_predictions
    torch.testing.assert_close(out.mean[:, :8], native)
    # folding channels into the batch equals forecasting each channel
    multichannel = torch.stack([past, past * 2], dim=-1)
    torch.testing.assert_close(forecast(model, multichannel, 8).mean[..., 1], forecast(model, past * 2, 8).mean)
    result = evaluate_forecaster(
        model, windows["test"], metrics=("mse", "mae", "mase", "smape", "wql"), batch_size=32, show_progress=False
    )
    assert all(np.isfinite(result[m]) for m in ("mse", "mae", "mase", "smape", "wql"))
    assert len(result["per_horizon"]["wql"]) == 16


def test_timesfm2_5_short_and_long_contexts():
    model = tiny_timesfm2_5()
    out = forecast(model, torch.randn(3, 30), 12)  # 30 -> padded to 32, rollout 8 + 4
    assert out.mean.shape == (3, 12) and out.quantiles.shape == (3, 12, 9)
    long = torch.randn(2, 100)
    torch.testing.assert_close(forecast(model, long, 8).mean, forecast(model, long[:, -64:], 8).mean)
    positive = forecast(model, torch.rand(2, 40) + 1, 8).mean
    assert (positive >= 0).all()  # infer_is_positive, applied per series


def test_load_forecaster_local_folder_and_errors(tmp_path):
    assert isinstance(load_forecaster("seasonal_naive", season_length=7), NaiveForecaster)
    model = tiny_patchtst()
    model.save_pretrained(tmp_path / "patchtst")
    loaded = load_forecaster(tmp_path / "patchtst")
    assert isinstance(loaded, PatchTSTForPrediction) and not loaded.training
    assert {"timesfm", "timesfm2_5", "patchtst", "patchtsmixer", "chronos", "chronos_bolt", "ttm"} <= set(families())
    with pytest.raises(ValueError, match="Unsupported model type 'bert'.*PatchTSTForPrediction"):
        get_adapter("bert")


def test_trainer_evaluate_with_compute_metrics(csv_path, tmp_path):
    from transformers import Trainer, TrainingArguments

    data = load_forecasting_dataset(csv_path, context_length=32, prediction_length=8, keep_channel_axis=True)
    model = tiny_patchtst()
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_eval_batch_size=64,
        label_names=["future_values"],
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, compute_metrics=make_compute_metrics(["mse", "mae"]))
    metrics = trainer.evaluate(data["test"])
    reference = evaluate_forecaster(model, data["test"], show_progress=False)
    assert get_window_source(data["test"]).keep_channel_axis
    assert metrics["eval_mse"] == pytest.approx(reference["mse"], rel=1e-4)
    assert metrics["eval_mae"] == pytest.approx(reference["mae"], rel=1e-4)
