"""Timer-XL (`TimerForPrediction`, `thuml/timer-base-84m`): hf_tsprune's own transformers-5 implementation in
`hf_tsprune.models.timer_xl`, a decoder over patches of `input_token_len` values with rotary multi-head attention and
SwiGLU feed-forward blocks.

Prunable groups: the heads and value channels of every layer's attention (the module reads `v_head_dim` itself), its
rotary query/key pairs (`rotary_pairs_attr`: the query/key head dimension shrinks by pairs `(i, i + d/2)`, the cos/sin
tables re-indexed per head, the softmax scale of the full head dimension kept), and the `gate_proj`, `up_proj` ->
`down_proj` channels of every feed-forward block. A layer whose heads are all pruned keeps one head without value
channels (`keep_one_head`), so that cached generation (whose length transformers reads from the layers' keys) still
works. Pruned checkpoints load through `AutoModelForTimeSeriesPrediction` and, as the released one,
`AutoModelForCausalLM`; they carry `hf_tsprune/models/timer_xl.py` verbatim for `trust_remote_code=True`.

Forecasting is univariate (channels folded into the batch): the context is cropped to its last whole patches,
normalised per series by its mean and standard deviation (the released `generate`'s `revin`, with the deviation
floored so that a constant series stays finite), and the longest head forecasts `max(output_token_lens)` values,
de-normalised; longer horizons roll out. Training uses the model's own next-patch MSE (the mean over its heads of
every patch's forecast against the values that follow it), on the same per-window normalisation: the training windows
carry the native horizon (`max(output_token_lens)` values) as target.
"""

import torch
from torch import nn

from ..adapters import ModelForecast, PatchDecoderAdapter, native_horizon_target, whole_patches
from ..family import Family, register_family
from ..specs import ArchitectureSpec, contract_attention_group, swiglu_group
from ..training import stack_features, univariate_values

STD_FLOOR = 1e-5
"""Smallest standard deviation a window is normalised by (a constant window would otherwise divide by zero)."""


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    patch = int(model.config.input_token_len)
    patches = max(2, min(8, 1024 // patch))
    return {"input_ids": torch.randn(batch_size, patches * patch, generator=generator)}


def forecast(model, inputs: dict) -> torch.Tensor:
    horizon = max(model.config.output_token_lens)
    return model(**inputs, use_cache=False, max_output_length=horizon, return_dict=True).logits


def normalisation(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-series mean and (unbiased, floored) standard deviation of `(batch, length)` contexts, `(batch, 1)` each."""
    mean = context.mean(dim=-1, keepdim=True)
    std = context.std(dim=-1, keepdim=True) if context.shape[1] > 1 else torch.ones_like(mean)
    return mean, torch.nan_to_num(std, nan=1.0).clamp_min(STD_FLOOR)


class TimerXLAdapter(PatchDecoderAdapter):
    """Timer-XL: univariate, any context of whole patches (cropped at the front), up to `max_position_embeddings`
    patches; one pass forecasts `max(output_token_lens)` values on the per-series normalised context."""

    def native_horizon(self, model):
        return int(max(model.config.output_token_lens))

    def _forecast(self, model, past_values, past_observed_mask, freq):
        series = whole_patches(past_values[..., 0], int(model.config.input_token_len), "Timer-XL")
        mean, std = normalisation(series)
        horizon = self.native_horizon(model)
        outputs = model(input_ids=(series - mean) / std, use_cache=False, max_output_length=horizon, return_dict=True)
        return ModelForecast(mean=(outputs.logits * std + mean)[:, :, None])


def training_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    """`input_ids` `(B, T)`: the context cropped to whole patches and normalised per window; `labels`: the same
    series shifted by one patch and extended by the target (normalised alike), for the next-patch MSE of every head
    (the target holds at least `max(output_token_lens)` values: the family trains on its native horizon)."""
    patch = int(model.config.input_token_len)
    past = whole_patches(univariate_values(stack_features(features, "past_values"), "Timer-XL"), patch, "Timer-XL")
    future = univariate_values(stack_features(features, "future_values"), "Timer-XL")
    future = native_horizon_target(future, int(max(model.config.output_token_lens)), "Timer-XL's loss")
    mean, std = normalisation(past)
    past, future = (past - mean) / std, (future - mean) / std
    return {"input_ids": past, "labels": torch.cat([past[:, patch:], future], dim=1)}


TIMER_XL = register_family(
    Family(
        name="timer_xl",
        spec=ArchitectureSpec(
            name="timer_xl",
            model_classes=("TimerForPrediction",),
            groups=(
                contract_attention_group(("TimerAttention",)),  # keeps one head: the key/value cache's length
                swiglu_group(r"model\.layers\.\d+\.ffn_layer", ("TimerMLP",)),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=TimerXLAdapter(),
        training_inputs=training_inputs,
        label_names=("labels",),
        trains_native_horizon=True,
        base_config_class="hf_tsprune.models.timer_xl:TimerConfig",
        base_model_class="hf_tsprune.models.timer_xl:TimerForPrediction",
        model_types=("timer",),
        extra_auto_classes=("AutoModelForCausalLM",),  # the Auto class the released checkpoint names
        description="Timer-XL (THUML), hf_tsprune's own transformers-5 implementation",
    )
)
