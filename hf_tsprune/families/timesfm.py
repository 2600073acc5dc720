"""TimesFM 1.x / 2.0 (`TimesFmModelForPrediction`): decoder-only, per-dimension query scaling, ReLU MLP.

Prunable groups: attention heads and the value head dimension of every decoder layer, the `gate_proj` -> `down_proj`
MLP channels, and the hidden channels of the input and horizon residual blocks. The forecast is univariate (channels
folded into the batch), with a `freq` category; the loss compares the whole native horizon with the target, so
training windows carry `horizon_length` target steps.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.timesfm import modeling_timesfm

from ..adapters import ForecastAdapter, ModelForecast
from ..family import Family, register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from ..training import stack_features, univariate_values


def timesfm_attention_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
    """`TimesFmAttention.forward` with values viewed with `self.v_head_dim`."""
    input_shape = hidden_states.shape[:-1]
    query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    query_states = self._scale_query(query_states)
    key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_timesfm.simple_eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=1.0,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    past_values = torch.randn(batch_size, config.context_length, generator=generator)
    return {"past_values": past_values, "freq": [0] * batch_size}


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).mean_predictions


class TimesFmAdapter(ForecastAdapter):
    """TimesFM 1.0/2.0: univariate, contexts up to `context_length`, `freq` category."""

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


def training_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    """`past_values`/`future_values` `(B, T)` and the `freq` category (MSE + quantile loss)."""
    past = univariate_values(stack_features(features, "past_values"))
    future = univariate_values(stack_features(features, "future_values"))
    return {"past_values": past, "future_values": future, "freq": [freq_index] * len(features)}


TIMESFM = register_family(
    Family(
        name="timesfm",
        spec=ArchitectureSpec(
            name="timesfm",
            model_classes=("TimesFmModelForPrediction",),
            groups=(
                AttentionGroup(
                    pattern=r"decoder\.layers\.\d+\.self_attn",
                    num_heads_attrs=("num_heads",),
                    size_attrs={"q_size": "q", "kv_size": "kv"},
                    v_head_dim_forward=timesfm_attention_forward,
                ),
                MLPGroup(pattern=r"decoder\.layers\.\d+\.mlp", producers=("gate_proj",), consumer="down_proj"),
                MLPGroup(
                    pattern=r"decoder\.input_ff_layer|horizon_ff_layer",
                    producers=("input_layer",),
                    consumer="output_layer",
                    width_attrs=("hidden_dims",),
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=TimesFmAdapter(),
        training_inputs=training_inputs,
        base_config_class="transformers:TimesFmConfig",
        base_model_class="transformers:TimesFmModelForPrediction",
        model_types=("timesfm",),
        trains_native_horizon=True,
        description="TimesFM 1.0 / 2.0 (Google)",
    )
)
