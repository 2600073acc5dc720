"""Forecasting adapters: how a model of each family is called for a point forecast.

An adapter turns a batch of contexts `past_values` `(batch, context, channels)` into the model's forward arguments,
reads the point (and quantile) forecast back as `(batch, native_horizon, channels)`, and knows the model's native
horizon and context limits. The evaluation loop ([`hf_tsprune.evaluation`]) builds on it for any horizon
(autoregressive rollout) and any context length. [`ForecastAdapter`] holds what every family shares; each family file
of `hf_tsprune/families/` subclasses it with its own `_forecast` (and limits) and registers it with the family.

Univariate families (TimesFM, Chronos, Chronos-Bolt) fold the channels into the batch. Families with a fixed context
(PatchTST, PatchTSMixer, TTM) take exactly `config.context_length` steps: longer contexts keep their last steps,
shorter ones are front-padded with zeros that the observed mask marks missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
from transformers.utils import logging

from .family import family_of, get_family

logger = logging.get_logger(__name__)

__all__ = [
    "ForecastAdapter",
    "ModelForecast",
    "PatchDecoderAdapter",
    "distribution_forecast",
    "family_of",
    "get_adapter",
    "model_device",
    "native_horizon_target",
    "whole_patches",
]


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


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of `model`'s first parameter (the CPU for a model without parameters)."""
    return _model_device_dtype(model)[0]


class ForecastAdapter:
    """Base adapter; subclasses fill in the family-specific parts.

    Attributes:
        family (`str`): The family this adapter serves (set when the family is registered).
        class_name (`str`): The family's model class name.
        univariate (`bool`): Whether the model forecasts one series at a time (channels folded into the batch).
    """

    family: str = ""
    class_name: str = ""
    univariate: bool = False

    def bind(self, family) -> None:
        """Called by `register_family`: the adapter serves `family`."""
        self.family = family.name
        self.class_name = family.model_classes[0]

    def model_class(self) -> type:
        """The family's (dense) model class."""
        return get_family(self.family).base_classes()[1]

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


class PatchDecoderAdapter(ForecastAdapter):
    """Base of the univariate decoders over patches of `config.input_token_len` values (Timer-XL, Sundial): any
    context up to `max_position_embeddings` patches, not padded to a fixed length."""

    univariate = True

    def max_context(self, model):
        return int(model.config.max_position_embeddings) * int(model.config.input_token_len)

    def fixed_context(self, model):
        return False


def whole_patches(series: torch.Tensor, patch: int, model_name: str) -> torch.Tensor:
    """The last whole patches of `(batch, length)` series: a patch decoder drops (or pads) a trailing remainder, and
    its training labels are indexed by patch; cropping at the front keeps the most recent data.

    Args:
        series (`torch.Tensor`): `(batch, length)` values.
        patch (`int`): The model's patch length (`input_token_len`).
        model_name (`str`): The model's name, for the error message.

    Raises:
        `ValueError`: the series is shorter than one patch.
    """
    length = series.shape[1] // patch * patch
    if length == 0:
        raise ValueError(
            f"{model_name} reads patches of input_token_len={patch} values; the context has {series.shape[1]}. Use "
            f"--context_length >= {patch}."
        )
    return series[:, series.shape[1] - length :]


def native_horizon_target(future: torch.Tensor, needed: int, loss_name: str) -> torch.Tensor:
    """The first `needed` values of `(batch, length)` training targets, for a loss that compares each patch's
    forecast with the `needed` values after it (the family trains on its native horizon).

    Args:
        future (`torch.Tensor`): `(batch, length)` target values.
        needed (`int`): Values the loss reads after every patch.
        loss_name (`str`): The loss, for the error message (e.g. `"Timer-XL's loss"`).

    Raises:
        `ValueError`: the targets hold fewer than `needed` values.
    """
    if future.shape[1] < needed:
        raise ValueError(
            f"{loss_name} compares each patch's forecast with the {needed} values after it; the windows' targets "
            f"have {future.shape[1]}. Build the training windows with `training_target_length(model, ...)`."
        )
    return future[:, :needed]


def distribution_forecast(model, outputs, num_samples: int = 100) -> ModelForecast:
    """Mean and sampled deciles of a PatchTST/PatchTSMixer distribution head."""
    distribution = model.distribution_output.distribution(
        outputs.prediction_outputs, loc=outputs.loc, scale=outputs.scale
    )
    mean = distribution.mean
    samples = distribution.sample(torch.Size([num_samples]))
    levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    quantiles = torch.quantile(samples.float(), torch.tensor(levels, device=samples.device), dim=0)
    return ModelForecast(mean=mean, quantiles=quantiles.permute(1, 2, 3, 0), quantile_levels=levels)


def get_adapter(model_or_type: torch.nn.Module | PretrainedConfig | str) -> ForecastAdapter:
    """The adapter for a model, a config, a family name or a `config.model_type` string (see [`family_of`]).

    Raises:
        `ValueError`: the model family is not supported (the message lists the supported ones).
        `ImportError`: the family's optional package is not installed.
    """
    try:
        family = get_family(model_or_type, require=False)
    except TypeError:
        from .family import families

        supported = ", ".join(f"{f.model_classes[0]} ({name})" for name, f in families().items())
        what = (
            model_or_type
            if isinstance(model_or_type, str)
            else getattr(getattr(model_or_type, "config", model_or_type), "model_type", type(model_or_type).__name__)
        )
        raise ValueError(f"Unsupported model type {what!r}: supported forecasting models are {supported}.") from None
    family.require()
    if isinstance(model_or_type, torch.nn.Module) and not any(
        cls.__name__ in family.model_classes for cls in type(model_or_type).__mro__
    ):
        logger.warning(
            f"{type(model_or_type).__name__} is not a {'/'.join(family.model_classes)}; forecasting it as one "
            f"(family {family.name!r})."
        )
    return family.adapter
