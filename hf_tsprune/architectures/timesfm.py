"""TimesFM (1.x / 2.0, `TimesFmModelForPrediction`): decoder-only, per-dimension query scaling, ReLU MLP."""

import torch

from .base import ArchitectureSpec, AttentionGroup, MLPGroup, register_architecture
from .v_head_dim import timesfm_attention_forward


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    past_values = torch.randn(batch_size, config.context_length, generator=generator)
    return {"past_values": past_values, "freq": [0] * batch_size}


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).mean_predictions


TIMESFM_SPEC = register_architecture(
    ArchitectureSpec(
        model_type="timesfm",
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
    )
)
