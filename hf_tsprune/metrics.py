"""Forecast metrics that need no network: MSE, MAE, MASE, sMAPE and the weighted quantile loss.

Arrays are laid out `(num_windows, horizon)` or `(num_windows, horizon, num_channels)`: axis 1 is the forecast step.
Every metric honours an optional observed mask (1 observed, 0 missing) with the references' shape.

- `mse`, `mae`: mean over observed values (the LTSF protocol computes them on standard-scaled values);
- `smape`: mean of `2 |y - y_hat| / (|y| + |y_hat|)` (a fraction in `[0, 2]`, `0/0` counts as 0);
- `mase`: per window and channel, `mean |y - y_hat|` over the horizon divided by the mean absolute seasonal difference
  (`season_length`) of the window's context, then averaged; windows whose context is constant are skipped;
- `wql`: mean over quantile levels `q` of `2 sum |(y - y_hat_q)((y <= y_hat_q) - q)| / sum |y|`
  (the GluonTS/Chronos "mean weighted quantile loss").

[`ForecastMetrics`] accumulates them over batches (with per-step curves), [`make_compute_metrics`] adapts them to
`Trainer(compute_metrics=...)`, and [`load_metric`] loads the same metrics as offline `evaluate` modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

METRIC_NAMES = ("mse", "mae", "mase", "smape", "wql")
"""Metric names understood by [`ForecastMetrics`] and loadable with [`load_metric`]."""

METRIC_MODULES_DIR = Path(__file__).resolve().parent / "metrics_modules"
"""Folder of the `evaluate` metric scripts shipped with the package (one sub-folder per metric)."""


def _to_numpy(array: Any, name: str) -> np.ndarray | None:
    if array is None:
        return None
    if hasattr(array, "detach"):  # torch.Tensor
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array)
    if array.dtype == object:
        raise TypeError(f"`{name}` must be a numeric array or tensor, got ragged/object data.")
    return array.astype(np.float64, copy=False)


def _check_shapes(predictions: np.ndarray, references: np.ndarray, mask: np.ndarray | None) -> None:
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions {predictions.shape} and references {references.shape} must have the same shape "
            "(windows, horizon[, channels]); slice the forecast to the reference horizon first."
        )
    if predictions.ndim < 2:
        raise ValueError(f"Expected arrays of shape (windows, horizon[, channels]), got {predictions.shape}.")
    if mask is not None and mask.shape != references.shape:
        raise ValueError(f"observed_mask {mask.shape} must have the references' shape {references.shape}.")


def seasonal_error(
    past_values: np.ndarray, season_length: int = 1, past_observed_mask: np.ndarray | None = None
) -> np.ndarray:
    """Mean absolute seasonal difference of each context, over axis 1 (the MASE denominator).

    Args:
        past_values (`np.ndarray`): `(windows, context)` or `(windows, context, channels)`.
        season_length (`int`): Seasonal lag; 1 (naive) is used when the context is not longer than it.
        past_observed_mask (`np.ndarray`, *optional*): Pairs with a missing value are skipped.

    Returns:
        `np.ndarray` of shape `(windows,)` or `(windows, channels)`; NaN where no pair is observed.
    """
    past = _to_numpy(past_values, "past_values")
    lag = int(season_length) if past.shape[1] > int(season_length) else 1
    if past.shape[1] <= lag:
        return np.full(past.shape[:1] + past.shape[2:], np.nan)
    diff = np.abs(past[:, lag:] - past[:, :-lag])
    if past_observed_mask is None:
        return diff.mean(axis=1)
    mask = _to_numpy(past_observed_mask, "past_observed_mask")
    pair = mask[:, lag:] * mask[:, :-lag]
    count = pair.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (diff * pair).sum(axis=1) / count, np.nan)


class ForecastMetrics:
    """Accumulate forecast metrics over batches, with per-step (per-horizon) curves.

    Example:

    ```python
    >>> acc = ForecastMetrics(["mse", "mae"])
    >>> acc.update(predictions, references)
    >>> acc.compute()
    {'mse': ..., 'mae': ..., 'per_horizon': {'mse': [...], 'mae': [...]}}
    ```

    Args:
        metrics (`Sequence[str]`, *optional*, defaults to `("mse", "mae")`): Any of [`METRIC_NAMES`].
        season_length (`int`, *optional*, defaults to 1): Seasonal lag of the MASE denominator.
        quantile_levels (`Sequence[float]`, *optional*): Levels of the quantile forecasts given to `update` (`wql`).
        per_horizon (`bool`, *optional*, defaults to `True`): Also return each metric per forecast step.
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("mse", "mae"),
        season_length: int = 1,
        quantile_levels: Sequence[float] | None = None,
        per_horizon: bool = True,
    ):
        unknown = [m for m in metrics if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"Unknown metrics {unknown}; choose from {list(METRIC_NAMES)}.")
        if int(season_length) < 1:
            raise ValueError(f"`season_length` must be a positive integer, got {season_length}.")
        self.metrics = tuple(metrics)
        self.season_length = int(season_length)
        self.quantile_levels = None if quantile_levels is None else np.asarray(quantile_levels, dtype=np.float64)
        self.per_horizon = per_horizon
        self._sums: dict[str, np.ndarray] = {}
        self._warned: set[str] = set()

    def _add(self, key: str, value: np.ndarray) -> None:
        if key in self._sums:
            if self._sums[key].shape != value.shape:
                raise ValueError(
                    f"All batches must share one horizon: got {value.shape} after {self._sums[key].shape}."
                )
            self._sums[key] = self._sums[key] + value
        else:
            self._sums[key] = value.astype(np.float64)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def update(
        self,
        predictions: Any,
        references: Any,
        observed_mask: Any = None,
        past_values: Any = None,
        past_observed_mask: Any = None,
        quantile_predictions: Any = None,
    ) -> None:
        """Add a batch.

        Args:
            predictions (`np.ndarray` or `torch.Tensor`): Point forecasts `(windows, horizon[, channels])`.
            references (`np.ndarray` or `torch.Tensor`): Targets, same shape.
            observed_mask (*optional*): 1 where the target was observed, same shape.
            past_values (*optional*): Contexts `(windows, context[, channels])`, needed for `mase`.
            past_observed_mask (*optional*): Observed mask of `past_values`.
            quantile_predictions (*optional*): `(windows, horizon[, channels], num_quantiles)`, needed for `wql`.
        """
        pred = _to_numpy(predictions, "predictions")
        ref = _to_numpy(references, "references")
        mask = _to_numpy(observed_mask, "observed_mask")
        _check_shapes(pred, ref, mask)
        if mask is None:
            mask = np.ones_like(ref)
        ref = np.where(mask > 0, ref, 0.0)  # missing targets may hold NaN or fill values
        pred = np.where(mask > 0, pred, 0.0)
        reduce_axes = (0,) + tuple(range(2, ref.ndim))
        error = pred - ref
        self._add("count", mask.sum(axis=reduce_axes))
        if "mse" in self.metrics:
            self._add("mse", (error**2 * mask).sum(axis=reduce_axes))
        if "mae" in self.metrics:
            self._add("mae", (np.abs(error) * mask).sum(axis=reduce_axes))
        if "smape" in self.metrics:
            denominator = np.abs(ref) + np.abs(pred)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(denominator > 0, 2.0 * np.abs(error) / denominator, 0.0)
            self._add("smape", (ratio * mask).sum(axis=reduce_axes))
        if "mase" in self.metrics:
            if past_values is None:
                self._warn_once("mase", "MASE needs `past_values`; it is skipped.")
            else:
                scale = seasonal_error(past_values, self.season_length, past_observed_mask)
                valid = np.isfinite(scale) & (scale > 0)
                safe = np.where(valid, scale, 1.0)[:, None]
                weight = mask * valid[:, None].astype(np.float64)  # windows with a constant context are skipped
                self._add("mase", (np.abs(error) / safe * weight).sum(axis=reduce_axes))
                self._add("mase_count", weight.sum(axis=reduce_axes))
        if "wql" in self.metrics:
            if quantile_predictions is None or self.quantile_levels is None:
                self._warn_once("wql", "WQL needs quantile forecasts and `quantile_levels`; it is skipped.")
            else:
                quantiles = _to_numpy(quantile_predictions, "quantile_predictions")
                if quantiles.shape[:-1] != ref.shape or quantiles.shape[-1] != len(self.quantile_levels):
                    raise ValueError(
                        f"quantile_predictions {quantiles.shape} must be the references' shape {ref.shape} plus one "
                        f"axis of {len(self.quantile_levels)} quantile levels."
                    )
                quantiles = np.where(mask[..., None] > 0, quantiles, 0.0)
                q = self.quantile_levels
                diff = ref[..., None] - quantiles
                loss = np.abs(diff * ((ref[..., None] <= quantiles).astype(np.float64) - q))
                self._add("wql", 2.0 * (loss.sum(axis=-1) * mask).sum(axis=reduce_axes) / len(q))
                self._add("wql_scale", (np.abs(ref) * mask).sum(axis=reduce_axes))

    def compute(self) -> dict[str, Any]:
        """The metrics so far: floats, plus `per_horizon` (lists per step) when asked. Missing metrics are NaN."""
        if "count" not in self._sums:
            raise ValueError("No batch was added: call `update` first.")
        count = self._sums["count"]
        results: dict[str, Any] = {}
        curves: dict[str, list[float]] = {}
        denominators = {"mse": "count", "mae": "count", "smape": "count", "mase": "mase_count", "wql": "wql_scale"}
        for name in self.metrics:
            if name not in self._sums:
                results[name] = float("nan")
                continue
            numerator, denominator = self._sums[name], self._sums[denominators[name]]
            total = denominator.sum()
            results[name] = float(numerator.sum() / total) if total > 0 else float("nan")
            if self.per_horizon:
                with np.errstate(invalid="ignore", divide="ignore"):
                    curves[name] = np.where(
                        denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
                    ).tolist()
        results["num_values"] = int(count.sum())
        if self.per_horizon:
            results["per_horizon"] = curves
        return results


def _one_shot(metric: str, predictions: Any, references: Any, **kwargs: Any) -> float:
    season_length = kwargs.pop("season_length", 1)
    quantile_levels = kwargs.pop("quantile_levels", None)
    acc = ForecastMetrics([metric], season_length=season_length, quantile_levels=quantile_levels, per_horizon=False)
    acc.update(predictions, references, **kwargs)
    return acc.compute()[metric]


def mse(predictions: Any, references: Any, observed_mask: Any = None) -> float:
    """Mean squared error over observed values. Arrays `(windows, horizon[, channels])`, numpy or torch."""
    return _one_shot("mse", predictions, references, observed_mask=observed_mask)


def mae(predictions: Any, references: Any, observed_mask: Any = None) -> float:
    """Mean absolute error over observed values. Arrays `(windows, horizon[, channels])`, numpy or torch."""
    return _one_shot("mae", predictions, references, observed_mask=observed_mask)


def smape(predictions: Any, references: Any, observed_mask: Any = None) -> float:
    """Symmetric MAPE, `mean(2 |y - y_hat| / (|y| + |y_hat|))`, a fraction in `[0, 2]` (x100 for percent)."""
    return _one_shot("smape", predictions, references, observed_mask=observed_mask)


def mase(
    predictions: Any,
    references: Any,
    past_values: Any,
    season_length: int = 1,
    observed_mask: Any = None,
    past_observed_mask: Any = None,
) -> float:
    """Mean absolute scaled error, scaled by each window's in-context seasonal naive error.

    Args:
        predictions, references: `(windows, horizon[, channels])`.
        past_values: The contexts `(windows, context[, channels])`.
        season_length (`int`): Seasonal lag of the denominator (see `hf_tsprune.data.seasonal_period`).
        observed_mask, past_observed_mask: Optional observed masks.
    """
    return _one_shot(
        "mase",
        predictions,
        references,
        observed_mask=observed_mask,
        past_values=past_values,
        past_observed_mask=past_observed_mask,
        season_length=season_length,
    )


def weighted_quantile_loss(
    quantile_predictions: Any, references: Any, quantile_levels: Sequence[float], observed_mask: Any = None
) -> float:
    """Mean weighted quantile loss of quantile forecasts `(windows, horizon[, channels], num_quantiles)`.

    Args:
        quantile_predictions: Forecast quantiles, last axis ordered as `quantile_levels`.
        references: Targets `(windows, horizon[, channels])`.
        quantile_levels (`Sequence[float]`): The levels, e.g. `[0.1, ..., 0.9]`.
        observed_mask: Optional observed mask.
    """
    quantiles = _to_numpy(quantile_predictions, "quantile_predictions")
    levels = np.asarray(quantile_levels, dtype=np.float64)
    median = quantiles[..., int(np.argmin(np.abs(levels - 0.5)))]  # any point forecast: only the shapes are checked
    return _one_shot(
        "wql", median, references, observed_mask=observed_mask, quantile_predictions=quantiles, quantile_levels=levels
    )


# --------------------------------------------------------------------------------------------------------------------
# Trainer integration
# --------------------------------------------------------------------------------------------------------------------


def _align(prediction: Any, reference: Any) -> Any:
    """Fit a model output to the references' shape (drop/add a singleton channel axis, cut a longer horizon)."""
    if prediction.ndim == reference.ndim + 1 and prediction.shape[-1] == 1:
        prediction = prediction[..., 0]
    elif prediction.ndim + 1 == reference.ndim and reference.shape[-1] == 1:
        prediction = prediction[..., None]
    if prediction.ndim != reference.ndim or prediction.shape[0] != reference.shape[0]:
        return None
    if prediction.shape[2:] != reference.shape[2:] or prediction.shape[1] < reference.shape[1]:
        return None
    return prediction[:, : reference.shape[1]]


def select_point_forecast(predictions: Any, references: Any, prediction_index: int | None = None) -> np.ndarray:
    """Pick the point forecast among a model's outputs and fit it to the references' shape.

    `Trainer` passes every non-loss output: PatchTST/PatchTSMixer give `(prediction_outputs, loc, scale)`, TimesFM
    `(last_hidden_state, mean_predictions, full_predictions)`. The first output that fits the references
    `(windows, horizon[, channels])` (after dropping a singleton channel axis or cutting a longer horizon) is used,
    unless `prediction_index` names one.

    Raises:
        `ValueError`: no output fits the references.
    """
    reference = _to_numpy(references, "references")
    outputs = list(predictions) if isinstance(predictions, (tuple, list)) else [predictions]
    if prediction_index is not None:
        outputs = [outputs[prediction_index]]
    for output in outputs:
        if output is None or isinstance(output, (tuple, list)):
            continue
        aligned = _align(_to_numpy(output, "predictions"), reference)
        if aligned is not None:
            return aligned
    shapes = [getattr(o, "shape", type(o).__name__) for o in outputs]
    raise ValueError(
        f"No model output fits the references of shape {reference.shape}: got outputs of shapes {shapes}. Pass "
        "`prediction_index` to choose one, or check `prediction_length` and the channel layout."
    )


def preprocess_logits_for_metrics(logits: Any, labels: Any) -> Any:
    """For `Trainer(preprocess_logits_for_metrics=...)`: keep only the point forecast (saves evaluation memory)."""
    reference = labels[0] if isinstance(labels, (tuple, list)) else labels
    outputs = list(logits) if isinstance(logits, (tuple, list)) else [logits]
    for output in outputs:
        if not hasattr(output, "shape") or isinstance(output, (tuple, list)):
            continue
        aligned = _align(output, reference)  # works on tensors as on arrays: no copy to the host
        if aligned is not None:
            return aligned
    return logits


def make_compute_metrics(
    metrics: Sequence[str] = ("mse", "mae"),
    season_length: int = 1,
    per_horizon: bool = False,
    prediction_index: int | None = None,
    metric_prefix: str = "",
) -> Callable[[Any], dict[str, float]]:
    """Build a `compute_metrics` for `transformers.Trainer`.

    Use it with `TrainingArguments(label_names=["future_values"], remove_unused_columns=False)`; add
    `"future_observed_mask"` to `label_names` to skip missing targets, and `include_for_metrics=["inputs"]` for MASE
    (the inputs are then the contexts `past_values`). Metrics are computed on the values the model sees (scaled
    values with [`hf_tsprune.data.load_forecasting_dataset`], as the LTSF protocol reports them).

    Args:
        metrics (`Sequence[str]`, *optional*, defaults to `("mse", "mae")`): Any of `mse`, `mae`, `mase`, `smape`.
        season_length (`int`, *optional*, defaults to 1): MASE seasonal lag.
        per_horizon (`bool`, *optional*, defaults to `False`): Also return `<metric>_step_<h>` for every step.
        prediction_index (`int`, *optional*): Which model output is the point forecast (else found by shape).
        metric_prefix (`str`, *optional*): Prepended to every key (Trainer adds `eval_` itself).

    Returns:
        A function `EvalPrediction -> dict[str, float]`.
    """
    if "wql" in metrics:
        raise ValueError("`wql` needs quantile forecasts; use `ForecastMetrics` or `hf_tsprune.evaluation` for it.")
    acc_metrics = tuple(metrics)
    ForecastMetrics(acc_metrics)  # validate names now

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        labels = eval_pred.label_ids
        mask = None
        if isinstance(labels, (tuple, list)):
            labels, mask = labels[0], (labels[1] if len(labels) > 1 else None)
        point = select_point_forecast(eval_pred.predictions, labels, prediction_index)
        reference = _to_numpy(labels, "labels")
        if mask is not None:
            mask = _to_numpy(mask, "future_observed_mask").reshape(reference.shape)
        past = getattr(eval_pred, "inputs", None)
        if isinstance(past, (tuple, list)):
            past = past[0]
        if past is not None:
            past = _to_numpy(past, "inputs")
            if past.ndim == reference.ndim + 1 and past.shape[-1] == 1:
                past = past[..., 0]
            if past.ndim != reference.ndim:
                past = None
        acc = ForecastMetrics(acc_metrics, season_length=season_length, per_horizon=per_horizon)
        acc.update(point, reference, observed_mask=mask, past_values=past)
        raw = acc.compute()
        results = {f"{metric_prefix}{name}": raw[name] for name in acc_metrics}
        if per_horizon:
            for name, curve in raw["per_horizon"].items():
                for step, value in enumerate(curve, start=1):
                    results[f"{metric_prefix}{name}_step_{step}"] = value
        return results

    return compute_metrics


# --------------------------------------------------------------------------------------------------------------------
# evaluate modules
# --------------------------------------------------------------------------------------------------------------------


def metric_module_path(name: str) -> str:
    """The local folder of the packaged `evaluate` module `name` (one of [`METRIC_NAMES`])."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; the packaged evaluate modules are {list(METRIC_NAMES)}.")
    return os.fspath(METRIC_MODULES_DIR / name)


def load_metric(name: str, config_name: str | None = None, **kwargs: Any):
    """Load a packaged metric as an `evaluate` module, offline (no Hub access needed).

    Example:

    ```python
    >>> from hf_tsprune.metrics import load_metric
    >>> mse = load_metric("mse")  # same as evaluate.load(hf_tsprune.metrics.metric_module_path("mse"))
    >>> mse.compute(predictions=[[0.0, 1.0]], references=[[0.0, 2.0]])
    {'mse': 0.5}
    ```

    Args:
        name (`str`): One of `mse`, `mae`, `mase`, `smape`, `wql`.
        config_name (`str`, *optional*): `"multivariate"` for `(horizon, channels)` items; default `(horizon,)`.
        kwargs: Passed to `evaluate.load`.
    """
    import evaluate

    return evaluate.load(metric_module_path(name), config_name, **kwargs)
