"""Tests of hf_tsprune.metrics: values, masks, accumulation, Trainer compute_metrics, offline evaluate modules."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_tsprune.metrics import (
    METRIC_NAMES,
    ForecastMetrics,
    load_metric,
    mae,
    make_compute_metrics,
    mase,
    metric_module_path,
    mse,
    preprocess_logits_for_metrics,
    select_point_forecast,
    smape,
    weighted_quantile_loss,
)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 5, 2)), rng.normal(size=(6, 5, 2)), rng.normal(size=(6, 12, 2))


def test_mse_mae_match_numpy_and_accept_tensors(arrays):
    pred, ref, _ = arrays
    assert mse(pred, ref) == pytest.approx(np.mean((pred - ref) ** 2))
    assert mae(pred, ref) == pytest.approx(np.mean(np.abs(pred - ref)))
    assert mse(torch.tensor(pred), torch.tensor(ref)) == pytest.approx(np.mean((pred - ref) ** 2))


def test_masks_skip_missing_targets(arrays):
    pred, ref, _ = arrays
    mask = np.ones_like(ref)
    mask[0, :, 1] = 0
    ref_with_nan = ref.copy()
    ref_with_nan[0, :, 1] = np.nan
    kept = mask.astype(bool)
    assert mse(pred, ref_with_nan, mask) == pytest.approx(np.mean((pred[kept] - ref[kept]) ** 2))
    assert mae(pred, ref_with_nan, mask) == pytest.approx(np.mean(np.abs(pred[kept] - ref[kept])))


def test_smape_values():
    pred = np.array([[1.0, 0.0, -2.0]])
    ref = np.array([[3.0, 0.0, 2.0]])
    # 2*2/4 = 1, 0/0 -> 0, 2*4/4 = 2
    assert smape(pred, ref) == pytest.approx((1.0 + 0.0 + 2.0) / 3)


def test_mase_by_hand():
    past = np.array([[0.0, 1.0, 0.0, 1.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    ref = np.array([[0.0, 1.0], [5.0, 5.0]])
    pred = np.array([[0.5, 0.5], [4.0, 6.0]])
    # series 0: lag-1 scale = 1, mae 0.5; lag-2 scale = 0 -> skipped; series 1: constant context -> skipped
    assert mase(pred[:1], ref[:1], past[:1], season_length=1) == pytest.approx(0.5)
    assert mase(pred, ref, past, season_length=1) == pytest.approx(0.5)
    assert np.isnan(mase(pred, ref, past, season_length=2))
    # a context not longer than the season falls back to lag 1
    assert mase(pred[:1], ref[:1], past[:1], season_length=10) == pytest.approx(0.5)


def test_weighted_quantile_loss_by_hand():
    ref = np.array([[1.0, -3.0]])
    quantiles = np.array([[[0.0, 2.0], [-4.0, -1.0]]])  # levels 0.1, 0.9
    levels = [0.1, 0.9]
    losses = []
    for q_index, q in enumerate(levels):
        diff = ref - quantiles[..., q_index]
        losses.append(2 * np.sum(np.abs(diff * ((ref <= quantiles[..., q_index]) - q))) / np.sum(np.abs(ref)))
    assert weighted_quantile_loss(quantiles, ref, levels) == pytest.approx(np.mean(losses))
    # one median level: wQL = sum|e| / sum|y|
    median = np.array([[[2.0], [-1.0]]])
    assert weighted_quantile_loss(median, ref, [0.5]) == pytest.approx((1 + 2) / 4)


def test_accumulator_over_batches_with_curves(arrays):
    pred, ref, past = arrays
    acc = ForecastMetrics(["mse", "mae", "mase", "smape"], season_length=2)
    for start in range(0, 6, 4):
        acc.update(pred[start : start + 4], ref[start : start + 4], past_values=past[start : start + 4])
    result = acc.compute()
    assert result["mse"] == pytest.approx(mse(pred, ref))
    assert result["mase"] == pytest.approx(mase(pred, ref, past, season_length=2))
    assert result["num_values"] == pred.size
    curve = result["per_horizon"]["mse"]
    assert len(curve) == 5
    np.testing.assert_allclose(curve, ((pred - ref) ** 2).mean(axis=(0, 2)))
    with pytest.raises(ValueError, match="Unknown metrics"):
        ForecastMetrics(["rmse"])
    with pytest.raises(ValueError, match="same shape"):
        ForecastMetrics().update(pred[:, :3], ref)


def test_compute_metrics_for_trainer_outputs(arrays):
    pred, ref, past = arrays
    compute = make_compute_metrics(["mse", "mae", "mase"], season_length=1, per_horizon=True)
    # PatchTST-like outputs: (prediction_outputs, loc, scale)
    loc = np.zeros((6, 1, 2))
    result = compute(EvalPrediction(predictions=(pred, loc, loc), label_ids=ref, inputs=past))
    assert result["mse"] == pytest.approx(mse(pred, ref))
    assert result["mase"] == pytest.approx(mase(pred, ref, past))
    assert "mse_step_5" in result
    # TimesFM-like outputs, channel-independent labels: (last_hidden_state, mean_predictions, full_predictions);
    # the native horizon (8) is longer than the labels' (5)
    labels = ref[..., 0]
    mean = np.concatenate([pred[..., 0], np.zeros((6, 3))], axis=1)
    hidden = np.zeros((6, 4, 16))
    full = np.zeros((6, 8, 10))
    result = make_compute_metrics()(EvalPrediction(predictions=(hidden, mean, full), label_ids=labels))
    assert result["mse"] == pytest.approx(mse(pred[..., 0], labels))
    # labels with an observed mask
    mask = np.ones_like(labels)
    mask[:, -1] = 0
    result = make_compute_metrics()(EvalPrediction(predictions=pred[..., :1], label_ids=(labels, mask)))
    assert result["mse"] == pytest.approx(mse(pred[:, :4, 0], labels[:, :4]))
    with pytest.raises(ValueError, match="No model output fits"):
        select_point_forecast((hidden,), labels)


def test_preprocess_logits_keeps_the_point_forecast(arrays):
    pred, ref, _ = arrays
    logits = (torch.zeros(6, 4, 16), torch.tensor(pred), torch.zeros(6, 5, 2, 9))
    kept = preprocess_logits_for_metrics(logits, torch.tensor(ref))
    torch.testing.assert_close(kept, torch.tensor(pred))


def test_evaluate_modules_load_offline(arrays):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    pred, ref, past = arrays
    flat_pred, flat_ref, flat_past = pred[..., 0], ref[..., 0], past[..., 0]
    assert os.path.isfile(os.path.join(metric_module_path("mse"), "mse.py"))
    expected = {
        "mse": mse(flat_pred, flat_ref),
        "mae": mae(flat_pred, flat_ref),
        "smape": smape(flat_pred, flat_ref),
        "mase": mase(flat_pred, flat_ref, flat_past, season_length=2),
    }
    for name in ("mse", "mae", "smape"):
        assert load_metric(name).compute(predictions=flat_pred, references=flat_ref)[name] == pytest.approx(
            expected[name]
        )
    result = load_metric("mase").compute(
        predictions=flat_pred, references=flat_ref, past_values=flat_past, season_length=2
    )
    assert result["mase"] == pytest.approx(expected["mase"])
    quantiles = np.stack([flat_pred - 1, flat_pred, flat_pred + 1], axis=-1)
    result = load_metric("wql").compute(predictions=quantiles, references=flat_ref, quantile_levels=[0.1, 0.5, 0.9])
    assert result["wql"] == pytest.approx(weighted_quantile_loss(quantiles, flat_ref, [0.1, 0.5, 0.9]))
    multivariate = load_metric("mse", "multivariate")
    assert multivariate.compute(predictions=pred, references=ref)["mse"] == pytest.approx(mse(pred, ref))
    assert set(METRIC_NAMES) == {"mse", "mae", "mase", "smape", "wql"}
