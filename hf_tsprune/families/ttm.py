"""TTM (`granite-tsfm`'s `TinyTimeMixerForPrediction`): MLP mixers over patches, features and channels.

Prunable groups: the hidden channels (`fc1` rows <-> `fc2` columns, width `expansion_factor` x input) of every mixer
MLP, in the backbone, at every adaptive-patching level, in the decoder and, with forecast channel mixing, in the head's
exogenous mixer; and the heads of the patch mixers' optional self-attention (`self_attn=True`; pruned heads become
exact zero columns of `out_proj` inside partially kept heads).

Not prunable, because no channel there is exactly removable:

- the gated attention (`gating_block`, `fcm_gating_block`): `x * softmax(attn_layer(x))` maps a width onto itself,
  with the softmax normalising over that whole width; the width is the mixer's residual width (patches, `d_model` or
  channels), so a channel cannot go without changing every other channel's gate;
- the forecast head `head.base_forecast_block`: one Linear from the flattened decoder output (`num_patches` x
  `decoder_d_model`, the decoder's residual stream) to the horizon, with no intermediate channel; the paper's
  "head" pruning of TTM is pruning of the decoder's mixer MLPs (included here) in front of it;
- patch embedding (`patcher`), decoder `adapter` and `fcm_block.mlp`: they write or read residual widths.

Everything needs `granite-tsfm` (`tsfm_public`), which declares an old torch pin but runs on current torch and
transformers: install it with `--no-deps`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import ForecastAdapter, ModelForecast
from ..family import Family, register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from ..training import observed_window


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    return {
        "past_values": torch.randn(batch_size, config.context_length, config.num_input_channels, generator=generator)
    }


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs, return_loss=False).prediction_outputs


class TTMAdapter(ForecastAdapter):
    """TTM (`granite-tsfm`'s `TinyTimeMixerForPrediction`): exactly `context_length` steps of `num_input_channels`
    channels; `prediction_channel_indices` restricts the outputs; quantiles when it has a multi-quantile head."""

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


def training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """TTM: `past_values`/`future_values` `(B, T, C)` with their observed masks; a target shorter than the model's
    horizon is zero-padded and masked out of the MSE."""
    past, past_observed = observed_window(features, "past_values", univariate=False)
    future, future_observed = observed_window(features, "future_values", univariate=False)
    horizon = int(model.config.prediction_filter_length or model.config.prediction_length)
    if future.shape[1] > horizon:
        raise ValueError(
            f"The target windows have {future.shape[1]} steps but {type(model).__name__} forecasts {horizon}: use a "
            f"prediction_length <= {horizon}."
        )
    if future.shape[1] < horizon:
        pad = future.new_zeros(future.shape[0], horizon - future.shape[1], future.shape[2])
        future, future_observed = torch.cat([future, pad], dim=1), torch.cat([future_observed, pad], dim=1)
    return {
        "past_values": past,
        "past_observed_mask": past_observed,
        "future_values": future,
        "future_observed_mask": future_observed,
    }


TTM = register_family(
    Family(
        name="ttm",
        spec=ArchitectureSpec(
            name="ttm",
            model_classes=("TinyTimeMixerForPrediction",),
            groups=(
                AttentionGroup(
                    pattern=r".*\.patch_mixer\.self_attn_layer",
                    o="out_proj",
                    num_heads_attrs=("num_heads",),
                    size_attrs={"embed_dim": "o"},
                    num_outputs=3,  # (output, attention weights, past key/value)
                ),
                MLPGroup(
                    pattern=r".*\.(patch_mixer|feature_mixer|channel_feature_mixer)\.mlp",
                    producers=("fc1",),
                    consumer="fc2",
                    module_classes=("TinyTimeMixerMLP",),
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=TTMAdapter(),
        training_inputs=training_inputs,
        base_config_class="tsfm_public:TinyTimeMixerConfig",
        base_model_class="tsfm_public:TinyTimeMixerForPrediction",
        model_types=("tinytimemixer",),
        requires="tsfm_public",
        install_hint='pip install --no-deps granite-tsfm && pip install einops deprecated "scikit-learn<1.8"',
        description="Tiny Time Mixers (IBM granite-tsfm)",
    )
)
