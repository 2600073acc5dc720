"""PatchTSMixer (`PatchTSMixerForPrediction`): MLP mixers over patches, features and (optionally) channels."""

import torch

from .base import ArchitectureSpec, AttentionGroup, MLPGroup, register_architecture


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    return {
        "past_values": torch.randn(batch_size, config.context_length, config.num_input_channels, generator=generator)
    }


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).prediction_outputs


PATCHTSMIXER_SPEC = register_architecture(
    ArchitectureSpec(
        model_type="patchtsmixer",
        model_classes=("PatchTSMixerForPrediction",),
        groups=(
            AttentionGroup(pattern=r".*\.patch_mixer\.self_attn_layer", o="out_proj", num_heads_attrs=("num_heads",)),
            # patch mixer (over patches), feature mixer (over d_model) and channel mixer (over input channels)
            MLPGroup(
                pattern=r".*\.(patch_mixer|feature_mixer|channel_feature_mixer)\.mlp",
                producers=("fc1",),
                consumer="fc2",
            ),
        ),
        example_inputs=example_inputs,
        forecast=forecast,
    )
)
