"""The synthetic pretraining generator (`hf_tsprune.synthetic`)."""

import numpy as np
import pytest
import torch

from hf_tsprune.synthetic import (
    SyntheticConfig,
    SyntheticSeriesDataset,
    _harmonic_sum,
    _smooth_noise,
    generate_batch,
    make_validation_set,
)


def test_generate_batch_shape_dtype_finite():
    x = generate_batch(256, np.random.default_rng(0))
    assert x.shape == (256, 640)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()


def test_generate_batch_is_deterministic_per_seed():
    a = generate_batch(64, np.random.default_rng(7))
    b = generate_batch(64, np.random.default_rng(7))
    c = generate_batch(64, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_generate_batch_custom_length():
    cfg = SyntheticConfig(length=200, context_length=128)
    x = generate_batch(32, np.random.default_rng(1), cfg)
    assert x.shape == (32, 200)


def test_series_are_diverse():
    x = generate_batch(512, np.random.default_rng(3)).astype(np.float64)
    ctx = x[:, :512]
    z = (ctx - ctx.mean(1, keepdims=True)) / (ctx.std(1, keepdims=True) + 1e-9)
    # no two standardised series coincide (mixup partners are re-standardised, not copied)
    z = z[ctx.std(1) > 1e-6][:64]
    corr = np.corrcoef(z)
    assert (np.abs(corr[np.triu_indices(len(z), 1)]) < 0.999).mean() > 0.98
    # both signs, many scales
    assert (x.mean(1) > 0).mean() > 0.2 and (x.mean(1) < 0).mean() > 0.2
    scales = ctx.std(1)
    assert scales.max() / max(np.median(scales), 1e-9) > 10


def test_seasonality_is_present():
    # a large share of series has a strong autocorrelation at some lag > 1 (seasonal structure)
    x = generate_batch(256, np.random.default_rng(4)).astype(np.float64)[:, :512]
    x = x - x.mean(1, keepdims=True)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    spec = np.abs(np.fft.rfft(x, axis=1)) ** 2
    peak_share = spec[:, 2:].max(1) / (spec.sum(1) + 1e-12)
    assert (peak_share > 0.2).mean() > 0.3


def test_harmonic_sum_matches_direct_formula():
    rng = np.random.default_rng(0)
    t = np.arange(300, dtype=np.float64)[None, :] + 1234.5
    period = np.array([24.0, 7.3])
    coef = rng.standard_normal((2, 4))
    phase = rng.uniform(0, 6, (2, 4))
    k = np.arange(1, 5)[None, :, None]
    direct = (
        coef[:, :, None] * np.sin(2 * np.pi * k * t[:, None, :] / period[:, None, None] + phase[:, :, None])
    ).sum(1)
    np.testing.assert_allclose(_harmonic_sum(t, period, coef, phase), direct, atol=1e-4)


def test_smooth_noise_unit_variance_and_smoothness():
    rng = np.random.default_rng(0)
    rough = _smooth_noise(rng, 64, 640, np.full(64, 2.0))
    smooth = _smooth_noise(rng, 64, 640, np.full(64, 200.0))
    np.testing.assert_allclose(smooth.std(1), 1.0, atol=1e-4)
    assert np.abs(np.diff(smooth, axis=1)).mean() < np.abs(np.diff(rough, axis=1)).mean() / 10


def test_dataset_stream_reproducible_and_bounded():
    ds = SyntheticSeriesDataset(seed=5, config=SyntheticConfig(length=96, context_length=64), chunk_size=16)
    first = [ex["series"] for _, ex in zip(range(40), ds)]
    again = [ex["series"] for _, ex in zip(range(40), ds)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[0].shape == (96,) and first[0].dtype == torch.float32
    bounded = SyntheticSeriesDataset(seed=5, config=SyntheticConfig(length=96, context_length=64), max_samples=7)
    assert len(list(bounded)) == 7


def test_dataset_workers_draw_different_streams():
    cfg = SyntheticConfig(length=64, context_length=32)
    loader = torch.utils.data.DataLoader(
        SyntheticSeriesDataset(seed=0, config=cfg, chunk_size=8, max_samples=8), batch_size=8, num_workers=2
    )
    a, b = list(loader)
    assert not torch.allclose(a["series"], b["series"])


def test_validation_set_is_fixed_and_held_out():
    cfg = SyntheticConfig(length=96, context_length=64)
    v1 = make_validation_set(40, seed=11, config=cfg)
    v2 = make_validation_set(40, seed=11, config=cfg)
    np.testing.assert_array_equal(v1, v2)
    train = next(iter(SyntheticSeriesDataset(seed=11, config=cfg, chunk_size=40)))["series"].numpy()
    assert not np.any([np.allclose(train, row) for row in v1])


@pytest.mark.parametrize("n", [1, 3])
def test_tiny_batches(n):
    assert generate_batch(n, np.random.default_rng(n)).shape == (n, 640)


def test_cycle_variability_scales_whole_cycles_by_positive_factors():
    """With the same draws, switching cycle-to-cycle variability on only multiplies each term by positive factors
    (log-normal, one per cycle); switched off, the factor is exactly one."""
    from hf_tsprune.synthetic import _seasonal

    off = _seasonal(np.random.default_rng(11), 64, 640, SyntheticConfig(p_cycle_variability=0.0))
    on = _seasonal(np.random.default_rng(11), 64, 640, SyntheticConfig(p_cycle_variability=1.0))
    again = _seasonal(np.random.default_rng(11), 64, 640, SyntheticConfig(p_cycle_variability=0.0))
    np.testing.assert_array_equal(off, again)
    assert not np.allclose(on, off)
    single = np.abs(off) > 1e-3
    # one-term rows: the ratio is the per-cycle factor itself, positive and not constant
    ratio = np.where(single, on / np.where(single, off, 1.0), 1.0)
    spread = np.array([r[s].std() for r, s in zip(ratio, single)])
    assert (spread > 0.02).mean() > 0.5


def test_high_noise_share_makes_series_rougher():
    def roughness(p_high_noise: float) -> float:
        cfg = SyntheticConfig(p_high_noise=p_high_noise, p_kernel_synth=0.0, p_mixup=0.0, p_special=0.0)
        x = generate_batch(512, np.random.default_rng(5), cfg).astype(np.float64)[:, :512]
        z = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-12)
        return float(np.median(np.abs(np.diff(z, axis=1)).mean(1)))

    assert roughness(1.0) > 1.5 * roughness(0.0)
