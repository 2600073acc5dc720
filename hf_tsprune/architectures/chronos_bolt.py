"""Chronos-Bolt (`chronos-forecasting`'s `ChronosBoltModelForForecasting`): patches -> T5 encoder-decoder -> quantiles.

Prunable groups: the T5 stack's attention heads and feed-forward channels exactly as for Chronos (see
`hf_tsprune.architectures.chronos`: per-layer heads with the shared relative position bias indexed by the kept heads),
and the hidden channels of the two residual blocks, `input_patch_embedding` (patch and mask -> `d_model`) and
`output_patch_embedding` (`d_model` -> quantiles x horizon): `hidden_layer` rows <-> `output_layer` columns. Their
`residual_layer` maps input to output directly and has no intermediate channel.
"""

from __future__ import annotations

import torch

from .base import ArchitectureSpec, MLPGroup, register_architecture
from .chronos import t5_groups


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    context = int(model.chronos_config.context_length)
    return {"context": torch.randn(batch_size, context, generator=generator)}


def forecast(model, inputs: dict) -> torch.Tensor:
    """Quantile forecasts `(batch, num_quantiles, prediction_length)`."""
    return model(**inputs).quantile_preds


CHRONOS_BOLT_SPEC = register_architecture(
    ArchitectureSpec(
        model_type="chronos_bolt",
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
    )
)
