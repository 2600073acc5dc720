"""PatchTST (`PatchTSTForPrediction`): encoder-only, channel-independent patches; `ff` is Linear-act-drop-Linear."""

import torch

from .base import ArchitectureSpec, AttentionGroup, MLPGroup, register_architecture


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    return {
        "past_values": torch.randn(batch_size, config.context_length, config.num_input_channels, generator=generator)
    }


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).prediction_outputs


PATCHTST_SPEC = register_architecture(
    ArchitectureSpec(
        model_type="patchtst",
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
    )
)
