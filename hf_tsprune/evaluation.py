"""Evaluate forecasting models and naive baselines on window datasets, with per-horizon metrics.

- [`NaiveForecaster`]: the `repeat_last`, `seasonal_naive` and `seasonal_average` baselines, vectorised over numpy
  arrays.
- [`load_forecaster`]: a Hub id or local folder of a supported model (TimesFM, TimesFM 2.5, PatchTST, PatchTSMixer,
  Chronos, Chronos-Bolt, Chronos-2, TTM, Moirai 1.x / MoE / 2; dense or pruned by hf_tsprune), or a baseline name.
- [`forecast`]: forecast any horizon from any context length with a model, rolling out autoregressively when the
  model's native horizon is shorter than asked.
- [`evaluate_forecaster`]: batches over a split made by [`hf_tsprune.data.load_forecasting_dataset`] with a progress
  bar and returns MSE/MAE on scaled values (the LTSF protocol), optionally MASE (scale-free), sMAPE and the weighted
  quantile loss (on the original scale), with per-step curves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .adapters import ForecastAdapter, ModelForecast, get_adapter
from .data import WindowBatches, get_window_source, seasonal_period, timesfm_frequency_index
from .family import checkpoint_family, families, family_of, get_family
from .metrics import ForecastMetrics

logger = logging.get_logger(__name__)

NAIVE_BASELINES = ("repeat_last", "seasonal_naive", "seasonal_average")
"""Names of the naive baselines accepted by [`load_forecaster`] and [`NaiveForecaster`]."""


@dataclass
class NaiveForecaster:
    """A naive forecasting baseline, vectorised on numpy arrays.

    - `repeat_last`: every step repeats the last value of the context;
    - `seasonal_naive`: step `h` repeats the value one season before (`y[t + h - season_length * k]`);
    - `seasonal_average`: step `h` is the mean of the same step of the last `num_seasons` seasons (with hourly data
      and the defaults, the 7-day average of the same hour).

    Args:
        method (`str`): `"repeat_last"`, `"seasonal_naive"` or `"seasonal_average"`.
        season_length (`int`, *optional*): Season of the seasonal methods; taken from the data frequency
            ([`hf_tsprune.data.seasonal_period`]) when `None`.
        num_seasons (`int`, *optional*, defaults to 7): Seasons averaged by `seasonal_average`.
    """

    method: str = "repeat_last"
    season_length: int | None = None
    num_seasons: int = 7

    def __post_init__(self):
        if self.method not in NAIVE_BASELINES:
            raise ValueError(f"Unknown baseline {self.method!r}; choose one of {list(NAIVE_BASELINES)}.")
        if self.season_length is not None and int(self.season_length) < 1:
            raise ValueError(f"`season_length` must be a positive integer, got {self.season_length}.")
        if int(self.num_seasons) < 1:
            raise ValueError(f"`num_seasons` must be a positive integer, got {self.num_seasons}.")

    @property
    def name(self) -> str:
        return self.method

    def predict(self, past_values: np.ndarray, prediction_length: int, season_length: int | None = None) -> np.ndarray:
        """Forecast `(windows, prediction_length[, channels])` from contexts `(windows, context[, channels])`.

        Args:
            past_values (`np.ndarray` or `torch.Tensor`): The contexts.
            prediction_length (`int`): Steps to forecast.
            season_length (`int`, *optional*): Overrides the forecaster's season (seasonal methods only).
        """
        if hasattr(past_values, "detach"):
            past_values = past_values.detach().cpu().numpy()
        past_values = np.asarray(past_values)
        context = past_values.shape[1]
        if self.method == "repeat_last":
            last = past_values[:, -1:]
            return np.repeat(last, prediction_length, axis=1)
        season = season_length or self.season_length
        if season is None:
            raise ValueError(f"`{self.method}` needs a season: pass `season_length` or data with a known frequency.")
        season = int(season)
        seasons = int(self.num_seasons) if self.method == "seasonal_average" else 1
        if context < season * seasons:
            raise ValueError(
                f"`{self.method}` with season {season} needs a context of at least {season * seasons} steps, got "
                f"{context}: raise `context_length` or lower `season_length`."
            )
        # step h reads the same step of each of the last `seasons` seasons: y[context + h % season - season * k]
        lags = context + np.arange(prediction_length)[None, :] % season - season * np.arange(1, seasons + 1)[:, None]
        return past_values[:, lags].mean(axis=1) if seasons > 1 else past_values[:, lags[0]]


def _config_dict(name: str, hub_kwargs: dict) -> dict:
    """The `config.json` of a local folder or Hub id, with an error that says which of the two `name` was taken for
    and what to do when there is none."""
    from transformers import PretrainedConfig

    path = os.path.expanduser(name)
    if os.path.isfile(path):
        raise ValueError(
            f"{name!r} (`model_name_or_path`, --model_name_or_path) is a file: pass the folder that holds the model's "
            "config.json and weights (written by `save_pretrained`), or a Hub model id."
        )
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"The folder {name!r} (`model_name_or_path`, --model_name_or_path) holds no config.json, so it is not a "
            "saved model: pass the folder written by `save_pretrained` (e.g. `<output_dir>/model` of a recipe run), "
            "or a Hub model id."
        )
    try:
        return PretrainedConfig.get_config_dict(name, **hub_kwargs)[0]
    except OSError as error:
        from huggingface_hub import constants

        looks_local = name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name
        if looks_local or os.path.isdir(path):
            raise ValueError(
                f"No model folder {name!r} (`model_name_or_path`, --model_name_or_path): there is no such folder "
                f"relative to {os.getcwd()}. Check the path, or pass a Hub model id (`owner/name`)."
            ) from error
        offline = " Offline mode is on (HF_HUB_OFFLINE=1), so only models already in the local cache load." * bool(
            constants.is_offline_mode()
        )
        raise ValueError(
            f"Could not load {name!r} (`model_name_or_path`, --model_name_or_path): it is not a local folder (none "
            f"under {os.getcwd()}) and not a Hub model id that could be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}).{offline} Check the spelling of the id or the path, "
            "log in (`hf auth login`) for a private or gated model, or download it first."
        ) from error


def check_finite_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """Raises a `ValueError` naming the parameters of a loaded `model` that hold NaN or infinite values (a checkpoint
    saved from a diverged run), which would make every forecast non-finite."""
    bad = [
        name
        for name, param in model.named_parameters()
        if param.is_floating_point() and param.device.type != "meta" and not bool(torch.isfinite(param).all())
    ]
    if bad:
        names = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ValueError(
            f"The checkpoint {checkpoint} holds NaN or infinite weights ({names}): every forecast of it would be "
            "non-finite. It was saved from a diverged run or damaged: restore it, or re-create it."
        )


def load_forecaster(
    model_name_or_path: str | os.PathLike,
    season_length: int | None = None,
    strict: bool = True,
    *,
    task_settings: Mapping[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> NaiveForecaster | torch.nn.Module:
    """Load a baseline by name or a supported model from the Hub or a local folder.

    Args:
        model_name_or_path (`str` or `os.PathLike`): a name of `NAIVE_BASELINES`, or a Hub model id or folder of a
            supported model (see `hf_tsprune.families()`), dense or a pruned hf_tsprune checkpoint.
        season_length (`int`, *optional*): Season of the `seasonal_naive` baseline.
        strict (`bool`, *optional*, defaults to `True`): Raise when the checkpoint's tensors do not match the model
            (missing, unexpected or mismatched: a `CheckpointMismatchError` naming them) or hold NaN/inf weights,
            instead of loading freshly initialised weights.
        task_settings (`Mapping[str, Any]`, *optional*): The task's settings (`prediction_length`, `context_length`,
            `patch_size`), for a family whose model holds some of them (its `Family.task_settings`: Moirai, whose
            checkpoints are `uni2ts` module folders, recognised by their `config.json`, dense or pruned by hf_tsprune);
            transformers checkpoints ignore them.
        from_pretrained_kwargs: Passed to `from_pretrained` (e.g. `torch_dtype`, `revision`).

    Returns:
        A [`NaiveForecaster`] or the model, in eval mode.

    Raises:
        `ValueError`: `model_name_or_path` is neither a baseline, a folder with a `config.json` nor a readable Hub id
            (the message says which it was taken for), the model type is unsupported, or (with `strict`) the
            checkpoint does not match its configuration or holds non-finite weights.
    """
    from .checkpoint_code import check_loading_info

    name = os.fspath(model_name_or_path)
    if name in NAIVE_BASELINES:
        return NaiveForecaster(name, season_length)
    from transformers import AutoConfig

    hub_kwargs = {k: v for k, v in from_pretrained_kwargs.items() if k in ("revision", "token")}
    settings = _config_dict(name, hub_kwargs)
    own_format = checkpoint_family(settings)
    if own_format is not None:  # not a transformers checkpoint (Moirai): the family's own loaders
        return _load_own_format(own_format, name, settings, dict(task_settings or {}), hub_kwargs, strict)
    model_type = settings.get("model_type")
    if family_of(model_type or "") is not None:
        get_family(model_type)  # its optional package missing: an ImportError that says how to install it
    config = AutoConfig.from_pretrained(name, **hub_kwargs)
    get_adapter(config)  # an unsupported model type: a ValueError that lists the supported families
    family = get_family(config)
    # a pruned hf_tsprune checkpoint loads with its pruned class (strict itself), anything else with its family's
    pruned = getattr(config, "base_model_type", None) == family.name
    model_class = family.pruned_model_class if pruned else family.base_classes()[1]
    kwargs = dict(from_pretrained_kwargs, output_loading_info=True)
    if pruned:
        kwargs["strict"] = strict
    model, info = model_class.from_pretrained(name, **kwargs)
    if strict:
        check_loading_info(info, name, model_class.__name__, strict_hint="strict=False")
        check_finite_weights(model, name)
    return model.eval()


def _load_own_format(
    family: Any, name: str, settings: dict, task_settings: dict, hub_kwargs: dict, strict: bool
) -> torch.nn.Module:
    """A checkpoint in a family's own format ([`hf_tsprune.family.checkpoint_family`]): a pruned one through the
    family's `load_pruned` (strict itself; a Hub id is downloaded first), a dense one through its `load_dense`, each
    with the task settings the family takes."""
    family.require()
    given = {key: task_settings.get(key) for key in family.task_settings}
    if settings.get("base_model_type") == family.name:
        folder = os.path.expanduser(name)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(name, **hub_kwargs)
        model = family.load_pruned(folder, **given)
    else:
        model = family.load_dense(name, settings, strict=strict, **given, **hub_kwargs)
    if strict:
        check_finite_weights(model, name)
    return model.eval()


def load_chronos_pipeline(model_or_path: torch.nn.Module | str | os.PathLike, **from_pretrained_kwargs: Any):
    """A `chronos` pipeline (`ChronosPipeline`, `ChronosBoltPipeline`, ...) around a model of a Chronos family, dense or
    pruned, for the `chronos` package's own `predict` / `predict_quantiles` (the family's registered
    `native_pipeline`).

    `chronos.BaseChronosPipeline.from_pretrained` builds a Chronos-Bolt model from the class its `config.json` names,
    looked up inside the `chronos` package: it cannot know a pruned class and would build the dense one, which fails
    on the pruned sizes. Pruned Chronos (T5) checkpoints do load there once `hf_tsprune` is imported (their class is
    registered with `AutoModelForSeq2SeqLM`); this function loads both kinds, through [`load_forecaster`].

    Args:
        model_or_path (`torch.nn.Module`, `str` or `os.PathLike`): a loaded Chronos (`T5ForConditionalGeneration`
            with a `chronos_config`) or Chronos-Bolt model, or a Hub id / folder of one.
        from_pretrained_kwargs: Passed to `from_pretrained` when a path is given.

    Returns:
        The pipeline (its model in eval mode).
    """
    model = model_or_path
    if not isinstance(model, torch.nn.Module):
        model = load_forecaster(model_or_path, **from_pretrained_kwargs)
    name = family_of(model)
    family = get_family(name) if name is not None else None
    if family is None or family.native_pipeline is None:
        takes = ", ".join(f.name for f in families().values() if f.native_pipeline is not None)
        raise ValueError(
            f"load_chronos_pipeline takes a Chronos or Chronos-Bolt model (a family with its own pipeline: {takes}); "
            f"got a {type(model).__name__} ({name}). Forecast other families with `hf_tsprune.evaluation.forecast`."
        )
    return family.native_pipeline(model.eval())


def _rollout_limit(adapter: ForecastAdapter, model: torch.nn.Module, context_length: int) -> int:
    limit = adapter.max_context(model)
    return max(context_length, limit) if limit is not None else context_length


@torch.inference_mode()
def forecast(
    model: torch.nn.Module,
    past_values: torch.Tensor | np.ndarray,
    prediction_length: int,
    past_observed_mask: torch.Tensor | np.ndarray | None = None,
    freq: str | int | None = None,
    adapter: ForecastAdapter | None = None,
) -> ModelForecast:
    """Forecast `prediction_length` steps of a batch with a supported model, from contexts of any length.

    When the model's native horizon is shorter, the point forecast is fed back as context (autoregressive rollout);
    contexts longer than the model takes keep their last steps, shorter ones are padded (see
    [`hf_tsprune.adapters`]).

    Args:
        model (`torch.nn.Module`): A model of a registered family (see [`hf_tsprune.families`]).
        past_values (`torch.Tensor` or `np.ndarray`): `(batch, context)` or `(batch, context, channels)`.
        prediction_length (`int`): Steps to forecast.
        past_observed_mask (*optional*): Same shape as `past_values`, 1 where observed.
        freq (`str` or `int`, *optional*): Pandas frequency string or TimesFM category (TimesFM only; default 0).
        adapter ([`ForecastAdapter`], *optional*): Defaults to the model's.

    Returns:
        [`ModelForecast`] with `mean` shaped like `past_values` but `prediction_length` long (and `quantiles` when the
        model makes them).
    """
    if int(prediction_length) < 1:
        raise ValueError(f"`prediction_length` must be a positive integer, got {prediction_length}.")
    adapter = adapter or get_adapter(model)
    values = torch.as_tensor(past_values, dtype=torch.float32)
    squeeze = values.ndim == 2
    if squeeze:
        values = values[..., None]
    if values.ndim != 3:
        raise ValueError(f"`past_values` must be (batch, context[, channels]), got shape {tuple(values.shape)}.")
    mask = torch.ones_like(values) if past_observed_mask is None else torch.as_tensor(past_observed_mask).float()
    mask = mask.reshape(values.shape)
    freq_index = freq if isinstance(freq, int) else timesfm_frequency_index(freq)
    native = adapter.native_horizon(model)
    limit = _rollout_limit(adapter, model, values.shape[1])
    means, quantiles, levels, produced = [], [], None, 0
    while produced < prediction_length:
        step = adapter.predict(model, values, mask, freq_index)
        take = min(native, prediction_length - produced)
        means.append(step.mean[:, :take].cpu())
        if step.quantiles is not None:
            quantiles.append(step.quantiles[:, :take].cpu())
            levels = step.quantile_levels
        produced += take
        if produced < prediction_length:
            if step.mean.shape[2] != values.shape[2]:
                raise ValueError(
                    f"Cannot roll out {type(model).__name__} beyond its horizon {native}: it forecasts "
                    f"{step.mean.shape[2]} of {values.shape[2]} channels. Lower `prediction_length` to {native}."
                )
            values = torch.cat([values, step.mean.cpu()], dim=1)[:, -limit:]
            mask = torch.cat([mask, torch.ones_like(step.mean.cpu())], dim=1)[:, -limit:]
    mean = torch.cat(means, dim=1)
    quantile = torch.cat(quantiles, dim=1) if quantiles and len(quantiles) == len(means) else None
    if squeeze:
        mean = mean[..., 0]
        quantile = None if quantile is None else quantile[:, :, 0]
    return ModelForecast(mean=mean, quantiles=quantile, quantile_levels=levels if quantile is not None else None)


def _count_windows(batches: WindowBatches) -> int:
    index = batches._index
    series = index["series_index"][: batches.total].astype(np.int64)
    start = index["start"][: batches.total]
    return int(len(np.unique(series * (int(start.max(initial=0)) + 1) + start)))


def evaluate_forecaster(
    forecaster: NaiveForecaster | torch.nn.Module | str,
    dataset: datasets.Dataset,
    *,
    prediction_length: int | None = None,
    metrics: Sequence[str] = ("mse", "mae"),
    batch_size: int | None = None,
    per_horizon: bool = True,
    season_length: int | None = None,
    freq: str | None = None,
    device: str | torch.device | None = None,
    max_windows: int | None = None,
    show_progress: bool = True,
    desc: str | None = None,
) -> dict[str, Any]:
    """Evaluate a model or baseline on one split of [`hf_tsprune.data.load_forecasting_dataset`].

    Example:

    ```python
    >>> from hf_tsprune.data import load_forecasting_dataset
    >>> from hf_tsprune.evaluation import evaluate_forecaster
    >>> ds = load_forecasting_dataset("ETTh1", data_dir="../shared/data", prediction_length=96)
    >>> evaluate_forecaster("repeat_last", ds["test"])["mse"]
    1.2943...
    ```

    Args:
        forecaster ([`NaiveForecaster`], `torch.nn.Module` or `str`): A baseline, a supported model, or a name/path
            for [`load_forecaster`].
        dataset (`datasets.Dataset`): A split of windows.
        prediction_length (`int`, *optional*): Steps to score; at most (and by default) the windows' horizon.
        metrics (`Sequence[str]`, *optional*, defaults to `("mse", "mae")`): Any of `mse`, `mae` (scaled values),
            `mase` (scale-free), `smape`, `wql` (original scale; `wql` needs a model with quantile forecasts).
        batch_size (`int`, *optional*): Items per batch; 8192 for baselines, 256 for models.
        per_horizon (`bool`, *optional*, defaults to `True`): Add `per_horizon` curves (one value per step).
        season_length (`int`, *optional*): Season of `seasonal_naive` and MASE; from the data frequency by default.
        freq (`str`, *optional*): Overrides the data frequency (TimesFM frequency category, default season).
        device (`str` or `torch.device`, *optional*): Moves the model there first; by default it stays put.
        max_windows (`int`, *optional*): Score only the first items (quick checks): dataset items, i.e. one channel
            of one time window each where the data is channel-independent.
        show_progress (`bool`, *optional*, defaults to `True`): Show a tqdm bar.
        desc (`str`, *optional*): Progress bar label.

    Returns:
        `dict`: the metrics, `n_windows` (distinct forecast origins: series x start), `n_items` (dataset rows, one
        per channel when channel-independent), `num_values`, `prediction_length`, `context_length`, `seconds` and,
        with `per_horizon`, `per_horizon` = {metric: [value per step]}.
    """
    started = time.perf_counter()
    if isinstance(forecaster, (str, os.PathLike)):
        forecaster = load_forecaster(forecaster, season_length=season_length)
    source = get_window_source(dataset)
    prediction_length = source.prediction_length if prediction_length is None else int(prediction_length)
    if not 1 <= prediction_length <= source.prediction_length:
        raise ValueError(
            f"`prediction_length` must be between 1 and the windows' horizon {source.prediction_length}, "
            f"got {prediction_length}: "
            "load the data with a longer `prediction_length`."
        )
    if len(dataset) == 0:
        raise ValueError("The dataset has no window: lower `context_length`/`prediction_length` or use more data.")
    freq = freq or source.freq
    season = season_length or (forecaster.season_length if isinstance(forecaster, NaiveForecaster) else None)
    season = season or seasonal_period(freq)
    is_naive = isinstance(forecaster, NaiveForecaster)
    adapter = None
    if not is_naive:
        if not isinstance(forecaster, torch.nn.Module):
            raise TypeError(
                f"`forecaster` must be a NaiveForecaster, a supported model or a name, got {type(forecaster)}."
            )
        adapter = get_adapter(forecaster)
        if device is not None:
            forecaster = forecaster.to(device)
        forecaster.eval()
    batches = WindowBatches(dataset, batch_size or (8192 if is_naive else 256), max_windows)
    scaled_metrics = [m for m in metrics if m in ("mse", "mae", "mase")]
    raw_metrics = [m for m in metrics if m in ("smape", "wql")]
    unknown = [m for m in metrics if m not in scaled_metrics + raw_metrics]
    if unknown:
        raise ValueError(f"Unknown metrics {unknown}; choose from mse, mae, mase, smape, wql.")
    scaled_acc = ForecastMetrics(scaled_metrics, season_length=season, per_horizon=per_horizon)
    raw_acc = None
    context = source.context_length
    channel_independent = source.channel_independent
    target_channels = None if is_naive else adapter.output_channels(forecaster)
    progress = tqdm(
        batches,
        total=len(batches),
        desc=desc or f"{getattr(forecaster, 'name', None) or type(forecaster).__name__}",
        unit="batch",
        disable=not show_progress,
    )
    for batch in progress:
        values, observed = batch["values"], batch["observed"].astype(np.float32)
        past, future = values[:, :context], values[:, context : context + prediction_length]
        past_mask, future_mask = observed[:, :context], observed[:, context : context + prediction_length]
        quantiles, levels = None, None
        if is_naive:
            prediction = forecaster.predict(past, prediction_length, season_length=season)
        else:
            result = forecast(
                forecaster, past, prediction_length, past_observed_mask=past_mask, freq=freq, adapter=adapter
            )
            prediction = result.mean.numpy()
            if result.quantiles is not None:
                quantiles, levels = result.quantiles.numpy(), result.quantile_levels
        if target_channels is not None and not channel_independent:
            future, future_mask = future[..., target_channels], future_mask[..., target_channels]
            past, past_mask = past[..., target_channels], past_mask[..., target_channels]
        scaled_acc.update(prediction, future, future_mask, past_values=past, past_observed_mask=past_mask)
        if raw_metrics:
            series_index = batch["series_index"]
            channel = batch["channel"]
            if not channel_independent and target_channels is not None:
                raise ValueError("sMAPE/WQL with `prediction_channel_indices` are not supported; use mse/mae/mase.")
            raw_future = source.unscale(future, series_index, channel)
            raw_prediction = source.unscale(prediction, series_index, channel)
            raw_quantiles = None
            if quantiles is not None:
                moved = np.moveaxis(quantiles, -1, 0)
                raw_quantiles = np.moveaxis(np.stack([source.unscale(q, series_index, channel) for q in moved]), 0, -1)
            if raw_acc is None:
                raw_acc = ForecastMetrics(
                    raw_metrics, season_length=season, quantile_levels=levels, per_horizon=per_horizon
                )
            raw_acc.update(raw_prediction, raw_future, future_mask, quantile_predictions=raw_quantiles)
    results: dict[str, Any] = {}
    curves: dict[str, list[float]] = {}
    for acc in (scaled_acc, raw_acc):
        if acc is None or not acc.metrics:
            continue
        computed = acc.compute()
        curves.update(computed.pop("per_horizon", {}))
        results.update(computed)
    for name in metrics:
        results.setdefault(name, float("nan"))
    results = {name: results[name] for name in metrics} | {"num_values": results.get("num_values", 0)}
    results["n_windows"] = _count_windows(batches)
    results["n_items"] = batches.total
    results["prediction_length"] = prediction_length
    results["context_length"] = context
    results["seconds"] = round(time.perf_counter() - started, 3)
    if per_horizon:
        results["per_horizon"] = curves
    return results


__all__ = [
    "NAIVE_BASELINES",
    "NaiveForecaster",
    "evaluate_forecaster",
    "forecast",
    "load_chronos_pipeline",
    "load_forecaster",
]
