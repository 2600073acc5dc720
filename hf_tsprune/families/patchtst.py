"""PatchTST (`PatchTSTForPrediction`): encoder-only, channel-independent patches; `ff` is Linear-act-drop-Linear.

Prunable groups: the attention heads of every encoder layer (value channels pruned inside a kept head stay as exact
zero columns of `out_proj`: its attention has no separate value head dimension) and the `ff.0` -> `ff.3` channels.
The model takes exactly `context_length` steps of `num_input_channels` channels.
"""

import torch
from torch import nn

from ..adapters import ForecastAdapter, ModelForecast, distribution_forecast
from ..family import Family, register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from ..training import channels_last, stack_features


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    return {
        "past_values": torch.randn(batch_size, config.context_length, config.num_input_channels, generator=generator)
    }


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).prediction_outputs


class PatchTSTAdapter(ForecastAdapter):
    """PatchTST: exactly `context_length` steps of `num_input_channels` channels; a distribution head's mean."""

    def quantile_levels(self, model):
        return [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] if model.distribution_output is not None else None

    def _forecast(self, model, past_values, past_observed_mask, freq):
        outputs = model(past_values=past_values, past_observed_mask=past_observed_mask, return_dict=True)
        if model.distribution_output is not None:
            return distribution_forecast(model, outputs)
        return ModelForecast(mean=outputs.prediction_outputs)


def training_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    """`past_values`/`future_values` `(B, T, C)` and the observed mask (MSE, or NLL with a distribution head)."""
    inputs = {
        "past_values": channels_last(stack_features(features, "past_values")),
        "future_values": channels_last(stack_features(features, "future_values")),
    }
    if "past_observed_mask" in features[0]:
        inputs["past_observed_mask"] = channels_last(stack_features(features, "past_observed_mask"))
    return inputs


PATCHTST = register_family(
    Family(
        name="patchtst",
        spec=ArchitectureSpec(
            name="patchtst",
            model_classes=("PatchTSTForPrediction",),
            groups=(
                AttentionGroup(
                    pattern=r"model\.encoder\.layers\.\d+\.self_attn",
                    o="out_proj",
                    num_heads_attrs=("num_heads",),
                ),
                MLPGroup(pattern=r"model\.encoder\.layers\.\d+\.ff", producers=("0",), consumer="3"),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=PatchTSTAdapter(),
        training_inputs=training_inputs,
        base_config_class="transformers:PatchTSTConfig",
        base_model_class="transformers:PatchTSTForPrediction",
        model_types=("patchtst",),
        description="PatchTST (IBM / Princeton)",
    )
)
