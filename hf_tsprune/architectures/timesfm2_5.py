"""TimesFM 2.5 (`TimesFm2_5ModelForPrediction`): rotary GQA attention with q/k RMS norms, fc1/fc2 MLP."""

import torch

from .base import ArchitectureSpec, AttentionGroup, MLPGroup, register_architecture
from .v_head_dim import timesfm2_5_attention_forward


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    config = model.config
    context = min(config.context_length, 16 * config.patch_length)
    # without `forecast_context_len` the model front-pads every input to `config.context_length` (16384 by default)
    return {"past_values": torch.randn(batch_size, context, generator=generator), "forecast_context_len": context}


def forecast(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).mean_predictions


TIMESFM2_5_SPEC = register_architecture(
    ArchitectureSpec(
        model_type="timesfm2_5",
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
    )
)
