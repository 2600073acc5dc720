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
"""

from __future__ import annotations

import torch

from .base import ArchitectureSpec, AttentionGroup, MLPGroup, register_architecture


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    return {
        "past_values": torch.randn(batch_size, config.context_length, config.num_input_channels, generator=generator)
    }


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs, return_loss=False).prediction_outputs


TTM_SPEC = register_architecture(
    ArchitectureSpec(
        model_type="tinytimemixer",
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
    )
)
