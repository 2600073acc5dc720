"""Synthetic time series for pretraining a small reference forecaster, generated on the fly with fixed seeds.

No real data is involved: every series is drawn from a random composition of

- seasonal profiles: one to three periods (sampled in *steps*: 4 to ~1000, integer "calendar" periods such as 24, 96,
  144, 168, 672 and arbitrary non-integer ones; the daily periods of sub-daily sampling rates are drawn most often),
  several harmonics each, with slowly drifting amplitude, cycle-to-cycle amplitude variability (no two days alike,
  so that averaging several cycles beats repeating the last one) and an optional second period that is a multiple of
  the first (daily + weekly);
- trends and levels: linear, piecewise-linear, random walks, slow AR(1) drifts, level shifts;
- KernelSynth-style Gaussian-process samples (random Fourier features of RBF, rational-quadratic and periodic
  kernels, combined by sums and products, plus a linear kernel);
- noise: white, AR(1)-coloured, heteroscedastic, heavy-tailed, sparse spikes; from nearly clean signals to noise
  several times larger than the seasonal profile;
- a few special series (white noise, random walk, flat, steps, square/sawtooth waves, intermittent bursts);
- TSMixup-style convex mixtures of one to three series.

The generator is vectorised with numpy (a batch of 1024 series of length 640 takes a few tens of milliseconds) and
deterministic given its seed. `SyntheticSeriesDataset` wraps it as a `torch.utils.data.IterableDataset` for the
`transformers.Trainer`; `make_validation_set` draws a fixed held-out set from a different seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "SyntheticConfig",
    "SyntheticSeriesDataset",
    "generate_batch",
    "make_validation_set",
]

# Periods (in steps) of common sampling rates: hourly (24, 168), 15-minute (96, 672), 10-minute (144, 1008),
# 5-minute (288), half-hourly (48, 336), minutes (60), daily (7, 30.4, 365.25), monthly (12), quarterly (4), ...
CALENDAR_PERIODS = np.array([24, 168, 96, 672, 144, 48, 336, 288, 12, 7, 30.4375, 52.18, 60, 4, 365.25, 720, 1008])
# Sampling weights: daily cycles of sub-daily data (24, 96, 144, 48, 288) are the most common periodicity of real
# operational series (energy, traffic, weather, sensors), so they are drawn twice as often as the others.
CALENDAR_WEIGHTS = np.array([2, 1, 2, 1, 2, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.float64)
CALENDAR_WEIGHTS /= CALENDAR_WEIGHTS.sum()
# Multipliers for a second period attached to the first one (daily -> weekly, hourly -> daily, ...).
PERIOD_MULTIPLIERS = np.array([7.0, 7.0, 7.0, 4.0, 12.0, 24.0, 2.0, 3.0, 30.4375, 52.18])


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic generator.

    Args:
        length: Length of every generated series (context + horizon).
        context_length: Leading part used for scale statistics (the model's context).
        p_calendar_period: Probability that a seasonal period is a calendar period rather than a random one.
        p_kernel_synth: Share of series built from KernelSynth-style GP samples instead of the structural model.
        p_special: Share of special series (noise, random walk, flat, steps, waves, intermittent).
        p_mixup: Share of series replaced by a TSMixup convex mixture of 2-3 series.
        max_mixup: Largest number of series in one mixture.
        p_cycle_variability: Probability that a seasonal term varies its amplitude from one cycle to the next.
        p_high_noise: Share of structural series whose noise is drawn from the high range (0.3 to 3 times the
            seasonal amplitude) rather than the full range (0.02 to 1.5).
    """

    length: int = 640
    context_length: int = 512
    p_calendar_period: float = 0.6
    p_kernel_synth: float = 0.25
    p_special: float = 0.05
    p_mixup: float = 0.25
    max_mixup: int = 3
    p_cycle_variability: float = 0.5
    p_high_noise: float = 0.4


def _loguniform(rng: np.random.Generator, low: float, high: float, size) -> np.ndarray:
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


def _standardize(x: np.ndarray, context_length: int) -> np.ndarray:
    ctx = x[:, :context_length]
    mean = ctx.mean(axis=1, keepdims=True)
    std = ctx.std(axis=1, keepdims=True)
    return (x - mean) / np.where(std < 1e-8, 1.0, std)


def _smooth_noise(rng: np.random.Generator, n: int, length: int, lengthscale: np.ndarray) -> np.ndarray:
    """Smooth unit-variance random functions (Gaussian-process samples with an RBF kernel), one per row.

    White noise filtered in the frequency domain by the RBF spectral density (zero-padded to twice the length so the
    circular wrap-around does not correlate the two ends).

    Args:
        rng: Random generator.
        n: Number of rows.
        length: Number of steps.
        lengthscale: (n,) RBF lengthscales in steps.
    """
    size = 2 * length
    spectrum = np.fft.rfft(rng.standard_normal((n, size)), axis=1)
    freq = np.fft.rfftfreq(size)[None, :]
    spectrum *= np.exp(-((np.pi * freq * lengthscale[:, None]) ** 2))
    out = np.fft.irfft(spectrum, n=size, axis=1)[:, :length]
    return out / (out.std(axis=1, keepdims=True) + 1e-8)


def _harmonic_sum(t: np.ndarray, period: np.ndarray, coef: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Sum over k of coef[:, k] * sin(2 pi (k + 1) t / period + phase[:, k]) via powers of exp(i theta).

    Args:
        t: (n, L) or (1, L) times.
        period: (n,) periods.
        coef: (n, K) amplitudes.
        phase: (n, K) phases.
    """
    # Angles reduced modulo 2 pi in float64 first, so that complex64 keeps the precision at large t.
    theta = np.mod(t / period[:, None], 1.0) * (2 * np.pi)
    z = np.exp(1j * theta.astype(np.float32))
    weights = (coef * np.exp(1j * phase)).astype(np.complex64)
    zk = z.copy()
    acc = np.zeros(z.shape, dtype=np.complex64)
    for k in range(coef.shape[1]):
        acc += weights[:, k, None] * zk
        if k + 1 < coef.shape[1]:
            zk *= z
    return acc.imag


def _ar1(rng: np.random.Generator, phi: np.ndarray, n: int, length: int) -> np.ndarray:
    """Stationary AR(1) paths with unit marginal variance, one coefficient per row."""
    eps = rng.standard_normal((n, length))
    out = np.empty((n, length))
    out[:, 0] = eps[:, 0]
    innov = np.sqrt(np.clip(1.0 - phi**2, 1e-6, None))
    for i in range(1, length):
        out[:, i] = phi * out[:, i - 1] + innov * eps[:, i]
    return out


def _sample_periods(rng: np.random.Generator, size, p_calendar: float) -> np.ndarray:
    calendar = rng.choice(CALENDAR_PERIODS, size=size, p=CALENDAR_WEIGHTS)
    jitter = np.where(rng.random(size) < 0.8, 1.0, rng.uniform(0.97, 1.03, size))  # slightly off-calendar clocks
    random_period = _loguniform(rng, 3.0, 1100.0, size)
    return np.where(rng.random(size) < p_calendar, calendar * jitter, random_period)


def _seasonal(rng: np.random.Generator, n: int, length: int, cfg: SyntheticConfig) -> np.ndarray:
    """Sum of up to three periodic profiles with harmonics and slowly drifting amplitude/shape."""
    terms, harmonics = 3, 6
    t = np.arange(length, dtype=np.float64)[None, :] + rng.uniform(0, 5000, (n, 1))
    periods = _sample_periods(rng, (n, terms), cfg.p_calendar_period)
    # Second term is often a multiple of the first (daily + weekly); third is free.
    linked = rng.random(n) < 0.6
    periods[:, 1] = np.where(linked, periods[:, 0] * rng.choice(PERIOD_MULTIPLIERS, n), periods[:, 1])
    n_terms = rng.choice([1, 2, 3], size=n, p=[0.35, 0.45, 0.2])
    term_on = np.arange(terms)[None, :] < n_terms[:, None]
    term_amp = _loguniform(rng, 0.15, 1.0, (n, terms)) * term_on
    term_amp[:, 0] = np.where(n_terms > 0, 1.0, 0.0)
    n_harm = rng.integers(1, harmonics + 1, (n, terms))
    decay = rng.uniform(0.5, 2.0, (n, terms, 1))
    k = np.arange(1, harmonics + 1, dtype=np.float64)[None, None, :]
    harm_amp = rng.standard_normal((n, terms, harmonics)) * k ** (-decay)
    harm_amp *= k <= n_harm[:, :, None]
    # Sharp, peaky profiles (e.g. daily load with a narrow peak) need many harmonics with slow decay.
    peaky = rng.random((n, terms, 1)) < 0.15
    harm_amp = np.where(peaky, np.abs(rng.standard_normal((n, terms, harmonics))) * k ** (-0.3), harm_amp)
    phase = rng.uniform(0, 2 * np.pi, (n, terms, harmonics))
    out = np.zeros((n, length))
    for j in range(terms):
        wave = _harmonic_sum(t, periods[:, j], harm_amp[:, j], phase[:, j])
        wave /= np.sqrt((harm_amp[:, j] ** 2).sum(axis=1, keepdims=True) / 2 + 1e-8)
        # Amplitude drift: 1 + a * smooth noise with a lengthscale of a few periods.
        drift = _smooth_noise(rng, n, length, periods[:, j] * _loguniform(rng, 1.0, 20.0, n))
        drift_amp = rng.uniform(0, 0.5, (n, 1)) * (rng.random((n, 1)) < 0.7)
        wave *= 1.0 + drift_amp * drift
        # Cycle-to-cycle variability: every cycle (day, week, ...) gets its own log-normal amplitude, correlated
        # across neighbouring cycles by an AR(1) with coefficient `rho`.
        cycle = np.floor(t / periods[:, j, None])
        cycle = (cycle - cycle[:, :1]).astype(np.int64)
        rho = rng.uniform(0.0, 0.9, n)
        per_cycle = _ar1(rng, rho, n, int(cycle.max()) + 1)
        cycle_amp = rng.uniform(0.1, 0.6, (n, 1)) * (rng.random((n, 1)) < cfg.p_cycle_variability)
        wave *= np.exp(cycle_amp * np.take_along_axis(per_cycle, cycle, axis=1) - cycle_amp**2 / 2)
        out += term_amp[:, j, None] * wave
    return out


def _trend(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """Levels and trends: linear, piecewise linear, random walk, slow AR(1), level shifts, smooth GP drift."""
    t = np.arange(length, dtype=np.float64)[None, :] / length
    out = np.zeros((n, length))
    # linear
    on = rng.random((n, 1)) < 0.4
    out += on * rng.standard_normal((n, 1)) * t
    # piecewise linear with up to 3 knots
    on = rng.random((n, 1)) < 0.25
    knots = rng.uniform(0, 1, (n, 3))
    slopes = rng.standard_normal((n, 3)) * (rng.random((n, 3)) < 0.7)
    out += on * np.einsum("nk,nkl->nl", slopes, np.maximum(t[:, None, :] - knots[:, :, None], 0.0))
    # random walk
    on = rng.random((n, 1)) < 0.3
    out += on * np.cumsum(rng.standard_normal((n, length)), axis=1) / math.sqrt(length) * rng.uniform(0.2, 1.5, (n, 1))
    # slow AR(1) level
    on = rng.random((n, 1)) < 0.3
    phi = 1.0 - _loguniform(rng, 0.002, 0.1, n)
    out += on * _ar1(rng, phi, n, length) * rng.uniform(0.2, 1.0, (n, 1))
    # level shifts
    on = rng.random((n, 1)) < 0.15
    pos = rng.uniform(0, 1, (n, 3))
    jumps = rng.standard_normal((n, 3)) * (rng.random((n, 3)) < 0.5)
    out += on * np.einsum("nk,nkl->nl", jumps, (t[:, None, :] > pos[:, :, None]).astype(np.float64))
    # smooth GP drift with a long lengthscale
    on = rng.random((n, 1)) < 0.3
    out += on * _smooth_noise(rng, n, length, _loguniform(rng, 50.0, 1000.0, n)) * rng.uniform(0.2, 1.0, (n, 1))
    return out


def _noise(rng: np.random.Generator, n: int, length: int, seasonal: np.ndarray) -> np.ndarray:
    """Unit-scale noise: white or AR(1)-coloured, sometimes heteroscedastic, heavy-tailed or spiky."""
    phi = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.0, 0.95, n))
    noise = _ar1(rng, phi, n, length)
    heavy = rng.random((n, 1)) < 0.1
    noise = np.where(
        heavy, noise * np.sqrt(rng.chisquare(3, (n, 1)) / 3) / np.sqrt(rng.chisquare(3, (n, length)) / 3 + 0.1), noise
    )
    hetero = rng.random((n, 1)) < 0.2
    s = seasonal / (np.abs(seasonal).max(axis=1, keepdims=True) + 1e-8)
    noise = np.where(hetero, noise * (1.0 + 0.8 * s), noise)
    spikes = (rng.random((n, 1)) < 0.05) & (rng.random((n, length)) < 0.01)
    noise = noise + spikes * rng.standard_normal((n, length)) * 5.0
    return noise


def _kernel_synth(rng: np.random.Generator, n: int, length: int, cfg: SyntheticConfig) -> np.ndarray:
    """KernelSynth-style GP samples from random kernel compositions, via random Fourier features.

    Each row combines two or three base GP samples (RBF, rational quadratic, periodic, linear) by sums or products.
    """
    t = np.arange(length, dtype=np.float64)
    base = []
    for _ in range(3):
        kind = rng.integers(0, 4, n)  # 0 rbf, 1 rq, 2 periodic, 3 linear
        ls = _loguniform(rng, 3.0, 500.0, n)
        rbf = _smooth_noise(rng, n, length, ls)
        # rational quadratic = scale mixture of RBFs: random lengthscale per row from a gamma mixture
        rq = _smooth_noise(rng, n, length, ls * np.sqrt(1.0 / rng.gamma(rng.uniform(0.5, 3.0, n), 1.0)))
        period = _sample_periods(rng, n, cfg.p_calendar_period)
        h = np.arange(1, 9, dtype=np.float64)
        lp = rng.uniform(0.3, 2.0, (n, 1))
        coef = np.exp(-0.5 * (h[None, :] * lp) ** 2 / 2) * rng.standard_normal((n, 8))
        coef[:, 0] = np.where(np.abs(coef[:, 0]) < 0.3, 0.3 * np.sign(coef[:, 0] + 1e-9), coef[:, 0])
        ph = rng.uniform(0, 2 * np.pi, (n, 8))
        per = _harmonic_sum(t[None, :], period, coef, ph)
        per /= np.sqrt((coef**2).sum(axis=1, keepdims=True) / 2 + 1e-8)
        lin = (t[None, :] / length - rng.uniform(0, 1, (n, 1))) * rng.standard_normal((n, 1)) * 2
        sample = np.select([kind[:, None] == 0, kind[:, None] == 1, kind[:, None] == 2], [rbf, rq, per], lin)
        base.append(sample)
    product = rng.random((n, 2)) < 0.3
    out = base[0]
    out = np.where(product[:, :1], out * base[1], out + base[1] * rng.uniform(0.2, 1.0, (n, 1)))
    third = rng.random((n, 1)) < 0.5
    out = np.where(third & product[:, 1:], out * (1 + 0.5 * base[2]), np.where(third, out + 0.5 * base[2], out))
    white = rng.random((n, 1)) < 0.7
    out = out + white * rng.standard_normal((n, length)) * _loguniform(rng, 0.01, 0.5, (n, 1)) * out.std(
        axis=1, keepdims=True
    )
    return out


def _special(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """Edge cases: white noise, random walk, flat, steps, square/sawtooth waves, intermittent bursts."""
    t = np.arange(length, dtype=np.float64)[None, :]
    kind = rng.integers(0, 7, (n, 1))
    white = rng.standard_normal((n, length))
    walk = np.cumsum(rng.standard_normal((n, length)), axis=1)
    flat = np.full((n, length), 1.0) + (rng.random((n, 1)) < 0.5) * 1e-3 * rng.standard_normal((n, length))
    pos = rng.uniform(0, length, (n, 4))
    steps = np.einsum("nk,nkl->nl", rng.standard_normal((n, 4)), (t[:, None, :] > pos[:, :, None]).astype(np.float64))
    period = _loguniform(rng, 4.0, 400.0, (n, 1))
    phase = rng.uniform(0, 1, (n, 1))
    frac = (t / period + phase) % 1.0
    square = np.where(frac < rng.uniform(0.2, 0.8, (n, 1)), 1.0, -1.0)
    saw = frac
    bursts = (rng.random((n, length)) < rng.uniform(0.01, 0.2, (n, 1))) * rng.exponential(1.0, (n, length))
    out = np.select([kind == j for j in range(6)], [white, walk, flat, steps, square, saw], bursts)
    return out + (kind >= 3) * rng.standard_normal((n, length)) * _loguniform(rng, 0.001, 0.2, (n, 1))


def generate_batch(n: int, rng: np.random.Generator, config: SyntheticConfig | None = None) -> np.ndarray:
    """Draw `n` synthetic series.

    Args:
        n: Number of series.
        rng: Numpy random generator (the only source of randomness).
        config: Generator settings; defaults to `SyntheticConfig()`.

    Returns:
        `float32` array of shape `(n, config.length)`, each row standardised on its first `context_length` steps
        and then given a random affine transform (offset, scale, sign).
    """
    cfg = config or SyntheticConfig()
    length = cfg.length
    seasonal = _seasonal(rng, n, length, cfg)
    seasonal_on = rng.random((n, 1)) < 0.9
    seasonal = seasonal * seasonal_on
    trend = _trend(rng, n, length)
    noise = _noise(rng, n, length, seasonal)
    # Relative scales: seasonality ~1, trend and noise log-uniform so that every signal-to-noise ratio appears.
    trend_scale = _loguniform(rng, 0.05, 3.0, (n, 1))
    noise_scale = np.where(
        rng.random((n, 1)) < cfg.p_high_noise, _loguniform(rng, 0.3, 3.0, (n, 1)), _loguniform(rng, 0.02, 1.5, (n, 1))
    )
    structural = seasonal + trend_scale * trend + noise_scale * noise

    out = structural
    ks_rows = rng.random(n) < cfg.p_kernel_synth
    if ks_rows.any():
        out[ks_rows] = _kernel_synth(rng, int(ks_rows.sum()), length, cfg)
    out = _standardize(out, cfg.context_length)

    # TSMixup: convex mixtures of 2..max_mixup standardised series of this batch.
    mix_rows = np.flatnonzero(rng.random(n) < cfg.p_mixup)
    if len(mix_rows):
        k = rng.integers(2, cfg.max_mixup + 1, len(mix_rows))
        weights = rng.dirichlet(np.ones(cfg.max_mixup) * 1.5, len(mix_rows)) * (
            np.arange(cfg.max_mixup)[None] < k[:, None]
        )
        weights /= weights.sum(axis=1, keepdims=True)
        partners = rng.integers(0, n, (len(mix_rows), cfg.max_mixup))
        partners[:, 0] = mix_rows
        mixed = np.einsum("mk,mkl->ml", weights, out[partners])
        out[mix_rows] = _standardize(mixed, cfg.context_length)

    special_rows = rng.random(n) < cfg.p_special
    if special_rows.any():
        out[special_rows] = _special(rng, int(special_rows.sum()), length)

    scale = _loguniform(rng, 0.01, 100.0, (n, 1)) * np.where(rng.random((n, 1)) < 0.5, -1.0, 1.0)
    offset = rng.standard_normal((n, 1)) * _loguniform(rng, 0.01, 100.0, (n, 1))
    out = out * scale + offset
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def make_validation_set(n: int = 2048, seed: int = 20_250_529, config: SyntheticConfig | None = None) -> np.ndarray:
    """A fixed held-out synthetic set (its own seed), for checkpoint selection and hyper-parameters.

    Args:
        n: Number of series.
        seed: Seed of the held-out set; keep it different from the training seed.
        config: Generator settings.
    """
    rng = np.random.default_rng(seed)
    chunks = [generate_batch(min(1024, n - i), rng, config) for i in range(0, n, 1024)]
    return np.concatenate(chunks, axis=0)


class SyntheticSeriesDataset(torch.utils.data.IterableDataset):
    """Endless stream of synthetic series as `{"series": FloatTensor(length)}` examples.

    Each worker (and each process of a distributed run) draws from its own `np.random.SeedSequence` child of
    `seed`, so the stream is reproducible for a fixed seed and worker count.

    Args:
        seed: Base seed of the stream.
        config: Generator settings.
        chunk_size: Series generated per vectorised call.
        max_samples: Stop after this many examples per worker (`None`: endless).
    """

    def __init__(
        self,
        seed: int = 0,
        config: SyntheticConfig | None = None,
        chunk_size: int = 1024,
        max_samples: int | None = None,
    ):
        super().__init__()
        self.seed = seed
        self.config = config or SyntheticConfig()
        self.chunk_size = chunk_size
        self.max_samples = max_samples

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(rank, worker)))
        produced = 0
        while self.max_samples is None or produced < self.max_samples:
            chunk = torch.from_numpy(generate_batch(self.chunk_size, rng, self.config))
            for row in chunk:
                if self.max_samples is not None and produced >= self.max_samples:
                    return
                produced += 1
                yield {"series": row}
