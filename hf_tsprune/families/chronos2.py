"""Chronos-2 (`chronos-forecasting`'s `Chronos2Model`): patches into a T5-style encoder whose every block attends over
time (with rotary positions) and across the series of a group, then a quantile head.

Prunable groups, per encoder block:

- time self-attention (`layer.0.self_attention`) and group self-attention (`layer.1.self_attention`) heads: `q`/`k`/`v`
  rows <-> `o` columns; value channels pruned inside kept heads are cut (`v_head_dim`: Chronos-2 does not scale its
  scores by `1/sqrt(head_dim)`, and rotary positions act on queries and keys only, so values are free). The attention
  masks broadcast over heads, so any head set is exact. A block left with no head stays in place with zero-width
  projections (its callers read an `AttentionOutput`, not a tuple);
- feed-forward channels `layer.2.mlp`: `wi` -> `wo`;

and the hidden channels of the input and output residual blocks (`input_patch_embedding`,
`output_patch_embedding`: `hidden_layer` -> `output_layer`). Query/key channels are not pruned: they carry the rotary
pairs of the time attention.

Forecasting is multivariate: the channels of a window form one group (`group_ids`), so group attention mixes them, as
`Chronos2Pipeline` does for a multivariate series; the point forecast is the median quantile. Training uses the model's
own quantile loss on `future_target`. Everything needs the `chronos` package.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..adapters import ForecastAdapter, ModelForecast
from ..family import Family, register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from ..training import observed_window
from .chronos import CHRONOS_INSTALL


def chronos2_attention_forward(
    self,
    hidden_states: torch.Tensor,
    mask: torch.Tensor,
    encoder_states: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    output_attentions: bool = False,
):
    """Chronos-2's `MHA.forward` for a shrunk block: `self.n_heads` heads, values viewed with `self.v_head_dim`, and
    no head at all supported (the block then adds its output projection of nothing: zeros)."""
    from chronos.chronos2.layers import AttentionOutput, Chronos2RotaryEmbedding

    if self.use_rope and position_ids is None:
        raise ValueError("position_ids must be provided when self.use_rope=True")
    batch, length = hidden_states.shape[:2]
    if self.n_heads == 0:
        return AttentionOutput(hidden_states=self.o(hidden_states.new_zeros(batch, length, 0)), attn_weights=None)
    source = hidden_states if encoder_states is None else encoder_states
    query_states = self.q(hidden_states).view(batch, length, self.n_heads, self.kv_proj_dim).transpose(1, 2)
    key_states = self.k(source).view(batch, source.shape[1], self.n_heads, self.kv_proj_dim).transpose(1, 2)
    value_states = self.v(source).view(batch, source.shape[1], self.n_heads, self.v_head_dim).transpose(1, 2)
    if encoder_states is None and self.use_rope:
        cos, sin = self.rope_embed(value_states, position_ids)
        query_states, key_states = Chronos2RotaryEmbedding.apply_rotary_pos_emb(query_states, key_states, cos, sin)
    if self.config._attn_implementation == "sdpa" and not output_attentions:
        attn_output, attn_weights = self._sdpa_attention(query_states, key_states, value_states, mask)
    else:
        attn_output, attn_weights = self._eager_attention(query_states, key_states, value_states, mask)
    attn_output = attn_output.transpose(1, 2).reshape(batch, length, self.n_heads * self.v_head_dim)
    return AttentionOutput(hidden_states=self.o(attn_output), attn_weights=attn_weights if output_attentions else None)


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    """Contexts of `context_length` steps, two series per group, and the longest native output."""
    settings = model.chronos_config
    context = torch.randn(batch_size, settings.context_length, generator=generator)
    return {
        "context": context,
        "group_ids": torch.arange(batch_size) // 2,
        "num_output_patches": settings.max_output_patches,
    }


def forecast(model, inputs: dict) -> torch.Tensor:
    """Quantile forecasts `(batch, num_quantiles, num_output_patches * output_patch_size)`."""
    return model(**inputs).quantile_preds


def _series(values: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(B, T, C)` windows -> `(B * C, T)` series (missing values as NaN), their observed mask, and group ids (the
    channels of one window form one group)."""
    batch, length, channels = values.shape
    series = torch.where(observed > 0, values, torch.nan).permute(0, 2, 1).reshape(batch * channels, length)
    mask = observed.permute(0, 2, 1).reshape(batch * channels, length)
    group_ids = torch.arange(batch, device=values.device).repeat_interleave(channels)
    return series, mask, group_ids


class Chronos2Adapter(ForecastAdapter):
    """Chronos-2: any number of channels (one group per window), contexts up to `context_length`, quantile head; the
    point forecast is the median (the 0.5 quantile, or the middle level)."""

    def native_horizon(self, model):
        return int(model.chronos_config.max_output_patches * model.chronos_config.output_patch_size)

    def max_context(self, model):
        return int(model.chronos_config.context_length)

    def fixed_context(self, model):
        return False  # shorter contexts are padded with missing values by the model

    def num_input_channels(self, model):
        return None

    def check_channels(self, model, num_channels):
        return False  # channels stay together: group attention mixes them

    def quantile_levels(self, model):
        return [float(q) for q in model.chronos_config.quantiles]

    def _forecast(self, model, past_values, past_observed_mask, freq):
        batch, _, channels = past_values.shape
        context, mask, group_ids = _series(past_values, past_observed_mask)
        outputs = model(
            context=context,
            context_mask=mask,
            group_ids=group_ids,
            num_output_patches=int(model.chronos_config.max_output_patches),
        )
        quantiles = outputs.quantile_preds  # (B * C, Q, H)
        levels = self.quantile_levels(model)
        quantiles = quantiles.reshape(batch, channels, len(levels), -1).permute(0, 3, 1, 2)  # (B, H, C, Q)
        median = levels.index(0.5) if 0.5 in levels else len(levels) // 2
        return ModelForecast(mean=quantiles[..., median], quantiles=quantiles, quantile_levels=levels)


def training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """`context`/`context_mask` and `future_target`/`future_target_mask` `(B * C, T)` with one group per window (the
    model's quantile loss; targets shorter than the output patches are padded by the model and left out of it)."""
    past, past_observed = observed_window(features, "past_values", univariate=False)
    future, future_observed = observed_window(features, "future_values", univariate=False)
    context, context_mask, group_ids = _series(past, past_observed)
    target, target_mask, _ = _series(future, future_observed)
    settings = model.chronos_config
    num_output_patches = math.ceil(target.shape[1] / settings.output_patch_size)
    if num_output_patches > settings.max_output_patches:
        raise ValueError(
            f"The target windows have {target.shape[1]} steps but Chronos-2 forecasts at most "
            f"{settings.max_output_patches * settings.output_patch_size} in one pass: use a smaller prediction_length."
        )
    return {
        "context": context,
        "context_mask": context_mask,
        "group_ids": group_ids,
        "future_target": torch.nan_to_num(target),
        "future_target_mask": target_mask,
        "num_output_patches": num_output_patches,
    }


def chronos2_pipeline(model: nn.Module):
    """`chronos.Chronos2Pipeline` around a (dense or pruned) Chronos-2 model."""
    from chronos import Chronos2Pipeline

    return Chronos2Pipeline(model=model)


def is_chronos2_config(config) -> bool:
    """Whether a `t5` configuration is Chronos-2's (its `chronos_config` has output patches)."""
    return "output_patch_size" in (getattr(config, "chronos_config", None) or {})


MHA = dict(
    q="q",
    k="k",
    v="v",
    o="o",
    head_dim_attr="kv_proj_dim",
    num_heads_attrs=("n_heads",),
    size_attrs={"inner_dim": "q"},
    v_head_dim_forward=chronos2_attention_forward,
    keep_empty_blocks=True,
)

CHRONOS2 = register_family(
    Family(
        name="chronos2",
        spec=ArchitectureSpec(
            name="chronos2",
            model_classes=("Chronos2Model",),
            groups=(
                AttentionGroup(pattern=r"encoder\.block\.\d+\.layer\.[01]\.self_attention", **MHA),
                MLPGroup(pattern=r"encoder\.block\.\d+\.layer\.2\.mlp", producers=("wi",), consumer="wo"),
                MLPGroup(
                    pattern=r"input_patch_embedding|output_patch_embedding",
                    producers=("hidden_layer",),
                    consumer="output_layer",
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=Chronos2Adapter(),
        training_inputs=training_inputs,
        label_names=("future_target",),
        base_config_class="chronos.chronos2.config:Chronos2CoreConfig",
        base_model_class="chronos.chronos2.model:Chronos2Model",
        model_types=("t5",),
        config_matches=is_chronos2_config,
        requires="chronos",
        install_hint=CHRONOS_INSTALL,
        native_pipeline=chronos2_pipeline,
        description="Chronos-2 (Amazon): time and group attention, quantile head",
    )
)
