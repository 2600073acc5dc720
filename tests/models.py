"""Tiny and released-layout configs of every supported architecture, built with random weights."""

import torch
from transformers import (
    PatchTSMixerConfig,
    PatchTSMixerForPrediction,
    PatchTSTConfig,
    PatchTSTForPrediction,
    TimesFm2_5Config,
    TimesFm2_5ModelForPrediction,
    TimesFmConfig,
    TimesFmModelForPrediction,
)

NO_DROPOUT = dict(
    dropout=0.0, attention_dropout=0.0, ff_dropout=0.0, positional_dropout=0.0, path_dropout=0.0, head_dropout=0.0
)

TINY = {
    "timesfm": lambda: TimesFmModelForPrediction(
        TimesFmConfig(patch_length=8, context_length=32, horizon_length=8, num_hidden_layers=2, hidden_size=16,
                      intermediate_size=24, head_dim=4, num_attention_heads=4)
    ),
    "timesfm2_5": lambda: TimesFm2_5ModelForPrediction(
        TimesFm2_5Config(patch_length=8, context_length=64, horizon_length=8, num_hidden_layers=2, hidden_size=16,
                         intermediate_size=24, head_dim=4, num_attention_heads=4, num_key_value_heads=2,
                         output_quantile_len=16, max_position_embeddings=64)
    ),
    "patchtst": lambda: PatchTSTForPrediction(
        PatchTSTConfig(context_length=32, prediction_length=8, num_input_channels=2, patch_length=8, patch_stride=8,
                       d_model=16, num_attention_heads=4, num_hidden_layers=2, ffn_dim=24, **NO_DROPOUT)
    ),
    "patchtsmixer": lambda: PatchTSMixerForPrediction(
        PatchTSMixerConfig(context_length=32, prediction_length=8, num_input_channels=2, patch_length=8,
                           patch_stride=8, d_model=16, num_layers=2, self_attn=True, self_attn_heads=2,
                           mode="mix_channel", dropout=0.0, head_dropout=0.0)
    ),
}  # fmt: skip

# The classes' default configs: the released layouts (TimesFM 200M, TimesFM 2.5 200M, ...).
DEFAULT = {
    "timesfm": lambda: TimesFmModelForPrediction(TimesFmConfig()),
    "timesfm2_5": lambda: TimesFm2_5ModelForPrediction(TimesFm2_5Config()),
    "patchtst": lambda: PatchTSTForPrediction(PatchTSTConfig()),
    "patchtsmixer": lambda: PatchTSMixerForPrediction(PatchTSMixerConfig()),
}


def build(name: str, default: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = (DEFAULT if default else TINY)[name]()
    return model.eval()
