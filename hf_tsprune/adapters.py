"""Per-family forecasting adapters: one place that knows how each supported model is called for a point forecast.

An adapter turns a batch of contexts `past_values` `(batch, context, channels)` into the model's forward arguments,
reads the point (and quantile) forecast back as `(batch, native_horizon, channels)`, and knows the model's native
horizon and context limits. The evaluation loop ([`hf_tsprune.evaluation`]) builds on it for any horizon
(autoregressive rollout) and any context length.

| family | class | inputs | point forecast |
|---|---|---|---|
| `timesfm` | `TimesFmModelForPrediction` | 1D series + `freq` | `mean_predictions` `(B, horizon_length)` |
| `timesfm2_5` | `TimesFm2_5ModelForPrediction` | 1D series | `mean_predictions` (the median) |
| `patchtst` | `PatchTSTForPrediction` | `past_values` `(B, L, C)` | `prediction_outputs` `(B, H, C)` |
| `patchtsmixer` | `PatchTSMixerForPrediction` | `past_values` `(B, L, C)` | `prediction_outputs` `(B, H, C)` |
| `chronos` | `T5ForConditionalGeneration` | value tokens (mean scaling, uniform bins) | mean of sampled paths |
| `chronos_bolt` | `ChronosBoltModelForForecasting` | 1D series (`context`) | median of `quantile_preds` |
| `ttm` | `TinyTimeMixerForPrediction` | `past_values` `(B, L, C)` | `prediction_outputs` `(B, H, C)` |

Univariate families (TimesFM, Chronos, Chronos-Bolt) fold the channels into the batch. PatchTST/PatchTSMixer/TTM take
exactly `config.context_length` steps: longer contexts keep their last steps, shorter ones are front-padded with zeros
that the observed mask marks missing.

Chronos and Chronos-Bolt checkpoints both have `config.model_type == "t5"`; [`family_of`] tells them apart (by class
and `config.chronos_config`), and `ADAPTERS` is keyed by family (Chronos needs the `chronos` package for its tokenizer,
Chronos-Bolt for its model class, TTM `granite-tsfm`). The training side (the forward arguments with which each
family computes its own loss) is [`hf_tsprune.training`].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


@dataclass
class ModelForecast:
    """A batch of forecasts.

    Args:
        mean (`torch.Tensor`): Point forecast `(batch, horizon, channels)`.
        quantiles (`torch.Tensor`, *optional*): `(batch, horizon, channels, num_quantiles)`.
        quantile_levels (`list[float]`, *optional*): Levels of the last axis of `quantiles`.
    """

    mean: torch.Tensor
    quantiles: torch.Tensor | None = None
    quantile_levels: list[float] | None = None


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    dtype = parameter.dtype if parameter.dtype.is_floating_point else torch.float32
    return parameter.device, dtype


class ForecastAdapter:
    """Base adapter; subclasses fill in the family-specific parts.

    Attributes:
        family (`str`): The `config.model_type` this adapter serves.
        class_name (`str`): The `transformers` class name.
        univariate (`bool`): Whether the model forecasts one series at a time (channels folded into the batch).
    """

    family: str = ""
    class_name: str = ""
    univariate: bool = False

    def model_class(self) -> type:
        """The `transformers` model class of this family."""
        import transformers

        return getattr(transformers, self.class_name)

    def native_horizon(self, model: torch.nn.Module) -> int:
        """Steps forecast by one forward pass."""
        return int(model.config.prediction_length)

    def max_context(self, model: torch.nn.Module) -> int | None:
        """Longest context the model takes (`None`: unbounded)."""
        return int(model.config.context_length)

    def fixed_context(self, model: torch.nn.Module) -> bool:
        """Whether the model needs exactly `max_context` steps."""
        return True

    def num_input_channels(self, model: torch.nn.Module) -> int | None:
        """Channels the model takes at once (`None`: univariate)."""
        return None if self.univariate else int(model.config.num_input_channels)

    def output_channels(self, model: torch.nn.Module) -> list[int] | None:
        """Input channels that the model forecasts, when only some of them (`None`: all)."""
        return None

    def quantile_levels(self, model: torch.nn.Module) -> list[float] | None:
        """Levels of the quantile forecasts, when the model makes them."""
        return None

    # -- family-specific ------------------------------------------------------------------------------------------

    def _forecast(
        self, model: torch.nn.Module, past_values: torch.Tensor, past_observed_mask: torch.Tensor, freq: int
    ) -> ModelForecast:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------------

    def _fit_context(
        self, model: torch.nn.Module, past_values: torch.Tensor, past_observed_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.max_context(model)
        length = past_values.shape[1]
        if limit is not None and length > limit:
            past_values, past_observed_mask = past_values[:, -limit:], past_observed_mask[:, -limit:]
        elif limit is not None and length < limit and self.fixed_context(model):
            pad = limit - length
            shape = (past_values.shape[0], pad) + tuple(past_values.shape[2:])
            past_values = torch.cat([past_values.new_zeros(shape), past_values], dim=1)
            past_observed_mask = torch.cat([past_observed_mask.new_zeros(shape), past_observed_mask], dim=1)
        return past_values, past_observed_mask

    def check_channels(self, model: torch.nn.Module, num_channels: int) -> bool:
        """Whether the channels must be folded into the batch; raises when the model cannot take `num_channels`."""
        expected = self.num_input_channels(model)
        if expected is None or (expected == 1 and num_channels != 1):
            return num_channels != 1
        if expected != num_channels:
            raise ValueError(
                f"{type(model).__name__} takes {expected} channels but the data has {num_channels}. Load the data "
                f"with `channel_independent=False` and the model's {expected} columns (`target`), or use a "
                "single-channel model."
            )
        return False

    @torch.inference_mode()
    def predict(
        self,
        model: torch.nn.Module,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        freq: int = 0,
    ) -> ModelForecast:
        """One forward pass: forecast `native_horizon` steps of every channel.

        Args:
            model (`torch.nn.Module`): A model of this family.
            past_values (`torch.Tensor`): `(batch, context, channels)` contexts (any length: fitted to the model).
            past_observed_mask (`torch.Tensor`, *optional*): Same shape, 1 where observed.
            freq (`int`, *optional*, defaults to 0): TimesFM frequency category (others ignore it).

        Returns:
            [`ModelForecast`] with `mean` of shape `(batch, native_horizon, output channels)`.
        """
        if past_values.ndim != 3:
            raise ValueError(
                f"`past_values` must be (batch, context, channels), got shape {tuple(past_values.shape)}."
            )
        device, dtype = _model_device_dtype(model)
        past_values = past_values.to(device=device, dtype=dtype)
        if past_observed_mask is None:
            past_observed_mask = torch.ones_like(past_values)
        past_observed_mask = past_observed_mask.to(device=device, dtype=dtype)
        batch, _, channels = past_values.shape
        fold = self.check_channels(model, channels)
        if fold:
            past_values = past_values.permute(0, 2, 1).reshape(batch * channels, -1, 1)
            past_observed_mask = past_observed_mask.permute(0, 2, 1).reshape(batch * channels, -1, 1)
        past_values, past_observed_mask = self._fit_context(model, past_values, past_observed_mask)
        forecast = self._forecast(model, past_values, past_observed_mask, freq)
        if fold:
            horizon = forecast.mean.shape[1]
            forecast.mean = forecast.mean.reshape(batch, channels, horizon).permute(0, 2, 1)
            if forecast.quantiles is not None:
                levels = forecast.quantiles.shape[-1]
                forecast.quantiles = forecast.quantiles.reshape(batch, channels, horizon, levels).permute(0, 2, 1, 3)
        forecast.mean = forecast.mean.float()
        if forecast.quantiles is not None:
            forecast.quantiles = forecast.quantiles.float()
        return forecast


class TimesFmAdapter(ForecastAdapter):
    """TimesFM 1.0/2.0 (`TimesFmModelForPrediction`): univariate, contexts up to `context_length`, `freq` category."""

    family = "timesfm"
    class_name = "TimesFmModelForPrediction"
    univariate = True

    def native_horizon(self, model):
        return int(model.config.horizon_length)

    def fixed_context(self, model):
        return False  # the model front-pads shorter contexts itself

    def quantile_levels(self, model):
        return [float(q) for q in model.config.quantiles]

    def _forecast(self, model, past_values, past_observed_mask, freq):
        series = past_values[..., 0]
        outputs = model(past_values=series, freq=[int(freq)] * series.shape[0], return_dict=True)
        mean = outputs.mean_predictions[:, :, None]
        quantiles = outputs.full_predictions[:, :, None, 1:]
        return ModelForecast(mean=mean, quantiles=quantiles, quantile_levels=self.quantile_levels(model))


class TimesFm2_5Adapter(ForecastAdapter):
    """TimesFM 2.5 (`TimesFm2_5ModelForPrediction`): univariate, contexts up to `context_length`, no `freq`.

    The point forecast is the model's `mean_predictions` (its median head). Clamping of non-negative series
    (`config.infer_is_positive`) is applied per series here; the model itself decides on the whole batch.
    """

    family = "timesfm2_5"
    class_name = "TimesFm2_5ModelForPrediction"
    univariate = True

    def native_horizon(self, model):
        return int(model.config.horizon_length)

    def fixed_context(self, model):
        return False

    def quantile_levels(self, model):
        return [float(q) for q in model.config.quantiles]

    def _forecast(self, model, past_values, past_observed_mask, freq):
        series = past_values[..., 0]
        patch = int(model.config.patch_length)
        context = -(-series.shape[1] // patch) * patch  # round up to whole patches: the model front-pads
        context = min(context, int(model.config.context_length))
        outputs = model(past_values=series, forecast_context_len=context, truncate_negative=False, return_dict=True)
        mean, full = outputs.mean_predictions, outputs.full_predictions
        if getattr(model.config, "infer_is_positive", False):
            positive = (series.amin(dim=1) >= 0)[:, None]
            mean = torch.where(positive, mean.clamp_min(0), mean)
            full = torch.where(positive[..., None], full.clamp_min(0), full)
        return ModelForecast(
            mean=mean[:, :, None], quantiles=full[:, :, None, 1:], quantile_levels=self.quantile_levels(model)
        )


def _distribution_forecast(model, outputs, num_samples: int = 100) -> ModelForecast:
    """Mean and sampled deciles of a PatchTST/PatchTSMixer distribution head."""
    distribution = model.distribution_output.distribution(
        outputs.prediction_outputs, loc=outputs.loc, scale=outputs.scale
    )
    mean = distribution.mean
    samples = distribution.sample(torch.Size([num_samples]))
    levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    quantiles = torch.quantile(samples.float(), torch.tensor(levels, device=samples.device), dim=0)
    return ModelForecast(mean=mean, quantiles=quantiles.permute(1, 2, 3, 0), quantile_levels=levels)


class PatchTSTAdapter(ForecastAdapter):
    """PatchTST (`PatchTSTForPrediction`): exactly `context_length` steps of `num_input_channels` channels."""

    family = "patchtst"
    class_name = "PatchTSTForPrediction"

    def quantile_levels(self, model):
        return [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] if model.distribution_output is not None else None

    def _forecast(self, model, past_values, past_observed_mask, freq):
        outputs = model(past_values=past_values, past_observed_mask=past_observed_mask, return_dict=True)
        if model.distribution_output is not None:
            return _distribution_forecast(model, outputs)
        return ModelForecast(mean=outputs.prediction_outputs)


class PatchTSMixerAdapter(ForecastAdapter):
    """PatchTSMixer (`PatchTSMixerForPrediction`): as PatchTST; `prediction_channel_indices` restricts the outputs."""

    family = "patchtsmixer"
    class_name = "PatchTSMixerForPrediction"

    def output_channels(self, model):
        indices = getattr(model.config, "prediction_channel_indices", None)
        return None if indices is None else [int(i) for i in indices]

    def quantile_levels(self, model):
        return [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] if model.distribution_output is not None else None

    def _forecast(self, model, past_values, past_observed_mask, freq):
        outputs = model(past_values=past_values, observed_mask=past_observed_mask, return_dict=True)
        if model.distribution_output is not None:
            return _distribution_forecast(model, outputs)
        return ModelForecast(mean=outputs.prediction_outputs)


def _import(module: str, package: str):
    """Imports an optional family package, or raises naming the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"This model family needs `{module}`: install it with {package}.") from error


_CHRONOS_INSTALL = '`pip install chronos-forecasting` (or `pip install "hf_tsprune[families]"`)'
_TTM_INSTALL = '`pip install --no-deps granite-tsfm && pip install einops deprecated "scikit-learn<1.8"`'


def _chronos_settings(model: torch.nn.Module):
    """`chronos.ChronosConfig` of a Chronos (T5) checkpoint."""
    settings = getattr(model.config, "chronos_config", None)
    if not settings:
        raise ValueError(
            f"{type(model).__name__} has no `config.chronos_config`: it is not a Chronos checkpoint. Load one of the "
            "amazon/chronos-t5-* models, or set `config.chronos_config` (tokenizer, context and prediction length)."
        )
    return _import("chronos", _CHRONOS_INSTALL).ChronosConfig(**settings)


def _with_nans(values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Missing values as NaN, the way the `chronos` package marks them."""
    return torch.where(observed > 0, values, torch.full_like(values, float("nan")))


class ChronosAdapter(ForecastAdapter):
    """Chronos (`T5ForConditionalGeneration` with a `chronos_config`): univariate, contexts up to `context_length`.

    The context is tokenised as `chronos.ChronosPipeline` does (mean scaling, uniform bins, EOS), `num_samples`
    forecast paths are sampled from the token distribution with `generate`, and decoded back to values; the point
    forecast is their mean, the quantiles their deciles.
    """

    family = "chronos"
    class_name = "T5ForConditionalGeneration"
    univariate = True

    def native_horizon(self, model):
        return int(_chronos_settings(model).prediction_length)

    def max_context(self, model):
        return int(_chronos_settings(model).context_length)

    def fixed_context(self, model):
        return False

    def quantile_levels(self, model):
        return [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

    def _forecast(self, model, past_values, past_observed_mask, freq):
        settings = _chronos_settings(model)
        chronos = _import("chronos", _CHRONOS_INSTALL)
        tokenizer = settings.create_tokenizer()
        series = _with_nans(past_values[..., 0], past_observed_mask[..., 0]).float().cpu()
        token_ids, attention_mask, scale = tokenizer.context_input_transform(series)
        device = past_values.device
        samples = chronos.ChronosModel(settings, model)(token_ids.to(device), attention_mask.to(device))
        paths = tokenizer.output_transform(samples.cpu(), scale)  # (batch, num_samples, horizon)
        levels = self.quantile_levels(model)
        quantiles = torch.quantile(paths, torch.tensor(levels), dim=1).permute(1, 2, 0)[:, :, None]
        return ModelForecast(mean=paths.mean(dim=1)[:, :, None], quantiles=quantiles, quantile_levels=levels)


class ChronosBoltAdapter(ForecastAdapter):
    """Chronos-Bolt (`chronos`'s `ChronosBoltModelForForecasting`): univariate, contexts up to `context_length`,
    quantile head; the point forecast is the median (the 0.5 quantile, or the middle level)."""

    family = "chronos_bolt"
    class_name = "ChronosBoltModelForForecasting"
    univariate = True

    def model_class(self):
        return _import("chronos.chronos_bolt", _CHRONOS_INSTALL).ChronosBoltModelForForecasting

    def native_horizon(self, model):
        return int(model.chronos_config.prediction_length)

    def max_context(self, model):
        return int(model.chronos_config.context_length)

    def fixed_context(self, model):
        return False  # shorter contexts are front-padded with missing patches by the model

    def quantile_levels(self, model):
        return [float(q) for q in model.chronos_config.quantiles]

    def _forecast(self, model, past_values, past_observed_mask, freq):
        levels = self.quantile_levels(model)
        context, mask = past_values[..., 0], past_observed_mask[..., 0]
        quantiles = model(context=torch.where(mask > 0, context, 0.0), mask=mask).quantile_preds  # (B, Q, H)
        quantiles = quantiles.transpose(1, 2)[:, :, None]  # (B, H, 1, Q)
        median = levels.index(0.5) if 0.5 in levels else len(levels) // 2
        return ModelForecast(mean=quantiles[..., median], quantiles=quantiles, quantile_levels=levels)


class TTMAdapter(ForecastAdapter):
    """TTM (`granite-tsfm`'s `TinyTimeMixerForPrediction`): exactly `context_length` steps of `num_input_channels`
    channels; `prediction_channel_indices` restricts the outputs; quantiles when it has a multi-quantile head."""

    family = "ttm"
    class_name = "TinyTimeMixerForPrediction"

    def model_class(self):
        return _import("tsfm_public", _TTM_INSTALL).TinyTimeMixerForPrediction

    def output_channels(self, model):
        indices = getattr(model.config, "prediction_channel_indices", None)
        return None if indices is None else [int(i) for i in indices]

    def quantile_levels(self, model):
        if getattr(model.config, "multi_quantile_head", False):
            return [float(q) for q in model.config.quantile_levels]
        return None

    def _forecast(self, model, past_values, past_observed_mask, freq):
        outputs = model(
            past_values=past_values, past_observed_mask=past_observed_mask, return_loss=False, return_dict=True
        )
        quantiles = getattr(outputs, "quantile_outputs", None)
        if quantiles is None:
            return ModelForecast(mean=outputs.prediction_outputs)
        return ModelForecast(
            mean=outputs.prediction_outputs,
            quantiles=quantiles.permute(0, 2, 3, 1),  # (B, Q, H, C) -> (B, H, C, Q)
            quantile_levels=self.quantile_levels(model),
        )


ADAPTERS: dict[str, ForecastAdapter] = {
    adapter.family: adapter
    for adapter in (
        TimesFmAdapter(),
        TimesFm2_5Adapter(),
        PatchTSTAdapter(),
        PatchTSMixerAdapter(),
        ChronosAdapter(),
        ChronosBoltAdapter(),
        TTMAdapter(),
    )
}
"""Adapters by family: `config.model_type`, except `chronos`/`chronos_bolt` (both `t5`) and `ttm` (see `family_of`)."""

MODEL_TYPE_FAMILIES = {"tinytimemixer": "ttm", "t5": "chronos"}
"""Families of the `config.model_type` strings that differ from their family name (`t5` alone: Chronos; a config or
model tells Chronos-Bolt apart)."""


def family_of(model_or_config: torch.nn.Module | PretrainedConfig | str) -> str | None:
    """The adapter family of a model, a config or a `config.model_type` string.

    It is `config.model_type` except for the `chronos-forecasting` checkpoints, whose model type is `t5`: a
    `ChronosBoltModelForForecasting` (or a config whose `chronos_config` has `input_patch_size`) is `chronos_bolt`, any
    other T5 is `chronos`; and TTM (`tinytimemixer`) is `ttm`.
    """
    if isinstance(model_or_config, str):
        return MODEL_TYPE_FAMILIES.get(model_or_config, model_or_config)
    base_model_type = getattr(getattr(model_or_config, "config", model_or_config), "base_model_type", None)
    if base_model_type:  # a pruned hf_tsprune checkpoint: its base family
        return MODEL_TYPE_FAMILIES.get(base_model_type, base_model_type)
    if isinstance(model_or_config, torch.nn.Module):
        names = {cls.__name__ for cls in type(model_or_config).__mro__}
        if "ChronosBoltModelForForecasting" in names:
            return "chronos_bolt"
        config = getattr(model_or_config, "config", None)
    else:
        config = model_or_config
    model_type = getattr(config, "model_type", None)
    if model_type == "t5" and "input_patch_size" in (getattr(config, "chronos_config", None) or {}):
        return "chronos_bolt"
    return MODEL_TYPE_FAMILIES.get(model_type, model_type)


def get_adapter(model_or_type: torch.nn.Module | PretrainedConfig | str) -> ForecastAdapter:
    """The adapter for a model, a config, a family name or a `config.model_type` string (see [`family_of`]).

    Raises:
        `ValueError`: the model family is not supported (the message lists the supported ones).
    """
    model_type = family_of(model_or_type)
    if model_type not in ADAPTERS:
        supported = ", ".join(f"{a.class_name} ({name})" for name, a in ADAPTERS.items())
        raise ValueError(f"Unsupported model type {model_type!r}: supported forecasting models are {supported}.")
    adapter = ADAPTERS[model_type]
    if isinstance(model_or_type, torch.nn.Module) and type(model_or_type).__name__ != adapter.class_name:
        logger.warning(
            f"{type(model_or_type).__name__} is not {adapter.class_name}; forecasting it as one "
            f"(model_type {model_type!r})."
        )
    return adapter
