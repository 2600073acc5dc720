"""Moirai-MoE (Salesforce `uni2ts`'s `MoiraiMoEModule`): Moirai's encoder made a causal decoder whose feed-forward blocks
are mixtures of 32 SwiGLU experts, each token routed to 2 by its distance to per-layer expert centroids.

Forecast through [`MoiraiMoEForPrediction`] (as Moirai 1.x through `MoiraiForPrediction`): the point forecast is the
predictive mean, rolled out patch by patch as `uni2ts`'s `MoiraiMoEForecast` does with samples (each predicted patch
is written into the sequence and the next one predicted from it); the training loss is the MSE of that rollout, each
fed-back patch a constant input (no gradient flows through the feedback: `uni2ts`'s scaler writes into its own
output in place, which autograd refuses when the series itself requires gradients).

Prunable groups, per decoder layer (`model.encoder.layers.N`):

- self-attention heads with their variate attention bias and the value head dimension, as Moirai 1.x;
- the SwiGLU channels inside every expert (`ffn.experts.K`: `fc1`, `fc_gate` -> `fc2`);
- whole experts (`ffn`, an `ExpertGroup`), removed by their routing usage over the train and validation windows or by
  a Taylor score per expert (`hf_tsprune.scoring.count_expert_tokens`, `expert_usage`, `experts_to_keep`,
  `ExpertTaylorScorer`; `hf_tsprune.surgery.remove_experts`). The router is the encoder's centroid tensor of all
  layers (one buffer `(num_layers, 32, d_model)` passed to each block), so a block keeps the original indices of its
  kept experts (`hf_tsprune_kept_experts`) and selects their distances from the distances to every centroid:
  computing distances to the kept rows only would change their rounding (`torch.cdist`'s matrix-product path), and
  removing experts no token reached must leave every forecast exactly unchanged. The kept experts are recorded in the
  layout (`{"kind": "experts", "num_experts": n, "kept_experts": [...]}`).

Query/key channels are not pruned (the query/key norm and the rotary projection, as Moirai 1.x). Pruned checkpoints:
as Moirai 1.x. Everything needs `uni2ts`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..family import register_family
from ..specs import ArchitectureSpec, AttentionGroup, ExpertGroup, MLPGroup
from .moirai import (
    MOIRAI_ATTENTION,
    MoiraiAdapter,
    MoiraiForPrediction,
    example_inputs,
    forecast,
    moirai_family,
    training_inputs,
)

KEPT_EXPERTS = "hf_tsprune_kept_experts"


class MoiraiMoEForPrediction(MoiraiForPrediction):
    """A `uni2ts` `MoiraiMoEModule` with a task's forecast settings (see [`MoiraiForPrediction`]).

    Args:
        model (`MoiraiMoEModule`): the module (e.g. `MoiraiMoEModule.from_pretrained(
            "Salesforce/moirai-moe-1.0-R-small")`).
        prediction_length (`int`), context_length (`int`): as `MoiraiForPrediction`.
        patch_size (`int`, *optional*): defaults to the module's largest (the released modules have one: 16).
    """

    forecast_class = "uni2ts.model.moirai_moe:MoiraiMoEForecast"
    module_class = "uni2ts.model.moirai_moe:MoiraiMoEModule"
    checkpoint_keys = ("d_model", "num_layers", "distr_output", "patch_sizes", "d_ff")
    checkpoint_without = ()

    @staticmethod
    def default_patch_size(module: nn.Module) -> int:
        return max(int(p) for p in module.patch_sizes)

    def predict_mean(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor) -> torch.Tensor:
        """The predictive mean `(batch, prediction_length, channels)`, rolled out one patch per pass: the mean at the
        last known token of each variate is written into its next token, as `MoiraiMoEForecast` does with samples."""
        forecaster, (target, observed, sample_id, time_id, variate_id, prediction_mask) = self._packed(
            past_values, past_observed_mask
        )
        channels, patch = past_values.shape[-1], self.config.patch_size
        context_step = forecaster.context_token_length(patch)
        predict_step = forecaster.prediction_token_length(patch)
        context_tokens = channels * context_step
        source = torch.arange(context_step - 1, context_tokens, context_step, device=target.device)
        destination = torch.arange(
            context_tokens, context_tokens + channels * predict_step, predict_step, device=target.device
        )
        patch_size = torch.full_like(time_id, patch)
        predicted = target
        for _ in range(predict_step):
            mean = self.model(target, observed, sample_id, time_id, variate_id, prediction_mask, patch_size).mean
            step = mean.index_select(1, source).to(target.dtype)
            predicted = predicted.index_copy(1, destination, step)
            target = target.index_copy(1, destination, step.detach())  # fed back as a constant (see above)
            prediction_mask = prediction_mask.index_fill(1, destination, False)
            source, destination = destination, destination + 1
        return self._future(forecaster, predicted, channels)


def moirai_moe_forward(self, x: torch.Tensor, centroid: torch.Tensor | None = None) -> torch.Tensor:
    """`uni2ts`'s `MoEFeedForward.forward` for a block whose experts were removed: routing over the kept experts'
    centroid distances (selected from the distances to every centroid of the layer, `self.hf_tsprune_kept_experts`),
    the kept experts in their original order."""
    x_squashed = x.view(-1, x.shape[-1])
    centroid = centroid.to(x.device).type_as(x)
    x_temp = x.view(-1, x.shape[-2], x.shape[-1]) if len(x.shape) > 3 else x
    distances = torch.cdist(x_temp, centroid.unsqueeze(0).repeat(x_temp.shape[0], 1, 1))
    gate_logits = distances.view(-1, distances.shape[-1])[:, self.hf_tsprune_kept_experts.to(x.device)]
    weights, selected_experts = torch.topk(gate_logits, self.num_experts_per_token)
    weights = nn.functional.softmax(weights, dim=1, dtype=torch.float).type_as(x)
    results = torch.zeros_like(x_squashed)
    for i, expert in enumerate(self.experts):
        batch_idx, nth_expert = torch.where(selected_experts == i)
        results[batch_idx] += weights[batch_idx, nth_expert, None] * expert(x_squashed[batch_idx])
    return results.view_as(x)


MOIRAI_MOE = register_family(
    moirai_family(
        name="moirai_moe",
        spec=ArchitectureSpec(
            name="moirai_moe",
            model_classes=("MoiraiMoEForPrediction",),
            groups=(
                AttentionGroup(pattern=r"model\.encoder\.layers\.\d+\.self_attn", **MOIRAI_ATTENTION),
                MLPGroup(
                    pattern=r"model\.encoder\.layers\.\d+\.ffn\.experts\.\d+",
                    producers=("fc1", "fc_gate"),
                    consumer="fc2",
                    width_attrs=("hidden_dim",),
                ),
                ExpertGroup(
                    pattern=r"model\.encoder\.layers\.\d+\.ffn",
                    experts="experts",
                    kept_experts_attr=KEPT_EXPERTS,
                    num_experts_attrs=("num_experts",),
                    top_k_attr="num_experts_per_token",
                    router_forward=moirai_moe_forward,
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=MoiraiAdapter(),
        training_inputs=training_inputs,
        model_class=MoiraiMoEForPrediction,
        description="Moirai-MoE (Salesforce uni2ts): decoder with 32 SwiGLU experts per layer, top-2 routing",
    )
)
