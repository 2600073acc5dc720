"""Time-MoE (`TimeMoeForPrediction`, `Maple728/TimeMoE-50M` / `-200M`): hf_tsprune's own transformers-5
implementation in `hf_tsprune.models.time_moe`, a decoder over single time points with rotary grouped-query attention
and mixture-of-experts feed-forward blocks (top-k routed SwiGLU experts plus a sigmoid-gated shared expert), or dense
SwiGLU blocks (`use_dense`).

Prunable groups, per decoder layer (`model.layers.N`):

- the grouped-query attention (`self_attn`): its key/value heads (with the query heads reading them) and value
  channels (the module reads `v_head_dim` itself), and its rotary query/key pairs (`rotary_pairs_attr`: the query/key
  head dimension shrinks by pairs `(i, i + d/2)`, the cos/sin tables re-indexed per head, the softmax scale of the
  full head dimension kept). A layer whose heads are all pruned keeps one head without value channels
  (`keep_one_head`), so that cached generation (whose length transformers reads from the layers' keys) still works;
- the SwiGLU channels (`gate_proj`, `up_proj` -> `down_proj`) of the dense block (`ffn_layer`), of every routed
  expert (`ffn_layer.experts.K`) and of the shared expert (`ffn_layer.shared_expert`);
- whole experts (`ffn_layer`, an `ExpertGroup`): removed by their routing usage over the train and validation windows
  or by a Taylor score per expert (`hf_tsprune.pipeline.expert_stage`, `--expert_threshold`, `--expert_score`).

**Expert removal keeps the router whole** (a deviation from the paper's description, where the router loses the
removed experts' rows). Time-MoE's routing weights are the softmax probabilities over *all* router rows (not
renormalised over the top-k): cutting rows shrinks every time point's softmax denominator, so every routing weight
changes even where no removed expert was chosen (about 1% of a forecast in `tests/test_time_moe.py`), and removing
experts that no time point used would not be exact. The block instead keeps its `gate` with every row and registers a
persistent buffer `kept_experts` (the original indices of its kept experts), over whose columns the model's own forward
takes the top-k (`ExpertGroup.native_kept_experts`): removing unused experts then leaves every forecast bit for bit
unchanged. The router's rows of removed experts stay (`hidden_size` parameters each); the layout records
`{"kind": "experts", "num_experts": n, "kept_experts": [...]}`, from which `from_pretrained` rebuilds the block (with
hf_tsprune and with transformers alone through the copied model file) and loads it strictly.

**Auxiliary loss**: the routers' load-balancing loss is off while pruning (the prune run, and the expert stage's Taylor
scores) and on for finetuning, as in the paper, through the family's `pruning_settings` (which switch the model's
`apply_aux_loss` attribute off and restore it).

Forecasting is univariate (channels folded into the batch), as Time-MoE users do: the context is normalised per series
by its mean and standard deviation (over its observed points, the deviation floored so that a constant series stays
finite) and the model's own `generate` rolls the forecast out autoregressively (each step with the largest native
horizon that fits, key/value cache on) for `ROLLOUT_HORIZON` points, de-normalised; the evaluation takes the task's
horizon from the front. Unobserved context points are masked out as keys (`attention_mask`, with positions counting
observed points, as the released `generate` does). Training uses the model's own multi-horizon Huber loss: the context
and the target joined into one normalised sequence, `input_ids` its points but the last, `labels` the points after
each, `loss_masks` their observed marks, so every time point's every head is scored on the points that follow it
(targets beyond the window never count). Pruned checkpoints load through `AutoModelForTimeSeriesPrediction` and, as
the released ones, `AutoModelForCausalLM`; they carry `hf_tsprune/models/time_moe.py` verbatim for
`trust_remote_code=True`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..adapters import ForecastAdapter, ModelForecast
from ..family import Family, register_family
from ..specs import ArchitectureSpec, ExpertGroup, contract_attention_group, swiglu_group
from ..training import base_model, stack_features, univariate_values

STD_FLOOR = 1e-5
"""Smallest standard deviation a window is normalised by (a constant window would otherwise divide by zero)."""

ROLLOUT_HORIZON = 720
"""Points one forecast call rolls out with the model's own `generate` (the longest horizon of the Time-MoE paper's
long-term benchmarks: 96, 192, 336, 720): every such horizon is forecast in one rollout of one normalised context, as
Time-MoE's own `generate` is used, and training windows may have targets up to this long."""

EXAMPLE_CONTEXT = 512
"""Context (time points) of the spec's example inputs, at most `max_position_embeddings`."""

KEPT_EXPERTS = "kept_experts"
"""The buffer of a mixture-of-experts block whose experts were removed: the original indices of the kept ones, which
`TimeMoeSparseExpertsLayer.forward` reads (`hf_tsprune.models.time_moe`)."""


def example_inputs(model: nn.Module, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    """`input_ids` `(batch_size, min(512, max_position_embeddings))`, standard normal (a normalised context)."""
    length = min(EXAMPLE_CONTEXT, int(model.config.max_position_embeddings))
    return {"input_ids": torch.randn(batch_size, length, generator=generator)}


def forecast(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Every time point's forecast by the longest native head, `(batch, seq_len, max(horizon_lengths))`."""
    horizon = max(model.config.horizon_lengths)
    return model(**inputs, use_cache=False, max_horizon_length=horizon, return_dict=True).logits


def observed_points(features: list[dict], key: str, values: torch.Tensor) -> torch.Tensor:
    """The observed mask `(B, T)` of the `key` values of a batch (ones where the features have none), zero where a
    value is NaN."""
    mask_key = key.replace("_values", "_observed_mask")
    if mask_key in features[0]:
        observed = univariate_values(stack_features(features, mask_key), "Time-MoE")
    else:
        observed = torch.ones_like(values)
    return (observed > 0) & ~torch.isnan(values)


def normalisation(values: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-series mean and (unbiased, floored) standard deviation over the observed points of `(batch, length)`
    series, `(batch, 1)` each (mean 0 and deviation 1 where fewer than two points are observed)."""
    weights = observed.to(values.dtype)
    values = torch.nan_to_num(values) * weights
    count = weights.sum(dim=-1, keepdim=True)
    mean = values.sum(dim=-1, keepdim=True) / count.clamp_min(1)
    variance = (((values - mean) * weights) ** 2).sum(dim=-1, keepdim=True) / (count - 1).clamp_min(1)
    std = torch.where(count > 1, variance.sqrt(), torch.ones_like(variance)).clamp_min(STD_FLOOR)
    return mean, std


class TimeMoeAdapter(ForecastAdapter):
    """Time-MoE: univariate, any context up to `max_position_embeddings` points; one call normalises the context per
    series and rolls out `ROLLOUT_HORIZON` points with the model's own `generate`."""

    univariate = True

    def native_horizon(self, model):
        return max(ROLLOUT_HORIZON, int(max(model.config.horizon_lengths)))

    def max_context(self, model):
        return int(model.config.max_position_embeddings)

    def fixed_context(self, model):
        return False

    def _forecast(self, model, past_values, past_observed_mask, freq):
        series = past_values[..., 0]
        observed = (past_observed_mask[..., 0] > 0) & ~torch.isnan(series)
        mean, std = normalisation(series, observed)
        normed = torch.where(observed, (torch.nan_to_num(series) - mean) / std, torch.zeros_like(series))
        attention_mask = None if bool(observed.all()) else observed.long()
        horizon = self.native_horizon(model)
        rollout = model.generate(normed, max_new_tokens=horizon, attention_mask=attention_mask)
        return ModelForecast(mean=(rollout[:, -horizon:] * std + mean)[:, :, None])


def training_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    """The model's own multi-horizon Huber loss on one window per row: the context and the target joined and
    normalised by the context's observed mean and deviation; `input_ids` `(B, T - 1)` all points but the last,
    `labels` `(B, T - 1)` the point after each, `loss_masks` whether that point is observed. With unobserved points
    in the batch, also `attention_mask` (they are masked as keys) and `position_ids` counting observed points, as the
    forecast's `generate` does."""
    past = univariate_values(stack_features(features, "past_values"), "Time-MoE")
    future = univariate_values(stack_features(features, "future_values"), "Time-MoE")
    past_observed = observed_points(features, "past_values", past)
    future_observed = observed_points(features, "future_values", future)
    mean, std = normalisation(past, past_observed)
    observed = torch.cat([past_observed, future_observed], dim=1)
    series = torch.where(observed, (torch.nan_to_num(torch.cat([past, future], dim=1)) - mean) / std, 0.0)
    inputs = {
        "input_ids": series[:, :-1],
        "labels": series[:, 1:],
        "loss_masks": observed[:, 1:].to(series.dtype),
    }
    if not bool(observed[:, :-1].all()):
        attention_mask = observed[:, :-1].long()
        inputs["attention_mask"] = attention_mask
        inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    return inputs


@contextlib.contextmanager
def without_aux_loss(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model's loss leaves out the routers' load-balancing loss (`apply_aux_loss` off: the prune
    run scores the forecast loss alone, as in the paper); its previous setting (on, for a mixture-of-experts model)
    comes back afterwards, for finetuning."""
    model = base_model(model)
    previous = model.apply_aux_loss
    model.apply_aux_loss = False
    try:
        yield model
    finally:
        model.apply_aux_loss = previous


TIME_MOE = register_family(
    Family(
        name="time_moe",
        spec=ArchitectureSpec(
            name="time_moe",
            model_classes=("TimeMoeForPrediction",),
            groups=(
                contract_attention_group(("TimeMoeAttention",)),  # keeps one head: the key/value cache's length
                swiglu_group(  # the dense block (`use_dense`), every routed expert and the shared expert
                    r"model\.layers\.\d+\.ffn_layer(\.experts\.\d+|\.shared_expert)?", ("TimeMoeTemporalBlock",)
                ),
                ExpertGroup(  # the router stays whole: its softmax runs over all rows (see the module docstring)
                    pattern=r"model\.layers\.\d+\.ffn_layer",
                    experts="experts",
                    kept_experts_attr=KEPT_EXPERTS,
                    native_kept_experts=True,
                    num_experts_attrs=("num_experts",),
                    top_k_attr="top_k",
                    module_classes=("TimeMoeSparseExpertsLayer",),
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=TimeMoeAdapter(),
        training_inputs=training_inputs,
        label_names=("labels",),
        base_config_class="hf_tsprune.models.time_moe:TimeMoeConfig",
        base_model_class="hf_tsprune.models.time_moe:TimeMoeForPrediction",
        model_types=("time_moe",),
        extra_auto_classes=("AutoModelForCausalLM",),  # the Auto class the released checkpoints name
        pruning_settings=without_aux_loss,
        description="Time-MoE (Maple728), hf_tsprune's own transformers-5 implementation",
    )
)
