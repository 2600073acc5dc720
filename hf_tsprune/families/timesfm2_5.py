"""TimesFM 2.5 (`TimesFm2_5ModelForPrediction`): rotary GQA attention with q/k RMS norms, fc1/fc2 MLP.

Prunable groups: key/value groups (with their query heads) and the value head dimension of every layer, the `fc1` ->
`fc2` MLP channels, and the hidden channels of the input and output residual blocks. The forecast is univariate
(channels folded into the batch), its point forecast the median head (`mean_predictions`).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.timesfm2_5 import modeling_timesfm2_5

from ..adapters import ModelForecast
from ..family import Family, register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from ..training import stack_features, univariate_values
from .timesfm import TimesFmAdapter


def timesfm2_5_attention_forward(
    self,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    cache=None,
    **kwargs,
):
    """`TimesFm2_5Attention.forward` with values viewed with `self.v_head_dim`."""
    input_shape = hidden_states.shape[:-1]
    query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    query_states, key_states = modeling_timesfm2_5.apply_rotary_pos_emb(query_states, key_states, cos, sin)
    query_states = self.q_norm(query_states)
    key_states = self.k_norm(key_states)
    scale = F.softplus(self.scaling).mul(1.442695041 / math.sqrt(self.head_dim))
    query_states = query_states * scale[None, None, None, :]
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_timesfm2_5.eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=self.attention_dropout if self.training else 0.0,
        scaling=1.0,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    context = min(config.context_length, 16 * config.patch_length)
    # without `forecast_context_len` the model front-pads every input to `config.context_length` (16384 by default)
    return {"past_values": torch.randn(batch_size, context, generator=generator), "forecast_context_len": context}


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).mean_predictions


class TimesFm2_5Adapter(TimesFmAdapter):
    """TimesFM 2.5: as TimesFM (univariate, contexts up to `context_length`), without `freq`.

    The point forecast is the model's `mean_predictions` (its median head). Clamping of non-negative series
    (`config.infer_is_positive`) is applied per series here; the model itself decides on the whole batch.
    """

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


def training_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    """`past_values`/`future_values` `(B, T)` (MSE + quantile loss)."""
    past = univariate_values(stack_features(features, "past_values"))
    return {"past_values": past, "future_values": univariate_values(stack_features(features, "future_values"))}


TIMESFM2_5 = register_family(
    Family(
        name="timesfm2_5",
        spec=ArchitectureSpec(
            name="timesfm2_5",
            model_classes=("TimesFm2_5ModelForPrediction",),
            groups=(
                AttentionGroup(
                    pattern=r"model\.layers\.\d+\.self_attn",
                    kv_groups_attr="num_key_value_groups",
                    v_head_dim_forward=timesfm2_5_attention_forward,
                ),
                MLPGroup(pattern=r"model\.layers\.\d+\.mlp", producers=("fc1",), consumer="fc2"),
                MLPGroup(
                    pattern=r"model\.input_ff_layer|output_projection_point|output_projection_quantiles",
                    producers=("input_layer",),
                    consumer="output_layer",
                    width_attrs=("hidden_dims",),
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=TimesFm2_5Adapter(),
        training_inputs=training_inputs,
        base_config_class="transformers:TimesFm2_5Config",
        base_model_class="transformers:TimesFm2_5ModelForPrediction",
        model_types=("timesfm2_5",),
        description="TimesFM 2.5 (Google)",
    )
)
