"""Timer-XL (`thuml/timer-base-84m`) for transformers 5.

Timer-XL is a decoder-only transformer over patches of a univariate series: each patch of `input_token_len` values is
embedded by one Linear, the decoder layers (post-norm LayerNorm, causal multi-head self-attention with rotary position
embeddings, SwiGLU feed-forward) run over the patches, and one Linear head per entry of `output_token_lens` maps every
patch to the values that follow it. Training minimises the next-patch MSE of every head; forecasting beyond the native
output length is an autoregressive rollout (`TimerForPrediction.generate`).

This module is an own implementation of the model published as transformers-4 Hub remote code (which does not import
under transformers 5): same configuration fields and defaults, same module names and state-dict keys, so that the
released checkpoints load with `from_pretrained` and no `trust_remote_code`. It depends on the standard library, torch
and transformers only, so that a pruned checkpoint can carry it verbatim as remote code. Importing it registers
`TimerConfig` (`model_type="timer"`) and `TimerForPrediction` with `AutoConfig` and `AutoModelForCausalLM`.

Pruning contract: `TimerAttention` derives every shape from its attributes (`num_heads`, `num_key_value_heads`,
`num_key_value_groups`, `head_dim`, `v_head_dim`) and keeps its softmax scale in `scaling`, so a layer is shrunk by
slicing its Linears and updating the attributes; an optional `rotary_pairs` buffer re-indexes the rotary tables per
key/value head after rotary query/key channels were removed (`apply_rotary`). The feed-forward width is read from the
weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput


class TimerConfig(PretrainedConfig):
    r"""Configuration of a Timer-XL model (`thuml/timer-base-84m`).

    The field names and defaults are those of the released configuration class. The released `timer-base-84m`
    checkpoint sets `input_token_len=96` and `output_token_lens=[96]`; the class defaults (`1` and `[1, 8, 32, 64]`)
    are kept as released.

    Args:
        input_token_len (`int`, *optional*, defaults to 1):
            Number of time steps in one input patch (token).
        hidden_size (`int`, *optional*, defaults to 1024):
            Width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 2048):
            Width of the SwiGLU feed-forward blocks.
        output_token_lens (`list[int]`, *optional*, defaults to `[1, 8, 32, 64]`):
            Output lengths of the forecasting heads, one Linear head each.
        num_hidden_layers (`int`, *optional*, defaults to 8):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Number of attention heads; the head dimension is `hidden_size // num_attention_heads`.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the feed-forward gate.
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether forecasting keeps a key/value cache between autoregressive steps.
        rope_theta (`int`, *optional*, defaults to 10000):
            Base of the rotary position embedding.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities (training only).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the Linear weights.
        max_position_embeddings (`int`, *optional*, defaults to 10000):
            Number of positions whose rotary tables are precomputed (longer inputs extend them).
    """

    model_type = "timer"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        input_token_len: int = 1,
        hidden_size: int = 1024,
        intermediate_size: int = 2048,
        output_token_lens: list[int] | None = None,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        hidden_act: str = "silu",
        use_cache: bool = True,
        rope_theta: int = 10000,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 10000,
        **kwargs,
    ):
        self.input_token_len = input_token_len
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.output_token_lens = list(output_token_lens) if output_token_lens is not None else [1, 8, 32, 64]
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)


@dataclass
class TimerOutput(ModelOutput):
    r"""Output of `TimerForPrediction`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Next-patch MSE averaged over the forecasting heads, when `labels` are given.
        logits (`torch.FloatTensor`):
            With `labels`: the first head's predictions for every patch, `(batch, num_patches, output_token_lens[0])`.
            Without: the forecast after the last patch, `(batch, horizon)`.
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


@dataclass
class TimerModelOutput(ModelOutput):
    r"""Output of `TimerModel`.

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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map the channel halves `(x1, x2)` of the last dimension to `(-x2, x1)`.

    Args:
        x (`torch.Tensor`): Tensor whose last dimension is even.

    Returns:
        `torch.Tensor`: the rotated tensor.
    """
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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


class TimerPatchEmbedding(nn.Module):
    """Cuts a series into non-overlapping patches of `input_token_len` values (a trailing remainder is dropped) and
    embeds each with one Linear.

    Args:
        config (`TimerConfig`): The model configuration.
    """

    def __init__(self, config: TimerConfig):
        super().__init__()
        self.input_token_len = config.input_token_len
        self.emb = nn.Linear(config.input_token_len, config.hidden_size, bias=False)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """Embed `(batch, length)` values into `(batch, length // input_token_len, hidden_size)` tokens."""
        patches = series.unfold(dimension=-1, size=self.input_token_len, step=self.input_token_len)
        return self.emb(patches)


class TimerRotaryEmbedding(nn.Module):
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


class TimerAttention(nn.Module):
    """Causal multi-head self-attention with rotary embeddings (scaled dot-product attention).

    Every shape comes from the attributes `num_heads`, `num_key_value_heads`, `num_key_value_groups`, `head_dim`
    (per-head query/key width) and `v_head_dim` (per-head value width); the softmax scale is `scaling`, fixed at
    construction to the unpruned `head_dim ** -0.5`. The optional buffer `rotary_pairs` (`None` by default) maps the
    rotary channels of pruned heads to the original tables (see `apply_rotary`).

    Args:
        config (`TimerConfig`): The model configuration.
        layer_idx (`int`, *optional*): Index of the layer in the key/value cache.
    """

    def __init__(self, config: TimerConfig, layer_idx: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_attention_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = hidden_size // self.num_heads
        self.v_head_dim = self.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden_size, self.num_key_value_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden_size, self.num_key_value_heads * self.v_head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, hidden_size, bias=False)
        self.rotary_emb = TimerRotaryEmbedding(
            self.head_dim, max_position_embeddings=config.max_position_embeddings, base=config.rope_theta
        )
        self.register_buffer("rotary_pairs", None, persistent=False)

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


class TimerMLP(nn.Module):
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


class TimerDecoderLayer(GradientCheckpointingLayer):
    """Post-norm decoder layer: `norm1(x + attn(x))`, then `norm2(h + ffn(h))`.

    Args:
        config (`TimerConfig`): The model configuration.
        layer_idx (`int`): Index of the layer.
    """

    def __init__(self, config: TimerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = TimerAttention(config, layer_idx)
        self.ffn_layer = TimerMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
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
        """Run the layer; arguments as in `TimerAttention.forward`."""
        attended, weights = self.self_attn(
            hidden_states,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
        )
        hidden_states = self.norm1(hidden_states + attended)
        hidden_states = self.norm2(hidden_states + self.ffn_layer(hidden_states))
        return hidden_states, weights


class TimerPreTrainedModel(PreTrainedModel):
    """Base class of the Timer-XL models: configuration class, weight initialisation and rotary-table reset."""

    config_class = TimerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TimerDecoderLayer"]
    _skip_keys_device_placement = "past_key_values"
    _input_embed_layer = "embed_layer"  # `get_input_embeddings` / `set_input_embeddings`, also through `model`

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, TimerRotaryEmbedding):
            module.reset_parameters()
            return
        super()._init_weights(module)


class TimerModel(TimerPreTrainedModel):
    """The Timer-XL decoder: patch embedding, decoder layers and the final LayerNorm.

    Args:
        config (`TimerConfig`): The model configuration.
    """

    def __init__(self, config: TimerConfig):
        super().__init__(config)
        self.embed_layer = TimerPatchEmbedding(config)
        self.layers = nn.ModuleList([TimerDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
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
    ) -> tuple | TimerModelOutput:
        r"""Run the decoder over the patches of a series.

        Args:
            input_ids (`torch.FloatTensor`, *optional*): `(batch, length)` series values; cut into
                `length // input_token_len` patches.
            attention_mask (`torch.Tensor`, *optional*): `(batch, past + num_patches)` per-patch mask, 0 for padding.
            position_ids (`torch.LongTensor`, *optional*): `(batch or 1, num_patches)` positions; default: counted on
                from the cache length (or `cache_position`).
            past_key_values (`Cache`, *optional*): Key/value cache of the previous patches.
            inputs_embeds (`torch.FloatTensor`, *optional*): `(batch, num_patches, hidden_size)` instead of
                `input_ids`.
            use_cache (`bool`, *optional*): Keep and return a cache; default `config.use_cache` outside training.
            output_attentions (`bool`, *optional*): Return every layer's attention probabilities.
            output_hidden_states (`bool`, *optional*): Return every layer's input and the final output.
            return_dict (`bool`, *optional*): Return a `TimerModelOutput` instead of a tuple.
            cache_position (`torch.LongTensor`, *optional*): `(num_patches,)` positions of the new patches.

        Returns:
            `TimerModelOutput` or `tuple`.
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
        return TimerModelOutput(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


class TimerForPrediction(TimerPreTrainedModel):
    """Timer-XL with its forecasting heads: next-patch MSE training and autoregressive forecasting.

    Args:
        config (`TimerConfig`): The model configuration.
    """

    def __init__(self, config: TimerConfig):
        super().__init__(config)
        self.model = TimerModel(config)
        self.lm_heads = nn.ModuleList(
            [nn.Linear(config.hidden_size, length, bias=False) for length in config.output_token_lens]
        )
        self.output_token_len_map = {length: i for i, length in enumerate(config.output_token_lens)}
        self.post_init()

    def get_decoder(self) -> TimerModel:
        """The decoder (`self.model`)."""
        return self.model

    def set_decoder(self, decoder: TimerModel) -> None:
        """Replace the decoder."""
        self.model = decoder

    def _head_for(self, max_output_length: int | None) -> tuple[int, int]:
        """The head used for a forecast of `max_output_length` values: the longest of `output_token_lens[1:]` not
        longer than it, else the first head (as released). Returns its index and the forecast length."""
        lengths = self.config.output_token_lens
        if max_output_length is None:
            return 0, lengths[0]
        chosen = lengths[0]
        for length in lengths[1:]:
            if length > max_output_length:
                break
            chosen = length
        return self.output_token_len_map[chosen], min(chosen, max_output_length)

    def next_patch_loss(
        self,
        predictions: torch.Tensor,
        labels: torch.Tensor,
        loss_masks: torch.Tensor | None,
        output_token_len: int,
    ) -> torch.Tensor:
        """Next-patch MSE of one head: the prediction after patch `i` against the `output_token_len` values after it.

        Args:
            predictions (`torch.Tensor`): `(batch, num_patches, output_token_len)`.
            labels (`torch.Tensor`): `(batch, >= (num_patches - 1) * input_token_len + output_token_len)` values
                following the first patch's start, i.e. the input shifted by one patch.
            loss_masks (`torch.Tensor`, *optional*): `(batch, num_patches)` weights of the patches' losses.
            output_token_len (`int`): The head's output length.

        Returns:
            `torch.Tensor`: the masked mean of the per-patch mean squared errors.
        """
        patch = self.config.input_token_len
        length = predictions.shape[1] * patch
        targets = labels[:, : length - patch + output_token_len].unfold(-1, output_token_len, patch)
        losses = ((predictions - targets) ** 2).mean(dim=-1)
        if loss_masks is None:
            return losses.mean()
        return (losses * loss_masks).sum() / loss_masks.sum()

    def forward(
        self,
        input_ids: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.FloatTensor | None = None,
        loss_masks: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        max_output_length: int | None = None,
        revin: bool | None = False,
        cache_position: torch.LongTensor | None = None,
    ) -> tuple | TimerOutput:
        r"""Training loss (with `labels`) or the forecast after the last patch.

        Args:
            input_ids (`torch.FloatTensor`, *optional*): `(batch, length)` series values.
            attention_mask (`torch.Tensor`, *optional*): Per-patch mask, see `TimerModel.forward`.
            position_ids (`torch.LongTensor`, *optional*): Patch positions, see `TimerModel.forward`.
            past_key_values (`Cache`, *optional*): Key/value cache of previous patches.
            inputs_embeds (`torch.FloatTensor`, *optional*): Patch embeddings instead of `input_ids`.
            labels (`torch.FloatTensor`, *optional*): `(batch, length)` targets, the input shifted by one patch and
                extended by the longest head's output (see `next_patch_loss`); the loss is the mean over heads.
            loss_masks (`torch.FloatTensor`, *optional*): `(batch, num_patches)` per-patch loss weights.
            use_cache (`bool`, *optional*): Keep and return a key/value cache.
            output_attentions (`bool`, *optional*): Return the attention probabilities.
            output_hidden_states (`bool`, *optional*): Return the hidden states.
            return_dict (`bool`, *optional*): Return a `TimerOutput` instead of a tuple.
            max_output_length (`int`, *optional*): Forecast length wanted; picks the head (see `_head_for`) and crops.
            revin (`bool`, *optional*, defaults to `False`): Normalise `input_ids` by their mean and (unbiased)
                standard deviation over time and de-normalise the forecast (not applied to `labels`).
            cache_position (`torch.LongTensor`, *optional*): Positions of the new patches.

        Returns:
            `TimerOutput` or `tuple` (`loss` first when given).
        """
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if revin:
            mean = input_ids.mean(dim=-1, keepdim=True)
            std = input_ids.std(dim=-1, keepdim=True)
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

        loss = None
        if labels is not None:
            predictions = None
            total = 0.0
            for head, length in zip(self.lm_heads, self.config.output_token_lens):
                head_predictions = head(hidden_states)
                total = total + self.next_patch_loss(head_predictions, labels, loss_masks, length)
                if predictions is None:
                    predictions = head_predictions
            loss = total / len(self.config.output_token_lens)
        else:
            index, length = self._head_for(max_output_length)
            predictions = self.lm_heads[index](hidden_states[:, -1, :])[:, :length]
            if revin:
                predictions = predictions * std + mean

        if not return_dict:
            extra = tuple(
                v for v in (outputs.past_key_values, outputs.hidden_states, outputs.attentions) if v is not None
            )
            return ((loss,) if loss is not None else ()) + (predictions,) + extra
        return TimerOutput(
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
        use_cache: bool | None = None,
        revin: bool = True,
    ) -> torch.Tensor:
        r"""Forecast `max_new_tokens` values by autoregressive rollout, as the released `generate`.

        The input is cropped to its last whole patches. Each step forecasts with the head chosen for the values still
        missing (see `_head_for`) and appends the forecast to the series. Without the cache every step re-reads the
        whole series, normalised by its own statistics (`revin`): this equals a manual loop of `forward(..., revin=True,
        max_output_length=remaining)` calls. With the cache (the default) every later step feeds only the patches
        appended since, **normalised by the statistics of those patches alone** (a quirk of the released code, kept
        here: the cached keys of the earlier patches were computed under the first step's normalisation), so the two
        paths give different forecasts beyond the first step. Forecast lengths that are not multiples of
        `input_token_len` are only supported without the cache beyond one step.

        Args:
            inputs (`torch.Tensor`): `(batch, length)` context, `length >= input_token_len`.
            max_new_tokens (`int`, *optional*): Number of values to forecast.
            max_length (`int`, *optional*): Context plus forecast length (after cropping), instead of
                `max_new_tokens`.
            use_cache (`bool`, *optional*): Use the key/value cache; default `config.use_cache`.
            revin (`bool`, *optional*, defaults to `True`): Normalise every step's input (see above).

        Returns:
            `torch.Tensor`: `(batch, max_new_tokens)` forecast.
        """
        if inputs.dim() != 2:
            raise ValueError(f"`inputs` must be (batch, length), got shape {tuple(inputs.shape)}.")
        patch = self.config.input_token_len
        if inputs.shape[1] < patch:
            raise ValueError(f"Input length must be at least input_token_len={patch}, got {inputs.shape[1]}.")
        inputs = inputs[:, -(inputs.shape[1] // patch) * patch :].to(self.device)
        context_length = inputs.shape[1]
        if max_new_tokens is not None:
            max_length = context_length + max_new_tokens
        if max_length is None or max_length <= context_length:
            raise ValueError("Pass a positive `max_new_tokens` (or a `max_length` beyond the cropped context).")
        use_cache = self.config.use_cache if use_cache is None else use_cache

        series = inputs
        cache = None
        while series.shape[1] < max_length:
            step_input = series
            if cache is not None:
                step_input = series[:, cache.get_seq_length() * patch :]
            outputs = self(
                input_ids=step_input,
                past_key_values=cache,
                use_cache=use_cache,
                revin=revin,
                max_output_length=max_length - series.shape[1],
                return_dict=True,
            )
            cache = outputs.past_key_values if use_cache else None
            series = torch.cat([series, outputs.logits], dim=-1)
        return series[:, context_length:max_length]


AutoConfig.register(TimerConfig.model_type, TimerConfig, exist_ok=True)
AutoModelForCausalLM.register(TimerConfig, TimerForPrediction, exist_ok=True)
