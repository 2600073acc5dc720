"""Chronos-Bolt (`chronos-forecasting`'s `ChronosBoltModelForForecasting`): patches -> T5 encoder-decoder -> quantiles.

Prunable groups: the T5 stack's attention heads and feed-forward channels exactly as for Chronos (see
`hf_tsprune.families.chronos`: per-layer heads with the shared relative position bias indexed by the kept heads),
and the hidden channels of the two residual blocks, `input_patch_embedding` (patch and mask -> `d_model`) and
`output_patch_embedding` (`d_model` -> quantiles x horizon): `hidden_layer` rows <-> `output_layer` columns. Their
`residual_layer` maps input to output directly and has no intermediate channel.

Forecasting, training and the model class itself need the `chronos` package.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import ForecastAdapter, ModelForecast
from ..family import Family, register_family
from ..specs import ArchitectureSpec, MLPGroup
from ..training import observed_window
from .chronos import CHRONOS_INSTALL, t5_groups


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    context = int(model.chronos_config.context_length)
    return {"context": torch.randn(batch_size, context, generator=generator)}


def forecast(model, inputs: dict) -> torch.Tensor:
    """Quantile forecasts `(batch, num_quantiles, prediction_length)`."""
    return model(**inputs).quantile_preds


class ChronosBoltAdapter(ForecastAdapter):
    """Chronos-Bolt (`chronos`'s `ChronosBoltModelForForecasting`): univariate, contexts up to `context_length`,
    quantile head; the point forecast is the median (the 0.5 quantile, or the middle level)."""

    univariate = True

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


def training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """Chronos-Bolt: `context`/`mask` and `target`/`target_mask` (targets shorter than the horizon are padded by the
    model and left out of its quantile loss)."""
    past, past_observed = observed_window(features, "past_values", univariate=True)
    future, future_observed = observed_window(features, "future_values", univariate=True)
    return {"context": past, "mask": past_observed, "target": future, "target_mask": future_observed > 0}


def chronos_bolt_pipeline(model: nn.Module):
    """`chronos.ChronosBoltPipeline` around a (dense or pruned) Chronos-Bolt model."""
    from chronos import ChronosBoltPipeline

    return ChronosBoltPipeline(model=model)


def is_chronos_bolt_config(config) -> bool:
    """Whether a `t5` configuration is Chronos-Bolt's (its `chronos_config` has input patches)."""
    return "input_patch_size" in (getattr(config, "chronos_config", None) or {})


CHRONOS_BOLT = register_family(
    Family(
        name="chronos_bolt",
        spec=ArchitectureSpec(
            name="chronos_bolt",
            model_classes=("ChronosBoltModelForForecasting",),
            groups=t5_groups()
            + (
                MLPGroup(
                    pattern=r"input_patch_embedding|output_patch_embedding",
                    producers=("hidden_layer",),
                    consumer="output_layer",
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=ChronosBoltAdapter(),
        training_inputs=training_inputs,
        label_names=("target",),
        base_config_class="transformers:T5Config",
        base_model_class="chronos.chronos_bolt:ChronosBoltModelForForecasting",
        model_types=("t5",),
        config_matches=is_chronos_bolt_config,
        pruned_config_class_name="PrunedChronosBoltConfig",
        requires="chronos",
        install_hint=CHRONOS_INSTALL,
        native_pipeline=chronos_bolt_pipeline,
        description="Chronos-Bolt (Amazon): patches into a T5, quantile head",
    )
)
