"""Sundial (`thuml/sundial-base-128m`) for transformers 5.

Sundial is a decoder-only transformer over patches of a univariate series with a flow-matching forecasting head. Each
patch of `input_token_len` values (the series is left-padded to whole patches) is embedded together with its
observation mask by a small residual MLP; pre-norm decoder layers (LayerNorm, causal multi-head self-attention with
rotary position embeddings, SwiGLU feed-forward) run over the patches; the flow head (`flow_loss`, an MLP with adaptive
LayerNorm conditioned on a patch's hidden state and the flow time) maps noise to the `output_token_lens[-1]` values
following that patch. Training minimises the flow-matching loss; forecasting draws `num_samples` trajectories with
`num_sampling_steps` Euler steps and rolls out autoregressively beyond the native output length
(`SundialForPrediction.generate`).

This module is an own implementation of the model published as transformers-4 Hub remote code (which does not import
under transformers 5): same configuration fields and defaults, same module names and state-dict keys, so that the
released checkpoints load with `from_pretrained` and no `trust_remote_code`. It depends on the standard library, torch
and transformers only, so that a pruned checkpoint can carry it verbatim as remote code. Importing it registers
`SundialConfig` (`model_type="sundial"`) and `SundialForPrediction` with `AutoConfig` and `AutoModelForCausalLM`.

Pruning contract: `SundialAttention` derives every shape from its attributes (`num_heads`, `num_key_value_heads`,
`num_key_value_groups`, `head_dim`, `v_head_dim`) and keeps its softmax scale in `scaling`; an optional `rotary_pairs`
buffer re-indexes the rotary tables per key/value head after rotary query/key channels were removed (`apply_rotary`).
The feed-forward blocks (`ffn_layer.{gate,up,down}_proj`) and the flow head's residual MLPs
(`flow_loss.net.res_blocks.{i}.mlp.{0,2}`, Linear-SiLU-Linear) take their widths from the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput


class SundialConfig(PretrainedConfig):
    r"""Configuration of a Sundial model (`thuml/sundial-base-128m`); field names and defaults as released.

    Args:
        input_token_len (`int`, *optional*, defaults to 16):
            Number of time steps in one input patch (token).
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the residual stream (and of the flow head).
        intermediate_size (`int`, *optional*, defaults to 3072):
            Width of the SwiGLU feed-forward blocks and of the patch embedding's hidden layer.
        output_token_lens (`list[int]`, *optional*, defaults to `[720]`):
            Forecast lengths; the flow head forecasts `output_token_lens[-1]` values per patch.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads; the head dimension is `hidden_size // num_attention_heads`.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the feed-forward gate and the patch embedding.
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether forecasting keeps a key/value cache between autoregressive steps.
        rope_theta (`int`, *optional*, defaults to 10000):
            Base of the rotary position embedding.
        dropout_rate (`float`, *optional*, defaults to 0.1):
            Dropout of the patch embedding and of the attention probabilities (training only).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the Linear weights.
        max_position_embeddings (`int`, *optional*, defaults to 10000):
            Number of positions whose rotary tables are precomputed (longer inputs extend them).
        flow_loss_depth (`int`, *optional*, defaults to 3):
            Number of residual blocks of the flow head.
        num_sampling_steps (`int`, *optional*, defaults to 50):
            Euler steps of the flow when sampling.
        diffusion_batch_mul (`int`, *optional*, defaults to 4):
            Number of (noise, flow time) draws per target in the training loss.
    """

    model_type = "sundial"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        input_token_len: int = 16,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        output_token_lens: list[int] | None = None,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        hidden_act: str = "silu",
        use_cache: bool = True,
        rope_theta: int = 10000,
        dropout_rate: float = 0.1,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 10000,
        flow_loss_depth: int = 3,
        num_sampling_steps: int = 50,
        diffusion_batch_mul: int = 4,
        **kwargs,
    ):
        self.input_token_len = input_token_len
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.output_token_lens = list(output_token_lens) if output_token_lens is not None else [720]
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.dropout_rate = dropout_rate
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.flow_loss_depth = flow_loss_depth
        self.num_sampling_steps = num_sampling_steps
        self.diffusion_batch_mul = diffusion_batch_mul
        super().__init__(**kwargs)


@dataclass
class SundialOutput(ModelOutput):
    r"""Output of `SundialForPrediction`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            The flow-matching loss, when `labels` are given.
        logits (`torch.FloatTensor`, *optional*):
            Without `labels`: `(batch, num_samples, horizon)` sampled forecasts after the last patch.
        past_key_values (`Cache`, *optional*):
            The key/value cache, when `use_cache` is on.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The input of every decoder layer and the final normalised output, when `output_hidden_states` is on.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The attention probabilities of every layer, when `output_attentions` is on.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# Copied from hf_tsprune.models.timer_xl.TimerModelOutput with Timer->Sundial
@dataclass
class SundialModelOutput(ModelOutput):
    r"""Output of `SundialModel`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, num_patches, hidden_size)`):
            The normalised output of the last decoder layer.
        past_key_values (`Cache`, *optional*):
            The key/value cache, when `use_cache` is on.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The input of every decoder layer and the final normalised output, when `output_hidden_states` is on.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The attention probabilities of every layer, when `output_attentions` is on.
    """

    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# Copied from hf_tsprune.models.timer_xl.rotate_half
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map the channel halves `(x1, x2)` of the last dimension to `(-x2, x1)`.

    Args:
        x (`torch.Tensor`): Tensor whose last dimension is even.

    Returns:
        `torch.Tensor`: the rotated tensor.
    """
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# Copied from hf_tsprune.models.timer_xl.apply_rotary
def apply_rotary(
    query: torch.Tensor,
    key: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rotary_pairs: torch.Tensor | None = None,
    num_key_value_groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by their positions' angles (rotary position embedding, half-split layout).

    Channel `j` and `j + d/2` of a head form one rotary pair. Without `rotary_pairs` the head holds all `d/2` pairs of
    the tables in order. With `rotary_pairs` (after rotary channels were pruned) channel `j < n` of key/value head `g`
    holds the first half of the original pair `rotary_pairs[g, j]` and channel `n + j` its second half, and that head
    is rotated by the original tables at those frequency indices; query head `h` uses the pairs of key/value head
    `h // num_key_value_groups`.

    Args:
        query (`torch.Tensor`): Queries, `(batch, num_heads, seq_len, head_dim)`.
        key (`torch.Tensor`): Keys, `(batch, num_key_value_heads, seq_len, head_dim)`.
        cos (`torch.Tensor`): Cosines at the tokens' positions, `(batch or 1, seq_len, rotary_dim)`, the two halves of
            the last dimension equal (the tables of the original, unpruned head).
        sin (`torch.Tensor`): Sines, same shape as `cos`.
        rotary_pairs (`torch.LongTensor`, *optional*): `(num_key_value_heads, head_dim // 2)` original pair indices.
        num_key_value_groups (`int`, *optional*, defaults to 1): Query heads per key/value head.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the rotated queries and keys.
    """
    if rotary_pairs is None:
        cos_k = cos_q = cos.unsqueeze(1)
        sin_k = sin_q = sin.unsqueeze(1)
    else:
        half = cos.shape[-1] // 2
        index = rotary_pairs.to(device=cos.device, dtype=torch.long)
        # (batch, seq, kv_heads, n) -> (batch, kv_heads, seq, n), both halves of a pair share one angle
        cos_k = cos[..., :half][..., index].permute(0, 2, 1, 3)
        sin_k = sin[..., :half][..., index].permute(0, 2, 1, 3)
        cos_k = torch.cat((cos_k, cos_k), dim=-1)
        sin_k = torch.cat((sin_k, sin_k), dim=-1)
        if num_key_value_groups > 1:
            cos_q = cos_k.repeat_interleave(num_key_value_groups, dim=1)
            sin_q = sin_k.repeat_interleave(num_key_value_groups, dim=1)
        else:
            cos_q, sin_q = cos_k, sin_k
    query = query * cos_q + rotate_half(query) * sin_q
    key = key * cos_k + rotate_half(key) * sin_k
    return query, key


# Copied from hf_tsprune.models.timer_xl.fused_attention
def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float,
    is_causal: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` at the softmax scale `scaling`, also where pruning left the query/key head dim
    unlike the value head dim (rotary pairs and value channels go separately). The fused kernels need one head dim
    (PyTorch's CPU flash kernel falls back to the unfused math otherwise), so the narrower side is zero-padded to the
    wider: exact, as zero query/key channels add nothing to the logits and zero value channels are cut off the output.

    Args:
        query (`torch.Tensor`): `(batch, heads, seq_len, qk_head_dim)`.
        key (`torch.Tensor`): `(batch, heads, kv_len, qk_head_dim)`.
        value (`torch.Tensor`): `(batch, heads, kv_len, v_head_dim)`.
        attention_mask (`torch.Tensor`, *optional*): Boolean or additive mask broadcastable to the logits.
        dropout (`float`): Attention dropout probability.
        scaling (`float`): Softmax scale of the logits (that of the unpruned head dim).
        is_causal (`bool`, *optional*, defaults to `False`): Causal attention without a mask.

    Returns:
        `torch.Tensor`: `(batch, heads, seq_len, v_head_dim)`.
    """
    qk_head_dim, v_head_dim = query.shape[-1], value.shape[-1]
    if qk_head_dim < v_head_dim:
        query = F.pad(query, (0, v_head_dim - qk_head_dim))
        key = F.pad(key, (0, v_head_dim - qk_head_dim))
    elif v_head_dim < qk_head_dim:
        value = F.pad(value, (0, qk_head_dim - v_head_dim))
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=is_causal, scale=scaling
    )
    return output[..., :v_head_dim]


# Copied from hf_tsprune.models.timer_xl.causal_attention_mask
def causal_attention_mask(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    query_length: int,
    past_length: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Additive causal mask for `scaled_dot_product_attention`, `(batch, 1, query_length, past_length + query_length)`.

    Args:
        attention_mask (`torch.Tensor`, *optional*): `(batch, >= past_length + query_length)` per-token mask, 0 for
            padding patches.
        batch_size (`int`): Batch size.
        query_length (`int`): Number of new tokens.
        past_length (`int`): Number of cached tokens before them.
        dtype (`torch.dtype`): Dtype of the mask (that of the queries).
        device (`torch.device`): Device of the mask.

    Returns:
        `torch.Tensor`: 0 where attention is allowed, the dtype's minimum elsewhere.
    """
    kv_length = past_length + query_length
    query_positions = torch.arange(query_length, device=device)[:, None] + past_length
    key_positions = torch.arange(kv_length, device=device)[None, :]
    blocked = (key_positions > query_positions)[None, None].expand(batch_size, 1, query_length, kv_length)
    if attention_mask is not None:
        padding = attention_mask[:, None, None, :kv_length].to(device) == 0
        blocked = blocked | padding
    mask = torch.zeros(blocked.shape, dtype=dtype, device=device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)


class SundialPatchEmbedding(nn.Module):
    """Left-pads a series to whole patches of `input_token_len` values, appends each patch's observation mask (1 for
    values, 0 for padding) and embeds the `2 * input_token_len` features with a residual MLP.

    Args:
        config (`SundialConfig`): The model configuration.
    """

    def __init__(self, config: SundialConfig):
        super().__init__()
        self.input_token_len = config.input_token_len
        self.dropout = nn.Dropout(config.dropout_rate)
        self.hidden_layer = nn.Linear(config.input_token_len * 2, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.output_layer = nn.Linear(config.intermediate_size, config.hidden_size)
        self.residual_layer = nn.Linear(config.input_token_len * 2, config.hidden_size)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """Embed `(batch, length)` values into `(batch, ceil(length / input_token_len), hidden_size)` tokens."""
        patch = self.input_token_len
        padding = (patch - series.shape[-1] % patch) % patch
        observed = F.pad(torch.ones_like(series), (padding, 0))
        series = F.pad(series, (padding, 0))
        features = torch.cat(
            [series.unfold(-1, patch, patch), observed.unfold(-1, patch, patch)],
            dim=-1,
        )
        hidden = self.act(self.hidden_layer(features))
        return self.dropout(self.output_layer(hidden)) + self.residual_layer(features)


# Copied from hf_tsprune.models.timer_xl.TimerRotaryEmbedding with Timer->Sundial
class SundialRotaryEmbedding(nn.Module):
    """Rotary tables (`inv_freq`, `cos_cached`, `sin_cached`: non-persistent buffers) of one attention layer.

    The tables are computed at construction and again by `reset_parameters` (called from the model's `_init_weights`,
    hence also after `from_pretrained`, which leaves non-persistent buffers uninitialised under transformers 5). They
    are computed in float32 and cast to the queries' dtype when used.

    Args:
        dim (`int`): The rotary dimension (head dimension of the unpruned model).
        max_position_embeddings (`int`, *optional*, defaults to 10000): Number of precomputed positions.
        base (`float`, *optional*, defaults to 10000): Base of the frequencies.
    """

    def __init__(self, dim: int, max_position_embeddings: int = 10000, base: float = 10000):
        super().__init__()
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.reset_parameters()

    def _tables(self, length: int, device: torch.device | None) -> tuple[torch.Tensor, ...]:
        inv_freq = 1.0 / (
            self.base ** (torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim)
        )
        positions = torch.arange(length, dtype=torch.int64, device=device).float()
        angles = torch.outer(positions, inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        return inv_freq, angles.cos(), angles.sin()

    @torch.no_grad()
    def reset_parameters(self, device: torch.device | None = None) -> None:
        """(Re)compute the tables for `max_position_embeddings` positions.

        Args:
            device (`torch.device`, *optional*): Where to put them; defaults to the current buffers' device.
        """
        if device is None:
            current = self._buffers.get("inv_freq")
            device = current.device if current is not None and current.device.type != "meta" else None
        inv_freq, cos, sin = self._tables(self.max_position_embeddings, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines and sines at `position_ids` (`(batch or 1, seq_len)`), each `(batch or 1, seq_len, dim)`."""
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 0
        if needed > self.cos_cached.shape[0]:
            _, cos, sin = self._tables(needed, self.inv_freq.device)
            self.register_buffer("cos_cached", cos.to(self.cos_cached.dtype), persistent=False)
            self.register_buffer("sin_cached", sin.to(self.sin_cached.dtype), persistent=False)
        return self.cos_cached[position_ids].to(dtype), self.sin_cached[position_ids].to(dtype)


class SundialAttention(nn.Module):
    """Causal multi-head self-attention with rotary embeddings (scaled dot-product attention).

    Every shape comes from the attributes `num_heads`, `num_key_value_heads`, `num_key_value_groups`, `head_dim`
    (per-head query/key width) and `v_head_dim` (per-head value width); the softmax scale is `scaling`, fixed at
    construction to the unpruned `head_dim ** -0.5`. The optional buffer `rotary_pairs` (`None` by default) maps the
    rotary channels of pruned heads to the original tables (see `apply_rotary`).

    Args:
        config (`SundialConfig`): The model configuration.
        layer_idx (`int`, *optional*): Index of the layer in the key/value cache.
    """

    def __init__(self, config: SundialConfig, layer_idx: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_attention_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = hidden_size // self.num_heads
        self.v_head_dim = self.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.dropout_rate
        self.q_proj = nn.Linear(hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden_size, self.num_key_value_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden_size, self.num_key_value_heads * self.v_head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, hidden_size, bias=False)
        self.rotary_emb = SundialRotaryEmbedding(
            self.head_dim, max_position_embeddings=config.max_position_embeddings, base=config.rope_theta
        )
        self.register_buffer("rotary_pairs", None, persistent=False)

    # Copied from hf_tsprune.models.timer_xl.TimerAttention.forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over the cached and the new tokens.

        Args:
            hidden_states (`torch.Tensor`): `(batch, seq_len, hidden_size)`.
            position_ids (`torch.LongTensor`): `(batch or 1, seq_len)` absolute positions of the new tokens.
            attention_mask (`torch.Tensor`, *optional*): Additive mask `(batch, 1, seq_len, kv_len)`.
            past_key_values (`Cache`, *optional*): Cache updated in place at `layer_idx`.
            output_attentions (`bool`, *optional*, defaults to `False`): Return the attention probabilities (computed
                eagerly instead of with the fused kernel).

        Returns:
            `tuple`: the output `(batch, seq_len, hidden_size)` and the attention probabilities or `None`.
        """
        batch_size, seq_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch_size, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch_size, seq_len, self.num_key_value_heads, self.head_dim)
        key = key.transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch_size, seq_len, self.num_key_value_heads, self.v_head_dim)
        value = value.transpose(1, 2)

        cos, sin = self.rotary_emb(position_ids, dtype=value.dtype)
        query, key = apply_rotary(query, key, cos, sin, self.rotary_pairs, self.num_key_value_groups)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        if self.num_key_value_groups > 1:
            key = key.repeat_interleave(self.num_key_value_groups, dim=1)
            value = value.repeat_interleave(self.num_key_value_groups, dim=1)

        dropout = self.attention_dropout if self.training else 0.0
        weights = None
        if output_attentions:
            scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling
            if attention_mask is not None:
                scores = scores + attention_mask
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
            output = torch.matmul(F.dropout(weights, p=dropout, training=self.training), value)
        else:
            output = fused_attention(query, key, value, attention_mask, dropout, self.scaling)
        output = output.transpose(1, 2).reshape(batch_size, seq_len, self.num_heads * self.v_head_dim)
        return self.o_proj(output), weights


# Copied from hf_tsprune.models.timer_xl.TimerMLP with Timer->Sundial
class SundialMLP(nn.Module):
    """SwiGLU feed-forward block, `down_proj(act(gate_proj(x)) * up_proj(x))`; its width is that of the weights.

    Args:
        hidden_size (`int`): Width of the residual stream.
        intermediate_size (`int`): Width of the block.
        hidden_act (`str`): Activation of the gate.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """Apply the block to `(..., hidden_size)`."""
        return self.down_proj(self.act_fn(self.gate_proj(hidden_state)) * self.up_proj(hidden_state))


class SundialDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm decoder layer: `x + attn(norm1(x))`, then `h + ffn(norm2(h))`.

    Args:
        config (`SundialConfig`): The model configuration.
        layer_idx (`int`): Index of the layer.
    """

    # Copied from hf_tsprune.models.timer_xl.TimerDecoderLayer.__init__ with Timer->Sundial
    def __init__(self, config: SundialConfig, layer_idx: int):
        super().__init__()
        self.self_attn = SundialAttention(config, layer_idx)
        self.ffn_layer = SundialMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the layer; arguments as in `SundialAttention.forward`."""
        attended, weights = self.self_attn(
            self.norm1(hidden_states),
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.ffn_layer(self.norm2(hidden_states))
        return hidden_states, weights


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive LayerNorm modulation `x * (1 + scale) + shift`."""
    return x * (1 + scale) + shift


class SundialTimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the flow time (scaled to [0, 1000)) followed by a Linear-SiLU-Linear MLP.

    Args:
        hidden_size (`int`): Output width.
        frequency_embedding_size (`int`, *optional*, defaults to 256): Width of the sinusoidal features.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        """`(n,)` times to `(n, dim)` features: cosines then sines of `t * max_period ** (-k / (dim // 2))`.

        Args:
            t (`torch.Tensor`): `(n,)` (fractional) times.
            dim (`int`): Number of features (an odd `dim` gets a zero last feature).
            max_period (`float`, *optional*, defaults to 10000): Longest period.

        Returns:
            `torch.Tensor`: the `(n, dim)` features.
        """
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=t.dtype) / half).to(t.device)
        angles = t[:, None] * freqs[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if dim % 2:
            features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
        return features

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed `(n,)` times into `(n, hidden_size)`."""
        return self.mlp(self.sinusoidal(t, self.frequency_embedding_size))


class SundialResBlock(nn.Module):
    """Residual MLP block with adaptive LayerNorm: `x + gate * mlp(modulate(in_ln(x), shift, scale))`, where
    `shift, scale, gate` are computed from the condition. `mlp` is Linear-SiLU-Linear (`mlp.0`, `mlp.2`).

    Args:
        channels (`int`): Width of the block's input and output.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels, bias=True),
            nn.SiLU(),
            nn.Linear(channels, channels, bias=True),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels, bias=True))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Apply the block to `(n, channels)` under the `(n, channels)` condition."""
        shift, scale, gate = self.adaLN_modulation(condition).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class SundialFinalLayer(nn.Module):
    """Output layer: non-affine LayerNorm, adaptive modulation, then a Linear to the forecast values.

    Args:
        model_channels (`int`): Width of the flow network.
        out_channels (`int`): Number of forecast values.
    """

    def __init__(self, model_channels: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(model_channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(model_channels, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 2 * model_channels, bias=True))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Map `(n, model_channels)` to `(n, out_channels)` under the condition."""
        shift, scale = self.adaLN_modulation(condition).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SundialFlowNet(nn.Module):
    """The flow network: predicts the clean target from a noised one, the flow time and a patch's hidden state.

    Args:
        in_channels (`int`): Number of forecast values (input and output width).
        model_channels (`int`): Width of the network.
        out_channels (`int`): Output width (`in_channels`).
        z_channels (`int`): Width of the condition (the decoder's hidden size).
        num_res_blocks (`int`): Number of `SundialResBlock`s.
    """

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int, num_res_blocks: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = SundialTimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([SundialResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = SundialFinalLayer(model_channels, out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Apply the network.

        Args:
            x (`torch.Tensor`): `(n, in_channels)` noised targets.
            t (`torch.Tensor`): `(n,)` flow times scaled by 1000.
            z (`torch.Tensor`): `(n, z_channels)` conditions.

        Returns:
            `torch.Tensor`: `(n, out_channels)` predicted targets.
        """
        condition = self.time_embed(t) + self.cond_embed(z)
        x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x, condition)
        return self.final_layer(x, condition)


class SundialFlowHead(nn.Module):
    """Flow-matching head (released name `flow_loss`): its training loss and its sampler.

    Along the straight path `x_t = t * target + (1 - t) * noise` the network predicts the target itself; the loss is
    its squared error weighted by `1 / (k + 1)` for the `k`-th forecast value, and sampling integrates
    `dx/dt = prediction - noise` from `t = 0` with `num_sampling_steps` Euler steps, as released.

    Args:
        target_channels (`int`): Number of forecast values.
        z_channels (`int`): Width of the condition.
        depth (`int`): Number of residual blocks.
        width (`int`): Width of the flow network.
        num_sampling_steps (`int`): Euler steps of the sampler.
    """

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int, num_sampling_steps: int):
        super().__init__()
        self.in_channels = target_channels
        self.num_sampling_steps = num_sampling_steps
        self.net = SundialFlowNet(target_channels, width, target_channels, z_channels, depth)

    def forward(
        self,
        target: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        mask_y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss of `(n, target_channels)` targets under `(n, z_channels)` conditions.

        Args:
            target (`torch.Tensor`): The targets.
            z (`torch.Tensor`): The conditions.
            mask (`torch.Tensor`, *optional*): `(n,)` weights of the targets' losses.
            mask_y (`torch.Tensor`, *optional*): `(n, target_channels)` weights of the forecast values.
            generator (`torch.Generator`, *optional*): Source of the noise and flow times (default: torch's global
                generator, drawn in the released order: noise, then times).

        Returns:
            `torch.Tensor`: the scalar loss.
        """
        noise = torch.randn(target.shape, generator=generator, dtype=target.dtype, device=target.device)
        t = torch.rand(target.shape[0], generator=generator, dtype=target.dtype, device=target.device)
        noised = t[:, None] * target + (1 - t[:, None]) * noise
        predicted = self.net(noised, t * 1000, z)
        weights = 1.0 / torch.arange(1, self.in_channels + 1, dtype=target.dtype, device=target.device)
        errors = weights * (predicted - target) ** 2
        if mask_y is not None:
            errors = mask_y * errors
        loss = errors.sum(dim=-1)
        if mask is not None:
            loss = (loss * mask).sum() / mask.sum()
        return loss.mean()

    def sample(self, z: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw `num_samples` forecasts per condition.

        Args:
            z (`torch.Tensor`): `(batch, z_channels)` conditions.
            num_samples (`int`, *optional*, defaults to 1): Forecasts per condition.
            generator (`torch.Generator`, *optional*): Source of the initial noise (default: torch's global generator;
                one `(num_samples * batch, target_channels)` draw, sample-major, as released).

        Returns:
            `torch.Tensor`: `(batch, num_samples, target_channels)` forecasts.
        """
        z = z.repeat(num_samples, 1)
        noise = torch.randn(z.shape[0], self.in_channels, generator=generator, dtype=z.dtype, device=z.device)
        x = noise
        dt = 1.0 / self.num_sampling_steps
        for step in range(self.num_sampling_steps):
            t = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) * step / self.num_sampling_steps
            x = x + (self.net(x, t * 1000, z) - noise) * dt
        return x.reshape(num_samples, -1, self.in_channels).transpose(0, 1)


class SundialPreTrainedModel(PreTrainedModel):
    """Base class of the Sundial models: configuration class, weight initialisation and rotary-table reset."""

    config_class = SundialConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SundialDecoderLayer"]
    _skip_keys_device_placement = "past_key_values"
    _input_embed_layer = "embed_layer"  # `get_input_embeddings` / `set_input_embeddings`, also through `model`

    # Copied from hf_tsprune.models.timer_xl.TimerPreTrainedModel._init_weights with Timer->Sundial
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, SundialRotaryEmbedding):
            module.reset_parameters()
            return
        super()._init_weights(module)


class SundialModel(SundialPreTrainedModel):
    """The Sundial decoder: patch embedding, decoder layers and the final LayerNorm.

    Args:
        config (`SundialConfig`): The model configuration.
    """

    # Copied from hf_tsprune.models.timer_xl.TimerModel.__init__ with Timer->Sundial
    def __init__(self, config: SundialConfig):
        super().__init__(config)
        self.embed_layer = SundialPatchEmbedding(config)
        self.layers = nn.ModuleList([SundialDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
    ) -> tuple | SundialModelOutput:
        r"""Run the decoder over the patches of a series.

        Args:
            input_ids (`torch.FloatTensor`, *optional*): `(batch, length)` series values; left-padded to
                `ceil(length / input_token_len)` patches.
            attention_mask (`torch.Tensor`, *optional*): `(batch, past + num_patches)` per-patch mask, 0 for padding.
            position_ids (`torch.LongTensor`, *optional*): `(batch or 1, num_patches)` positions; default: counted on
                from the cache length (or `cache_position`).
            past_key_values (`Cache`, *optional*): Key/value cache of the previous patches.
            inputs_embeds (`torch.FloatTensor`, *optional*): `(batch, num_patches, hidden_size)` instead of
                `input_ids`.
            use_cache (`bool`, *optional*): Keep and return a cache; default `config.use_cache` outside training.
            output_attentions (`bool`, *optional*): Return every layer's attention probabilities.
            output_hidden_states (`bool`, *optional*): Return every layer's input and the final output.
            return_dict (`bool`, *optional*): Return a `SundialModelOutput` instead of a tuple.
            cache_position (`torch.LongTensor`, *optional*): `(num_patches,)` positions of the new patches.

        Returns:
            `SundialModelOutput` or `tuple`.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_layer(input_ids)
        batch_size, seq_len, _ = inputs_embeds.shape

        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if not use_cache:
            past_key_values = None
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            if cache_position is None:
                cache_position = torch.arange(past_length, past_length + seq_len, device=inputs_embeds.device)
            position_ids = cache_position.unsqueeze(0)
        position_ids = position_ids.view(-1, seq_len).long()
        mask = causal_attention_mask(
            attention_mask, batch_size, seq_len, past_length, inputs_embeds.dtype, inputs_embeds.device
        )

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = layer(
                hidden_states,
                position_ids=position_ids,
                attention_mask=mask,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
            )
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_dict:
            return tuple(
                v for v in (hidden_states, past_key_values, all_hidden_states, all_attentions) if v is not None
            )
        return SundialModelOutput(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


class SundialForPrediction(SundialPreTrainedModel):
    """Sundial with its flow-matching head: flow-matching training and sampled autoregressive forecasting.

    Args:
        config (`SundialConfig`): The model configuration.
    """

    def __init__(self, config: SundialConfig):
        super().__init__(config)
        self.model = SundialModel(config)
        self.flow_loss = SundialFlowHead(
            config.output_token_lens[-1],
            config.hidden_size,
            config.flow_loss_depth,
            config.hidden_size,
            config.num_sampling_steps,
        )
        self.post_init()

    # Copied from hf_tsprune.models.timer_xl.TimerForPrediction.get_decoder with Timer->Sundial
    def get_decoder(self) -> SundialModel:
        """The decoder (`self.model`)."""
        return self.model

    # Copied from hf_tsprune.models.timer_xl.TimerForPrediction.set_decoder with Timer->Sundial
    def set_decoder(self, decoder: SundialModel) -> None:
        """Replace the decoder."""
        self.model = decoder

    def _output_length(self, max_output_length: int | None) -> int | None:
        """Length the sampled forecast is cropped to, as released: the longest of `output_token_lens[1:]` not longer
        than `max_output_length` (else `output_token_lens[0]`) is chosen, and the forecast (always
        `output_token_lens[-1]` values) is cropped to `max_output_length` only when that choice is longer than it.
        Returns `None` for no cropping."""
        lengths = self.config.output_token_lens
        if max_output_length is None:
            max_output_length = lengths[0]
        chosen = lengths[0]
        for length in lengths[1:]:
            if length > max_output_length:
                break
            chosen = length
        return max_output_length if chosen > max_output_length else None

    def forward(
        self,
        input_ids: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.FloatTensor | None = None,
        loss_masks: torch.FloatTensor | None = None,
        mask_y: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        max_output_length: int | None = None,
        revin: bool | None = False,
        num_samples: int | None = 1,
        cache_position: torch.LongTensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple | SundialOutput:
        r"""Flow-matching loss (with `labels`) or `num_samples` sampled forecasts after the last patch.

        Args:
            input_ids (`torch.FloatTensor`, *optional*): `(batch, length)` series values.
            attention_mask (`torch.Tensor`, *optional*): Per-patch mask, see `SundialModel.forward`.
            position_ids (`torch.LongTensor`, *optional*): Patch positions, see `SundialModel.forward`.
            past_key_values (`Cache`, *optional*): Key/value cache of previous patches.
            inputs_embeds (`torch.FloatTensor`, *optional*): Patch embeddings instead of `input_ids`.
            labels (`torch.FloatTensor`, *optional*): `(batch, >= (num_patches - 1) * input_token_len + L)` targets,
                `L = output_token_lens[-1]`: patch `i`'s target is `labels[:, i * input_token_len :][:, :L]`.
            loss_masks (`torch.FloatTensor`, *optional*): `(batch, num_patches)` per-patch loss weights (default: all
                ones).
            mask_y (`torch.FloatTensor`, *optional*): `(batch, L)` weights of the forecast values. As released, the
                flattened `(batch * num_patches * diffusion_batch_mul)` targets use the rows of `mask_y` tiled, row `r`
                taking `mask_y[r % batch]`; identical rows (or `batch == 1`) pair each sample with its own mask.
            use_cache (`bool`, *optional*): Keep and return a key/value cache.
            output_attentions (`bool`, *optional*): Return the attention probabilities.
            output_hidden_states (`bool`, *optional*): Return the hidden states.
            return_dict (`bool`, *optional*): Return a `SundialOutput` instead of a tuple.
            max_output_length (`int`, *optional*): Forecast length wanted (see `_output_length`).
            revin (`bool`, *optional*, defaults to `False`): Normalise `input_ids` (and `labels`) by the input's mean
                and (biased) standard deviation over time, a deviation below 0.01 replaced by 1, and de-normalise the
                forecast.
            num_samples (`int`, *optional*, defaults to 1): Forecasts drawn per series.
            cache_position (`torch.LongTensor`, *optional*): Positions of the new patches.
            generator (`torch.Generator`, *optional*): Source of the flow's noise (default: torch's global generator).

        Returns:
            `SundialOutput` or `tuple` (`loss` first when given).
        """
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if revin:
            mean = input_ids.mean(1, keepdim=True).detach()
            std = input_ids.std(dim=1, keepdim=True, unbiased=False).detach()
            std = torch.where(std > 1e-2, std, torch.ones_like(std))
            input_ids = (input_ids - mean) / std
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
        )
        hidden_states = outputs.last_hidden_state

        loss = predictions = None
        if labels is not None:
            if revin:
                labels = (labels - mean) / std
            patch, length = self.config.input_token_len, self.config.output_token_lens[-1]
            repeats = self.config.diffusion_batch_mul
            batch_size, num_patches, hidden_size = hidden_states.shape
            targets = labels[:, : num_patches * patch - patch + length].unfold(-1, length, patch)
            targets = targets.reshape(batch_size * num_patches, length).repeat(repeats, 1)
            conditions = hidden_states.reshape(batch_size * num_patches, hidden_size).repeat(repeats, 1)
            if loss_masks is None:
                loss_masks = torch.ones(batch_size, num_patches, dtype=targets.dtype, device=targets.device)
            weights = loss_masks.reshape(batch_size * num_patches).repeat(repeats)
            if mask_y is not None:
                mask_y = mask_y.repeat(num_patches * repeats, 1)
            loss = self.flow_loss(targets, conditions, weights, mask_y, generator=generator)
        else:
            predictions = self.flow_loss.sample(hidden_states[:, -1, :], num_samples, generator=generator)
            crop = self._output_length(max_output_length)
            if crop is not None:
                predictions = predictions[:, :, :crop]
            if revin:
                predictions = predictions * std[:, None] + mean[:, None]

        if not return_dict:
            extra = tuple(
                v for v in (outputs.past_key_values, outputs.hidden_states, outputs.attentions) if v is not None
            )
            head = (loss,) if loss is not None else (predictions,)
            return head + extra
        return SundialOutput(
            loss=loss,
            logits=predictions,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        num_samples: int = 1,
        use_cache: bool | None = None,
        revin: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Sample `num_samples` forecasts of `max_new_tokens` values by autoregressive rollout, as released.

        With `revin` the context is normalised once by its mean and (biased) standard deviation plus 1e-5, and the
        forecasts are de-normalised at the end. Each step samples `num_samples` continuations of the series and
        appends their per-step median (`torch.median`, the lower middle sample for an even count) to the series that
        conditions the next step; the returned trajectories are the concatenated samples of every step. With the cache
        (the default) a later step feeds only the appended patches; without it every step re-reads the whole series
        (the released code then returns only the last step's samples: here the whole rollout is returned, whose last
        step equals the released output). Forecast lengths that are not multiples of `input_token_len` are only
        supported without the cache beyond one step.

        Args:
            inputs (`torch.Tensor`): `(batch, length)` context.
            max_new_tokens (`int`, *optional*): Number of values to forecast.
            max_length (`int`, *optional*): Context plus forecast length, instead of `max_new_tokens`.
            num_samples (`int`, *optional*, defaults to 1): Forecasts per series.
            use_cache (`bool`, *optional*): Use the key/value cache; default `config.use_cache`.
            revin (`bool`, *optional*, defaults to `True`): Normalise the context (see above).
            generator (`torch.Generator`, *optional*): Source of the flow's noise (default: torch's global generator;
                with the same seed the samples equal the released code's).

        Returns:
            `torch.Tensor`: `(batch, num_samples, max_new_tokens)` forecasts.
        """
        if inputs.dim() != 2:
            raise ValueError(f"`inputs` must be (batch, length), got shape {tuple(inputs.shape)}.")
        inputs = inputs.to(self.device)
        context_length = inputs.shape[1]
        if max_new_tokens is not None:
            max_length = context_length + max_new_tokens
        if max_length is None or max_length <= context_length:
            raise ValueError("Pass a positive `max_new_tokens` (or a `max_length` beyond the context).")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if revin:
            mean = inputs.mean(dim=-1, keepdim=True)
            std = inputs.std(dim=-1, keepdim=True, unbiased=False) + 1e-5
            inputs = (inputs - mean) / std

        series, cache, chunks = inputs, None, []
        while series.shape[1] < max_length:
            step_input = series if cache is None else chunks[-1].median(dim=1)[0]
            outputs = self(
                input_ids=step_input,
                past_key_values=cache,
                use_cache=use_cache,
                max_output_length=max_length - series.shape[1],
                num_samples=num_samples,
                return_dict=True,
                generator=generator,
            )
            cache = outputs.past_key_values if use_cache else None
            chunks.append(outputs.logits)
            series = torch.cat([series, outputs.logits.median(dim=1)[0]], dim=-1)
        forecasts = torch.cat(chunks, dim=-1)[:, :, : max_length - context_length]
        if revin:
            forecasts = forecasts * std[:, None] + mean[:, None]
        return forecasts


AutoConfig.register(SundialConfig.model_type, SundialConfig, exist_ok=True)
AutoModelForCausalLM.register(SundialConfig, SundialForPrediction, exist_ok=True)
