"""Time-MoE (Shi et al., "Time-MoE: Billion-Scale Time Series Foundation Models with Mixture of Experts", ICLR 2025)
for transformers 5.

A decoder-only transformer over single time points: a gated point embedding, rotary grouped-query attention, a sparse
mixture-of-experts feed-forward block (top-k routed SwiGLU experts plus a sigmoid-gated shared expert) or a dense
SwiGLU block, RMSNorm, and one linear output head per native horizon (`horizon_lengths`). Its training loss is the
Huber loss (delta 2) of every head against the next `horizon` points, averaged over the heads, plus
`router_aux_loss_factor` times the Switch-Transformer load-balancing loss of the routers when `apply_aux_loss`.
`generate` rolls the forecast out autoregressively beyond the largest native horizon, as the released code does.

Configuration fields, defaults, module names and state-dict keys are those of the released checkpoints
(`Maple728/TimeMoE-50M`, `Maple728/TimeMoE-200M`, `model_type` `"time_moe"`), so their weights load into
[`TimeMoeForPrediction`] without `trust_remote_code`; the classes register with `AutoConfig` /
`AutoModelForCausalLM` (and `AutoModel` for [`TimeMoeModel`]) when this module is imported.

Written for pruning (the shapes are read from the modules, never from the configuration):

- attention (`TimeMoeAttention`): `q_proj`, `k_proj`, `v_proj` (with bias) and `o_proj`; the forward views its
  tensors with the attributes `num_heads`, `num_key_value_heads`, `head_dim` (query/key width per head) and
  `v_head_dim` (value width per head), scales the logits by `scaling` (fixed at `head_dim ** -0.5` of the unpruned
  head), and honours an optional `rotary_pairs` buffer (pruned rotary query/key pairs, see [`apply_rotary`]);
- feed-forward blocks: `gate_proj`, `up_proj`, `down_proj`, `down(act(gate(x)) * up(x))`, width from the weights;
- the mixture-of-experts block takes its expert count from `len(experts)`, so experts can be removed together with
  their router rows (`num_experts` is then updated by whoever removes them).

This module imports only the standard library, torch and transformers: a pruned checkpoint carries it verbatim as
remote code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast

__all__ = [
    "TimeMoeAttention",
    "TimeMoeConfig",
    "TimeMoeDecoderLayer",
    "TimeMoeForPrediction",
    "TimeMoeInputEmbedding",
    "TimeMoeMLP",
    "TimeMoeModel",
    "TimeMoeOutputLayer",
    "TimeMoePreTrainedModel",
    "TimeMoeRMSNorm",
    "TimeMoeRotaryEmbedding",
    "TimeMoeSparseExpertsLayer",
    "TimeMoeTemporalBlock",
    "apply_rotary",
    "load_balancing_loss",
]


def _output(output_class: type, **fields) -> object:
    """Builds a transformers output, naming the cache field as this transformers version does (`cache` since 5.x,
    `past_key_values` before)."""
    if "cache" not in output_class.__dataclass_fields__:
        fields["past_key_values"] = fields.pop("cache")
    return output_class(**fields)


def _output_cache(output: object) -> Cache | None:
    """The cache of a transformers output, whichever name this transformers version gives the field."""
    name = "cache" if "cache" in output.__dataclass_fields__ else "past_key_values"
    return getattr(output, name)


class TimeMoeConfig(PreTrainedConfig):
    r"""Configuration of a Time-MoE model (the released `time_moe` configuration: same fields and defaults).

    Args:
        input_size (`int`, *optional*, defaults to 1):
            Number of values per time point (channels the embedding reads and every head predicts).
        hidden_size (`int`, *optional*, defaults to 4096):
            Width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 22016):
            Width of the dense feed-forward block and of the shared expert; each routed expert is
            `intermediate_size // num_experts_per_tok` wide.
        horizon_lengths (`list[int]` or `int`, *optional*, defaults to 1):
            The native horizons, one output head each (ascending, as released: `[1, 8, 32, 64]`).
        num_hidden_layers (`int`, *optional*, defaults to 32):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 32):
            Number of query heads.
        num_key_value_heads (`int`, *optional*):
            Number of key/value heads (grouped-query attention); defaults to `num_attention_heads`.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the embedding gate and of every SwiGLU block.
        num_experts_per_tok (`int`, *optional*, defaults to 2):
            Experts each time point is routed to (top-k).
        num_experts (`int`, *optional*, defaults to 1):
            Routed experts per layer.
        max_position_embeddings (`int`, *optional*, defaults to 32768):
            Length of the precomputed rotary tables (longer inputs extend them).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the Linear weights.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the RMS norms.
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether the forward returns its key/value cache.
        use_dense (`bool`, *optional*, defaults to `False`):
            Dense SwiGLU feed-forward blocks instead of mixture-of-experts blocks.
        rope_theta (`int`, *optional*, defaults to 10000):
            Base of the rotary frequencies.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities (training only).
        apply_aux_loss (`bool`, *optional*, defaults to `True`):
            Whether the training loss adds the routers' load-balancing loss. Exactly one of `use_dense` and
            `apply_aux_loss` must be `True` (as released). The model copies it to its attribute `apply_aux_loss`,
            which training code may switch off (a prune run) and on (finetuning).
        router_aux_loss_factor (`float`, *optional*, defaults to 0.02):
            Weight of the load-balancing loss.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Unused (kept for the released configuration).
    """

    model_type = "time_moe"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        input_size: int = 1,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        horizon_lengths: list[int] | int = 1,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        num_experts_per_tok: int = 2,
        num_experts: int = 1,
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        use_dense: bool = False,
        rope_theta: int = 10000,
        attention_dropout: float = 0.0,
        apply_aux_loss: bool = True,
        router_aux_loss_factor: float = 0.02,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        if bool(use_dense) == bool(apply_aux_loss):
            raise ValueError(
                f"TimeMoeConfig: use_dense={use_dense} and apply_aux_loss={apply_aux_loss}; exactly one of them must "
                "be True: a dense model (use_dense=True) has no router, so apply_aux_loss=False; a mixture-of-experts "
                "model (use_dense=False) is configured with apply_aux_loss=True (training code may still switch the "
                "auxiliary loss off through the model's `apply_aux_loss` attribute)."
            )
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if isinstance(horizon_lengths, int):
            horizon_lengths = [horizon_lengths]
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.horizon_lengths = list(horizon_lengths)
        self.num_experts_per_tok = num_experts_per_tok
        self.num_experts = num_experts
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.use_dense = use_dense
        self.rope_theta = rope_theta
        self.attention_dropout = attention_dropout
        self.apply_aux_loss = apply_aux_loss
        self.router_aux_loss_factor = router_aux_loss_factor
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


# -- building blocks --------------------------------------------------------------------------------------------------


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


def repeat_kv(states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """`(batch, kv_heads, seq_len, dim)` -> `(batch, kv_heads * n_rep, seq_len, dim)`, each key/value head repeated."""
    if n_rep == 1:
        return states
    batch, kv_heads, seq_len, dim = states.shape
    return (
        states[:, :, None].expand(batch, kv_heads, n_rep, seq_len, dim).reshape(batch, kv_heads * n_rep, seq_len, dim)
    )


class TimeMoeInputEmbedding(nn.Module):
    """Point embedding: `act(gate_layer(x)) * emb_layer(x)` (two bias-free Linears from `input_size` values)."""

    def __init__(self, config: TimeMoeConfig):
        super().__init__()
        self.emb_layer = nn.Linear(config.input_size, config.hidden_size, bias=False)
        self.gate_layer = nn.Linear(config.input_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(self.gate_layer(x)) * self.emb_layer(x)


class TimeMoeRotaryEmbedding(nn.Module):
    """Rotary tables of one attention layer: `inv_freq` and the cosine/sine of every position up to a length.

    All three are non-persistent buffers (the released checkpoints do not hold them), computed at construction and
    again by [`TimeMoePreTrainedModel._init_weights`], which `from_pretrained` runs after loading. The tables keep the
    unpruned head dimension `dim`: pruned rotary pairs index them (see [`apply_rotary`]).

    Args:
        dim (`int`): the (unpruned) head dimension.
        max_position_embeddings (`int`): number of positions tabulated.
        base (`float`): base of the frequencies.
    """

    def __init__(self, dim: int, max_position_embeddings: int, base: float):
        super().__init__()
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.register_buffer("inv_freq", torch.empty(dim // 2), persistent=False)
        self.register_buffer("cos_cached", torch.empty(max_position_embeddings, dim), persistent=False)
        self.register_buffer("sin_cached", torch.empty(max_position_embeddings, dim), persistent=False)
        self.reset_tables()

    @torch.no_grad()
    def reset_tables(self, length: int | None = None) -> None:
        """(Re)computes `inv_freq` and the tables (float32) for `length` positions (`max_position_embeddings`).

        Args:
            length (`int`, *optional*): number of positions; at least `max_position_embeddings`.
        """
        length = max(self.max_position_embeddings, length or 0)
        device = self.inv_freq.device
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        inv_freq = 1.0 / (self.base**exponents)
        positions = torch.arange(length, dtype=torch.int64, device=device).float()
        freqs = torch.outer(positions, inv_freq)
        table = torch.cat((freqs, freqs), dim=-1)
        self.inv_freq = inv_freq
        self.cos_cached = table.cos()
        self.sin_cached = table.sin()

    def extend(self, length: int) -> None:
        """Makes the tables cover positions `0 .. length - 1` (recomputed longer when needed).

        Args:
            length (`int`): number of positions needed.
        """
        if length > self.cos_cached.shape[0]:
            self.reset_tables(length)

    def forward(self, position_ids: torch.LongTensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The cosine and sine tables at `position_ids` (`(batch or 1, seq_len)`), as `(batch or 1, seq_len, dim)`."""
        return self.cos_cached[position_ids].to(dtype), self.sin_cached[position_ids].to(dtype)


class TimeMoeRMSNorm(nn.Module):
    """RMS norm computed in float32, then scaled by `weight`.

    Args:
        hidden_size (`int`): normalised width.
        eps (`float`, *optional*, defaults to 1e-6): added to the mean square.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class TimeMoeTemporalBlock(nn.Module):
    """SwiGLU feed-forward block `down_proj(act(gate_proj(x)) * up_proj(x))` (bias-free; width from the weights).

    Args:
        hidden_size (`int`): input and output width.
        intermediate_size (`int`): hidden width.
        hidden_act (`str`): activation name.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class TimeMoeMLP(TimeMoeTemporalBlock):
    """The dense feed-forward block (`use_dense=True`): a SwiGLU block that returns no router logits."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, None]:
        return super().forward(hidden_states), None


class TimeMoeSparseExpertsLayer(nn.Module):
    """Mixture-of-experts block: top-k routed SwiGLU experts plus a sigmoid-gated shared SwiGLU expert.

    The router `gate` (`Linear(hidden, num_experts, bias=False)`) scores each time point; its softmax probabilities
    (not renormalised over the top-k, as released) weight the `top_k` selected experts. The number of experts is
    `len(self.experts)`, so experts may be removed with their router rows.

    Removing router rows changes the softmax denominator of every time point, so it changes the routing weights (by
    the removed experts' probability mass) even where no removed expert was chosen. For an exact removal, keep the
    router whole and register a buffer `kept_experts` (`torch.LongTensor`, the original indices of `experts`, in
    order): the softmax then runs over all router rows and the top-k over the kept experts' columns, so outputs are
    unchanged wherever only kept experts were chosen. The returned router logits are then the kept experts' columns.

    Args:
        config ([`TimeMoeConfig`]): the model configuration.
    """

    def __init__(self, config: TimeMoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.norm_topk_prob = False
        expert_size = config.intermediate_size // self.top_k
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            [
                TimeMoeTemporalBlock(config.hidden_size, expert_size, config.hidden_act)
                for _ in range(config.num_experts)
            ]
        )
        self.shared_expert = TimeMoeTemporalBlock(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the block's output (same shape as `hidden_states`) and the router logits `(tokens, experts)`."""
        batch_size, seq_len, hidden_dim = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden_dim)
        router_logits = self.gate(flat)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        kept = getattr(self, "kept_experts", None)
        if kept is not None:  # the router keeps the rows of removed experts: see the class docstring
            kept = kept.to(device=flat.device, dtype=torch.long)
            routing_weights, router_logits = routing_weights[:, kept], router_logits[:, kept]
        routing_weights, selected = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.norm_topk_prob:
            routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(flat.dtype)

        output = torch.zeros_like(flat)
        # (experts, top_k, tokens): which tokens chose each expert, and in which of their top-k slots
        expert_mask = F.one_hot(selected, num_classes=len(self.experts)).permute(2, 1, 0)
        for index, expert in enumerate(self.experts):
            slot, token = torch.where(expert_mask[index])
            # every expert runs (also on no token), so that each parameter is part of the graph (DDP)
            expert_out = expert(flat[token]) * routing_weights[token, slot, None]
            output.index_add_(0, token, expert_out.to(flat.dtype))
        shared = torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return (output + shared).reshape(batch_size, seq_len, hidden_dim), router_logits


class TimeMoeAttention(nn.Module):
    """Rotary grouped-query self-attention through `torch.nn.functional.scaled_dot_product_attention`.

    Shapes come from the attributes `num_heads`, `num_key_value_heads`, `num_key_value_groups`, `head_dim` and
    `v_head_dim`; the softmax scale is `scaling`, fixed at construction; an optional `rotary_pairs` buffer selects
    pruned rotary pairs (see [`apply_rotary`]). With `output_attentions` the same math runs eagerly and returns the
    attention probabilities.

    Args:
        config ([`TimeMoeConfig`]): the model configuration.
        layer_idx (`int`): index of the layer (its slot in the key/value cache).
    """

    def __init__(self, config: TimeMoeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        if self.head_dim * self.num_heads != config.hidden_size:
            raise ValueError(
                f"hidden_size must be divisible by num_attention_heads (got hidden_size={config.hidden_size} and "
                f"num_attention_heads={self.num_heads})."
            )
        self.v_head_dim = self.head_dim
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.rotary_emb = TimeMoeRotaryEmbedding(self.head_dim, config.max_position_embeddings, config.rope_theta)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention over the new tokens and the cached ones.

        Args:
            hidden_states (`torch.Tensor`): `(batch, seq_len, hidden_size)`.
            position_ids (`torch.LongTensor`): positions of the new tokens, `(batch or 1, seq_len)`.
            attention_mask (`torch.Tensor`, *optional*): `(batch or 1, 1, seq_len, kv_len)`, boolean (True: attend)
                or additive float (a row with every key at `finfo.min` attends uniformly to all keys, as released);
                `None`: causal over the new tokens (no cached ones) or a single new token.
            cache ([`~transformers.Cache`], *optional*): key/value cache, updated in place at `layer_idx`.
            output_attentions (`bool`, *optional*, defaults to `False`): return the attention probabilities.

        Returns:
            `tuple[torch.Tensor, torch.Tensor | None]`: the output `(batch, seq_len, hidden_size)` and the attention
            probabilities (with `output_attentions`).
        """
        batch_size, seq_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch_size, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = (
            self.k_proj(hidden_states)
            .view(batch_size, seq_len, self.num_key_value_heads, self.head_dim)
            .transpose(1, 2)
        )
        value = (
            self.v_proj(hidden_states)
            .view(batch_size, seq_len, self.num_key_value_heads, self.v_head_dim)
            .transpose(1, 2)
        )
        cos, sin = self.rotary_emb(position_ids, query.dtype)
        query, key = apply_rotary(query, key, cos, sin, getattr(self, "rotary_pairs", None), self.num_key_value_groups)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        key = repeat_kv(key, self.num_key_value_groups)
        value = repeat_kv(value, self.num_key_value_groups)
        dropout = self.attention_dropout if self.training else 0.0
        is_causal = attention_mask is None and seq_len > 1
        weights = None
        if output_attentions:
            scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling
            if is_causal:
                attention_mask = torch.ones(seq_len, key.shape[2], dtype=torch.bool, device=query.device).tril()
            if attention_mask is not None and attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            elif attention_mask is not None:
                scores = scores + attention_mask
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
            output = torch.matmul(F.dropout(weights, p=dropout, training=self.training), value)
        else:
            output = fused_attention(query, key, value, attention_mask, dropout, self.scaling, is_causal)
        if attention_mask is not None and attention_mask.is_floating_point():
            # Query rows whose keys are all masked (padding before the first observed point): the released additive
            # mask makes them attend uniformly to every key; kernels differ on such rows (CUDA), so set it here.
            dead = (attention_mask <= torch.finfo(attention_mask.dtype).min).all(dim=-1, keepdim=True)
            output = torch.where(dead, value.mean(dim=-2, keepdim=True), output)
        output = output.transpose(1, 2).reshape(batch_size, seq_len, self.num_heads * self.v_head_dim)
        return self.o_proj(output), weights


class TimeMoeDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm decoder layer: attention, then the feed-forward block (`ffn_layer`), each with a residual.

    Args:
        config ([`TimeMoeConfig`]): the model configuration.
        layer_idx (`int`): index of the layer.
    """

    def __init__(self, config: TimeMoeConfig, layer_idx: int):
        super().__init__()
        self.self_attn = TimeMoeAttention(config, layer_idx)
        if config.use_dense:
            self.ffn_layer = TimeMoeMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        else:
            self.ffn_layer = TimeMoeSparseExpertsLayer(config)
        self.input_layernorm = TimeMoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = TimeMoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the new hidden states, the attention probabilities (or `None`) and the router logits (or `None`)."""
        residual = hidden_states
        hidden_states, weights = self.self_attn(
            self.input_layernorm(hidden_states),
            position_ids,
            attention_mask=attention_mask,
            cache=cache,
            output_attentions=output_attentions,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states, router_logits = self.ffn_layer(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states, weights, router_logits


class TimeMoePreTrainedModel(PreTrainedModel):
    """Base class: configuration class, weight initialisation (also of the rotary tables), loading flags."""

    config_class = TimeMoeConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TimeMoeDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _input_embed_layer = "embed_layer"  # `get_input_embeddings` / `set_input_embeddings`, also through `model`
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, `initializer_range`) Linear weights, zero biases, unit RMS-norm weights; recomputed rotary tables
        (also after `from_pretrained`, which leaves non-persistent buffers uninitialised)."""
        if isinstance(module, TimeMoeRotaryEmbedding):
            module.reset_tables()
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, TimeMoeRMSNorm):
            init.ones_(module.weight)


def _attention_mask(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    seq_len: int,
    past_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """The mask every attention layer applies: `None` (causal without cached tokens, or one new token), a boolean
    causal mask (new tokens after cached ones), or, with padding in the 2-D `attention_mask` (`(batch, kv_len)`, 0 =
    padding), the released code's additive mask: `finfo.min` on future and padded keys."""
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask
    kv_len = past_len + seq_len
    padded = attention_mask is not None and not bool(attention_mask[:, :kv_len].bool().all())
    if not padded:
        if past_len == 0 or seq_len == 1:
            return None
        query_pos = torch.arange(seq_len, device=device)[:, None] + past_len
        return (torch.arange(kv_len, device=device)[None, :] <= query_pos)[None, None]
    query_pos = torch.arange(seq_len, device=device)[:, None] + past_len
    allowed = torch.arange(kv_len, device=device)[None, :] <= query_pos
    neg = torch.finfo(dtype).min
    mask = torch.zeros(seq_len, kv_len, dtype=dtype, device=device).masked_fill(~allowed, neg)
    padding = attention_mask[:, None, None, :kv_len].to(device) == 0
    return mask[None, None].expand(batch_size, 1, seq_len, kv_len).masked_fill(padding, neg)


class TimeMoeModel(TimeMoePreTrainedModel):
    """The Time-MoE decoder: point embedding (`embed_layer`), `num_hidden_layers` decoder layers, final RMS norm.

    Args:
        config ([`TimeMoeConfig`]): the model configuration.
    """

    def __init__(self, config: TimeMoeConfig):
        super().__init__(config)
        self.embed_layer = TimeMoeInputEmbedding(config)
        self.layers = nn.ModuleList([TimeMoeDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = TimeMoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
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
        cache: Cache | None = None,
    ) -> MoeModelOutputWithPast | tuple:
        r"""Runs the decoder.

        Args:
            input_ids (`torch.FloatTensor`, *optional*):
                The series, `(batch, seq_len)` or `(batch, seq_len, input_size)` (not modified).
            attention_mask (`torch.Tensor`, *optional*):
                `(batch, kv_len)`, 1 for observed and 0 for padded time points (past and new ones).
            position_ids (`torch.LongTensor`, *optional*):
                Positions of the new time points; defaults to `cache_position` or to the ones after the cache.
            past_key_values ([`~transformers.Cache`], *optional*):
                Key/value cache of the earlier time points (`cache` is the same argument under its transformers-5
                name).
            inputs_embeds (`torch.FloatTensor`, *optional*):
                Embedded time points instead of `input_ids`, `(batch, seq_len, hidden_size)`.
            use_cache (`bool`, *optional*):
                Return the (new or updated) cache; defaults to `config.use_cache`.
            output_attentions (`bool`, *optional*):
                Return every layer's attention probabilities.
            output_hidden_states (`bool`, *optional*):
                Return the hidden states before every layer and after the final norm.
            return_dict (`bool`, *optional*):
                Return a [`~transformers.modeling_outputs.MoeModelOutputWithPast`] (default) rather than a tuple.
            cache_position (`torch.LongTensor`, *optional*):
                Positions of the new time points in the cache.
            cache ([`~transformers.Cache`], *optional*):
                Alias of `past_key_values`.

        Returns:
            [`~transformers.modeling_outputs.MoeModelOutputWithPast`] or `tuple`: the normed last hidden states, the
            cache, the optional hidden states and attentions, and the router logits of every layer (`None` for a
            dense layer).
        """
        if cache is not None and past_key_values is not None:
            raise ValueError("Pass the key/value cache as `past_key_values` or as `cache`, not both.")
        cache = cache if cache is not None else past_key_values
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            if input_ids.dim() == 2:
                input_ids = input_ids.unsqueeze(-1)
            inputs_embeds = self.embed_layer(input_ids)
        batch_size, seq_len, _ = inputs_embeds.shape
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if not use_cache:
            cache = None
        elif cache is None:
            cache = DynamicCache()
        past_len = cache.get_seq_length() if cache is not None else 0

        if position_ids is None:
            if cache_position is None:
                cache_position = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device)
                max_position = past_len + seq_len - 1
            else:
                max_position = int(cache_position.max())
            position_ids = cache_position.view(1, -1)
        else:
            position_ids = position_ids.view(-1, seq_len).long()
            max_position = int(position_ids.max())
        for layer in self.layers:
            rotary = getattr(getattr(layer, "self_attn", None), "rotary_emb", None)
            if rotary is not None:
                rotary.extend(max_position + 1)
        mask = _attention_mask(
            attention_mask, batch_size, seq_len, past_len, inputs_embeds.dtype, inputs_embeds.device
        )

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_router_logits = ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights, router_logits = layer(
                hidden_states, position_ids, attention_mask=mask, cache=cache, output_attentions=output_attentions
            )
            all_router_logits += (router_logits,)
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = _output(
            MoeModelOutputWithPast,
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            router_logits=all_router_logits,
        )
        return output if return_dict else output.to_tuple()


class TimeMoeOutputLayer(nn.Module):
    """One forecast head: `out_layer`, a bias-free `Linear(hidden_size, input_size * horizon_length)`.

    Args:
        hidden_size (`int`): input width.
        horizon_length (`int`): time points predicted.
        input_size (`int`, *optional*, defaults to 1): values per time point.
    """

    def __init__(self, hidden_size: int, horizon_length: int, input_size: int = 1):
        super().__init__()
        self.out_layer = nn.Linear(hidden_size, input_size * horizon_length, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out_layer(hidden_states)


def load_balancing_loss(
    router_logits: tuple[torch.Tensor | None, ...] | list[torch.Tensor | None] | None,
    top_k: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Switch-Transformer load-balancing loss over the routers of all layers (pooled, as released).

    `num_experts * sum_e f_e * P_e`, with `f_e` the share of (unpadded) routing slots that chose expert `e` and `P_e`
    its mean router probability, both taken over every layer's time points. Layers with fewer experts (after expert
    removal) count as having zero-probability experts up to the largest count.

    Args:
        router_logits (`tuple[torch.Tensor | None, ...]`): per layer `(batch * seq_len, experts)` or `None` (dense).
        top_k (`int`): experts per time point.
        attention_mask (`torch.Tensor`, *optional*): `(batch, seq_len)`, 0 for padded time points.

    Returns:
        `torch.Tensor` or `None`: the loss (`None` without any router).
    """
    logits = [layer for layer in (router_logits or ()) if layer is not None]
    if not logits:
        return None
    device = logits[0].device
    num_experts = max(layer.shape[-1] for layer in logits)
    logits = [F.pad(layer.to(device), (0, num_experts - layer.shape[-1]), value=float("-inf")) for layer in logits]
    routing_weights = F.softmax(torch.cat(logits, dim=0), dim=-1)
    _, selected = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = F.one_hot(selected, num_experts).float()  # (layers * tokens, top_k, experts)
    if attention_mask is None:
        tokens_per_expert = expert_mask.mean(dim=0)
        router_prob_per_expert = routing_weights.mean(dim=0)
    else:
        token_mask = attention_mask.reshape(-1).to(device=device, dtype=routing_weights.dtype).repeat(len(logits))
        tokens_per_expert = (expert_mask * token_mask[:, None, None]).sum(dim=0) / token_mask.sum()
        router_prob_per_expert = (routing_weights * token_mask[:, None]).sum(dim=0) / token_mask.sum()
    return (tokens_per_expert * router_prob_per_expert.unsqueeze(0)).sum() * num_experts


class TimeMoeForPrediction(TimeMoePreTrainedModel):
    """Time-MoE with its forecast heads, multi-horizon training loss and autoregressive `generate`.

    The attributes `apply_aux_loss` and `router_aux_loss_factor` (from the configuration) set whether and how much the
    routers' load-balancing loss adds to the training loss; training code may change them.

    Args:
        config ([`TimeMoeConfig`]): the model configuration.
    """

    def __init__(self, config: TimeMoeConfig):
        super().__init__(config)
        self.apply_aux_loss = config.apply_aux_loss
        self.num_experts_per_tok = config.num_experts_per_tok
        self.router_aux_loss_factor = config.router_aux_loss_factor
        self.model = TimeMoeModel(config)
        self.lm_heads = nn.ModuleList(
            [TimeMoeOutputLayer(config.hidden_size, h, config.input_size) for h in config.horizon_lengths]
        )
        self.horizon_length_map = {h: i for i, h in enumerate(config.horizon_lengths)}
        self.huber_loss = nn.HuberLoss(reduction="none", delta=2.0)
        self.post_init()

    def get_decoder(self) -> TimeMoeModel:
        return self.model

    def set_decoder(self, decoder: TimeMoeModel) -> None:
        self.model = decoder

    def forward(
        self,
        input_ids: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.FloatTensor | None = None,
        loss_masks: torch.FloatTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        max_horizon_length: int | None = None,
        return_dict: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        cache: Cache | None = None,
    ) -> MoeCausalLMOutputWithPast | tuple:
        r"""Forecasts from every time point, and the training loss when `labels` are given.

        Args:
            input_ids (`torch.FloatTensor`, *optional*):
                The series, `(batch, seq_len)` or `(batch, seq_len, input_size)` (not modified).
            attention_mask (`torch.Tensor`, *optional*):
                `(batch, seq_len)`, 0 for padded time points (masked as keys, and out of the load-balancing loss).
            labels (`torch.FloatTensor`, *optional*):
                Targets aligned with the inputs, `(batch, seq_len)` or `(batch, seq_len, input_size)`: `labels[:, t]`
                is the point after input `t`; the head of horizon `h` at `t` is scored on `labels[:, t : t + h]`
                (zero beyond the end, as released).
            loss_masks (`torch.FloatTensor`, *optional*):
                Same shape as `labels`, 1 where a target counts (positions beyond the end never count).
            past_key_values ([`~transformers.Cache`], *optional*):
                Key/value cache of the earlier time points (`cache` is its transformers-5 name).
            use_cache (`bool`, *optional*):
                Return the cache; defaults to `config.use_cache`.
            max_horizon_length (`int`, *optional*):
                Without `labels`: the forecast length wanted; the largest native horizon not beyond it is used (the
                first one, cut to this length, when all are longer). Default: the first horizon.
            return_dict (`bool`, *optional*):
                Return a [`~transformers.modeling_outputs.MoeCausalLMOutputWithPast`] (default) rather than a tuple.
            position_ids (`torch.LongTensor`, *optional*):
                Positions of the new time points.
            inputs_embeds (`torch.FloatTensor`, *optional*):
                Embedded time points instead of `input_ids`.
            output_attentions (`bool`, *optional*):
                Return every layer's attention probabilities.
            output_hidden_states (`bool`, *optional*):
                Return the hidden states.
            cache_position (`torch.LongTensor`, *optional*):
                Positions of the new time points in the cache.
            cache ([`~transformers.Cache`], *optional*):
                Alias of `past_key_values`.

        Returns:
            [`~transformers.modeling_outputs.MoeCausalLMOutputWithPast`] or `tuple`: `loss` (with `labels`: the mean
            Huber loss over the horizons plus `router_aux_loss_factor * aux_loss` when `apply_aux_loss`), `aux_loss`
            (the load-balancing loss, when added), `logits` (the forecasts of every time point, `(batch, seq_len,
            input_size * horizon)`: the first head's with `labels`), `cache`, `hidden_states`, `attentions`,
            `router_logits`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
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
            cache=cache,
        )
        hidden_states = outputs.last_hidden_state
        loss = aux_loss = predictions = None
        if labels is not None:
            ar_loss = 0.0
            for head, horizon in zip(self.lm_heads, self.config.horizon_lengths):
                head_predictions = head(hidden_states)
                ar_loss = ar_loss + self._horizon_loss(head_predictions, labels, loss_masks, horizon)
                if predictions is None:
                    predictions = head_predictions
            loss = ar_loss / len(self.config.horizon_lengths)
            if self.apply_aux_loss:
                aux_loss = load_balancing_loss(outputs.router_logits, self.num_experts_per_tok, attention_mask)
                if aux_loss is not None:
                    loss = loss + self.router_aux_loss_factor * aux_loss.to(loss.device)
        else:
            horizon = self.config.horizon_lengths[0]
            if max_horizon_length is None:
                max_horizon_length = horizon
            else:
                for candidate in self.config.horizon_lengths[1:]:
                    if candidate > max_horizon_length:
                        break
                    horizon = candidate
            predictions = self.lm_heads[self.horizon_length_map[horizon]](hidden_states)
            if horizon > max_horizon_length:
                predictions = predictions[:, :, : self.config.input_size * max_horizon_length]

        output = _output(
            MoeCausalLMOutputWithPast,
            loss=loss,
            aux_loss=aux_loss,
            logits=predictions,
            cache=_output_cache(outputs),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
        )
        return output if return_dict else output.to_tuple()

    def _horizon_loss(
        self,
        predictions: torch.Tensor,
        labels: torch.Tensor,
        loss_masks: torch.Tensor | None,
        horizon_length: int,
    ) -> torch.Tensor:
        """Huber loss of one head: at every time point its `horizon_length` predictions against the next targets."""
        labels = labels.to(predictions.device)
        if labels.dim() == 2:
            labels = labels.unsqueeze(-1)
        if loss_masks is not None:
            loss_masks = loss_masks.to(predictions.device)
            if loss_masks.dim() == 2:
                loss_masks = loss_masks.unsqueeze(-1)
        if horizon_length > 1:
            batch_size, seq_len, _ = predictions.shape
            predictions = predictions.view(batch_size, seq_len, horizon_length, -1)
            # (batch, seq_len, channels) -> (batch, seq_len, horizon, channels): targets t .. t + h - 1, zero-padded
            labels = F.pad(labels.transpose(-1, -2), (0, horizon_length - 1), value=0.0)
            labels = labels.unfold(-1, horizon_length, 1).permute(0, 2, 3, 1)
            if loss_masks is not None:
                loss_masks = F.pad(loss_masks.transpose(-1, -2), (0, horizon_length - 1), value=0.0)
                loss_masks = loss_masks.unfold(-1, horizon_length, 1).permute(0, 2, 3, 1)
        losses = self.huber_loss(predictions, labels)
        if loss_masks is None:
            return losses.mean()
        return (losses * loss_masks).sum() / loss_masks.sum()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.FloatTensor,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> torch.FloatTensor:
        r"""Autoregressive forecast, as the released `generate`: each step appends the forecast of the last time point
        with the largest native horizon not beyond the remaining length (the first horizon, cut, when all are
        longer), until `max_length` points; with `use_cache`, each step feeds only the new points.

        Args:
            input_ids (`torch.FloatTensor`):
                The context, `(batch, seq_len)` or `(batch, seq_len, input_size)` (not modified).
            max_new_tokens (`int`, *optional*):
                Time points to forecast.
            max_length (`int`, *optional*):
                Total length (context plus forecast) instead of `max_new_tokens`.
            attention_mask (`torch.Tensor`, *optional*):
                `(batch, seq_len)`, 0 for padded context points (positions count observed points, as released).
            use_cache (`bool`, *optional*, defaults to `True`):
                Reuse the key/value cache between steps (otherwise every step recomputes the whole sequence).

        Returns:
            `torch.FloatTensor`: context and forecast, `(batch, max_length)` (or `(batch, max_length, input_size)`
            when `input_size > 1`).
        """
        if (max_new_tokens is None) == (max_length is None):
            raise ValueError("Pass exactly one of `max_new_tokens` and `max_length`.")
        sequence = input_ids.to(self.device)
        if sequence.dim() == 2:
            sequence = sequence.unsqueeze(-1)
        batch_size, context_len, channels = sequence.shape
        max_length = max_length if max_length is not None else context_len + max_new_tokens
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        cache = None
        new_points = sequence
        while sequence.shape[1] < max_length:
            step_input = new_points if cache is not None else sequence
            position_ids = None
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
                position_ids = position_ids[:, -step_input.shape[1] :]
            outputs = self(
                input_ids=step_input,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=use_cache,
                max_horizon_length=max_length - sequence.shape[1],
                return_dict=True,
            )
            cache = _output_cache(outputs) if use_cache else None
            new_points = outputs.logits[:, -1, :].reshape(batch_size, -1, channels)
            sequence = torch.cat([sequence, new_points], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat(
                    [attention_mask, attention_mask.new_ones(batch_size, new_points.shape[1])], 1
                )
        sequence = sequence[:, :max_length]
        return sequence.squeeze(-1) if channels == 1 else sequence


AutoConfig.register("time_moe", TimeMoeConfig, exist_ok=True)
AutoModel.register(TimeMoeConfig, TimeMoeModel, exist_ok=True)
AutoModelForCausalLM.register(TimeMoeConfig, TimeMoeForPrediction, exist_ok=True)
