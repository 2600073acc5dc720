"""Sundial (`SundialForPrediction`, `thuml/sundial-base-128m`): hf_tsprune's own transformers-5 implementation in
`hf_tsprune.models.sundial`, a decoder over patches of `input_token_len` values with rotary multi-head attention and
SwiGLU feed-forward blocks, and a flow-matching head (`flow_loss`) that turns noise into forecasts of
`output_token_lens[-1]` values conditioned on a patch's hidden state.

Prunable groups: the heads and value channels of every layer's attention (the module reads `v_head_dim` itself), its
rotary query/key pairs (`rotary_pairs_attr`: pairs `(i, i + d/2)`, the cos/sin tables re-indexed per head, the softmax
scale of the full head dimension kept), and the `gate_proj`, `up_proj` -> `down_proj` channels of every decoder
feed-forward block. A layer whose heads are all pruned keeps one head without value channels (`keep_one_head`), so that
the key/value cache of the released rollout (`generate`) keeps its length.

Optional group, off by default: the hidden channels of the flow head's MLPs, `flow_loss.net.res_blocks.{i}.mlp`
(Linear `mlp.0` -> SiLU -> Linear `mlp.2`) and `flow_loss.net.time_embed.mlp` (the same shape after the sinusoidal
features). Only these hidden channels are exact to remove: the residual blocks' adaptive LayerNorm (`in_ln`, its
shift/scale/gate modulation) and the final layer's LayerNorm normalise over the flow network's width, which couples
`input_proj`, `cond_embed`, every block's output and the modulations, so that width is never pruned. Switch the group
on with `install_masks(model, get_spec(model).with_optional_groups())`, or `--prune_optional_groups true` in
`recipes/prune_finetune.py`; checkpoints whose flow head was shrunk load either way (the group is in the spec).
Pruned checkpoints load through `AutoModelForTimeSeriesPrediction` and, as the released one, `AutoModelForCausalLM`;
they carry `hf_tsprune/models/sundial.py` verbatim for `trust_remote_code=True`.

Forecasting is univariate (channels folded into the batch). The context is normalised per series as the released
`generate` does (its mean and biased standard deviation plus 1e-5) and read whole (the model left-pads it to whole
patches and marks the padding in its patch features); the flow head draws `SundialAdapter.num_samples` (20, the
released README's example) forecasts of `output_token_lens[-1]` values with the configuration's `num_sampling_steps`
Euler steps. The point forecast is the mean of the samples: the LTSF metrics are MSE and MAE, the samples' mean is the
MSE-optimal point estimate of the sampled distribution, and the upstream model card leaves the reduction to the user
("use raw predictions for mean/quantiles"); the released `generate` takes a per-step median only to condition its own
rollout. The samples' deciles are returned as quantiles. The sampling noise comes from a generator seeded afresh for
every batch (`SundialAdapter.seed`), so that two evaluations of the same model on the same windows agree exactly.

Training uses the model's own flow-matching loss: every patch's hidden state conditions the flow head on the
`output_token_lens[-1]` values after that patch (`diffusion_batch_mul` noise draws each), on the same per-window
normalisation, with the context cropped to its last whole patches (the labels are indexed by patch); the training
windows carry the native horizon as target. The loss draws noise and flow times, so it is stochastic: the training
inputs pass a generator seeded from the batch's values (`batch_generator`), which makes the loss, hence the Taylor
scores of the prune run and the validation losses that select its mask set, a deterministic function of the weights
and the batch (a batch seen again gets the same draws; different batches get different ones).
"""

import zlib

import torch
from torch import nn

from ..adapters import ModelForecast, PatchDecoderAdapter, model_device, native_horizon_target, whole_patches
from ..family import Family, register_family
from ..specs import ArchitectureSpec, MLPGroup, contract_attention_group, swiglu_group
from ..training import stack_features, univariate_values

STD_EPS = 1e-5
"""Added to a window's (biased) standard deviation before dividing by it, as the released `generate`'s `revin`."""

FORECAST_SAMPLES = 2
"""Samples drawn by the spec's `forecast` (exactness checks, FLOP counts, `benchmarks/speed.py`)."""

QUANTILE_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on `device` seeded with `seed`."""
    return torch.Generator(device=device).manual_seed(int(seed))


def batch_generator(values: torch.Tensor, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded from the bytes of `values` (CRC-32): the same batch always draws the same noise.

    Args:
        values (`torch.Tensor`): The batch's (CPU) values.
        device (`torch.device`): Where the model draws its noise.
    """
    data = values.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return seeded_generator(device, zlib.crc32(data))


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    patch = int(model.config.input_token_len)
    patches = max(2, min(32, 512 // patch, int(model.config.max_position_embeddings)))
    return {"input_ids": torch.randn(batch_size, patches * patch, generator=generator)}


def forecast(model, inputs: dict) -> torch.Tensor:
    """`FORECAST_SAMPLES` sampled forecasts `(batch, samples, output_token_lens[-1])`, the noise seeded (0) on every
    call, so that a masked and a shrunk model draw the same noise."""
    length = int(model.config.output_token_lens[-1])
    generator = seeded_generator(inputs["input_ids"].device, 0)
    outputs = model(
        **inputs, use_cache=False, num_samples=FORECAST_SAMPLES, max_output_length=length, generator=generator,
        return_dict=True,
    )  # fmt: skip
    return outputs.logits


def normalisation(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-series mean and biased standard deviation plus `STD_EPS` of `(batch, length)` contexts, `(batch, 1)` each
    (the released `generate`'s `revin`; a constant series gets `STD_EPS`, a finite scale)."""
    mean = context.mean(dim=-1, keepdim=True)
    std = context.std(dim=-1, keepdim=True, unbiased=False) + STD_EPS
    return mean, std


class SundialAdapter(PatchDecoderAdapter):
    """Sundial: univariate, any context (left-padded to whole patches by the model), up to `max_position_embeddings`
    patches; one pass samples `num_samples` forecasts of `output_token_lens[-1]` values on the per-series normalised
    context, their mean being the point forecast and their deciles the quantiles.

    Args:
        num_samples (`int`, *optional*, defaults to 20): Forecasts sampled per series.
        seed (`int`, *optional*, defaults to 0): Seed of the sampling noise, set afresh for every batch.
    """

    def __init__(self, num_samples: int = 20, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed

    def native_horizon(self, model):
        return int(model.config.output_token_lens[-1])

    def quantile_levels(self, model):
        return list(QUANTILE_LEVELS)

    def sample(self, model, series: torch.Tensor) -> torch.Tensor:
        """`(batch, num_samples, horizon)` forecasts of `(batch, length)` series on their own scale (seeded)."""
        mean, std = normalisation(series)
        horizon = self.native_horizon(model)
        outputs = model(
            input_ids=(series - mean) / std, use_cache=False, num_samples=self.num_samples,
            max_output_length=horizon, generator=seeded_generator(series.device, self.seed), return_dict=True,
        )  # fmt: skip
        return outputs.logits * std[:, None] + mean[:, None]

    def _forecast(self, model, past_values, past_observed_mask, freq):
        samples = self.sample(model, past_values[..., 0])
        levels = torch.tensor(QUANTILE_LEVELS, device=samples.device, dtype=torch.float32)
        quantiles = torch.quantile(samples.float(), levels, dim=1).permute(1, 2, 0)  # (batch, horizon, levels)
        return ModelForecast(
            mean=samples.mean(dim=1)[:, :, None],
            quantiles=quantiles[:, :, None],
            quantile_levels=list(QUANTILE_LEVELS),
        )


def training_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    """`input_ids` `(B, T)`: the context cropped to whole patches and normalised per window; `labels`: the same series
    shifted by one patch and extended by the target (normalised alike), so that patch `i`'s flow-matching target is
    the `output_token_lens[-1]` values after it; `generator`: the loss's noise source, seeded from the batch."""
    patch = int(model.config.input_token_len)
    past = whole_patches(univariate_values(stack_features(features, "past_values"), "Sundial"), patch, "Sundial")
    future = univariate_values(stack_features(features, "future_values"), "Sundial")
    future = native_horizon_target(future, int(model.config.output_token_lens[-1]), "Sundial's flow-matching loss")
    mean, std = normalisation(past)
    past, future = (past - mean) / std, (future - mean) / std
    labels = torch.cat([past[:, patch:], future], dim=1)
    return {
        "input_ids": past,
        "labels": labels,
        "use_cache": False,
        "generator": batch_generator(torch.cat([past, labels], dim=1), model_device(model)),
    }


SUNDIAL = register_family(
    Family(
        name="sundial",
        spec=ArchitectureSpec(
            name="sundial",
            model_classes=("SundialForPrediction",),
            groups=(
                contract_attention_group(("SundialAttention",)),  # keeps one head: the key/value cache's length
                swiglu_group(r"model\.layers\.\d+\.ffn_layer", ("SundialMLP",)),
                MLPGroup(  # the flow head's residual MLPs (their block's LayerNorm is over the outer width)
                    pattern=r"flow_loss\.net\.res_blocks\.\d+\.mlp",
                    producers=("0",),
                    consumer="2",
                    optional=True,
                ),
                MLPGroup(  # the flow time's embedding MLP
                    pattern=r"flow_loss\.net\.time_embed\.mlp",
                    producers=("0",),
                    consumer="2",
                    optional=True,
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=SundialAdapter(),
        training_inputs=training_inputs,
        label_names=("labels",),
        trains_native_horizon=True,
        base_config_class="hf_tsprune.models.sundial:SundialConfig",
        base_model_class="hf_tsprune.models.sundial:SundialForPrediction",
        model_types=("sundial",),
        extra_auto_classes=("AutoModelForCausalLM",),  # the Auto class the released checkpoint names
        description="Sundial (THUML), hf_tsprune's own transformers-5 implementation",
    )
)
