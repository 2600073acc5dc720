# Modeling of hf_tsprune pruned checkpoints, for `trust_remote_code=True` loading with transformers alone.
#
# This file is written beside the weights by hf_tsprune and imports nothing but torch and transformers (and, where
# installed, the packages of the Chronos-Bolt and TTM model classes): a pruned checkpoint loads without hf_tsprune. Inside hf_tsprune the same classes are registered with the
# transformers Auto classes, so `import hf_tsprune` is enough to load it.
"""Pruned time-series models: the base transformers model, built with the per-layer sizes its configuration records.

Each class subclasses the base model class and, after building it, gives every block named in
`config.hf_tsprune_layout` its pruned sizes:

- feed-forward block `{"kind": "mlp", "width": w}`: the producer Linears get `w` output features and the consumer
  Linear `w` input features (`w` may be 0: the block then outputs its consumer's bias);
- attention block `{"kind": "attention", "num_kv_heads": h, "v_head_dim": d}`: `h` key/value heads (with the query
  heads that share them) of value head dimension `d`; where `d` differs from the query/key head dimension, the module
  gets an attention forward that views values with `d`. With `h == 0` the block is replaced by `EmptyAttention`, its
  exact constant output (the output projection's bias);
- T5 attention (Chronos, Chronos-Bolt) also lists `kept_heads`, the original indices of its heads: every such block
  gets a forward that selects them from the position bias its stack shares (computed over the original heads) and a
  `hf_tsprune_kept_heads` buffer; with `h == 0` it stays in place with zero-width projections.

The weights are those of the checkpoint; nothing here prunes anything. The block tables below mirror hf_tsprune's
architecture specs (`hf_tsprune/architectures/*.py`).
"""

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    PatchTSMixerForPrediction,
    PatchTSTForPrediction,
    T5ForConditionalGeneration,
    TimesFm2_5ModelForPrediction,
    TimesFmModelForPrediction,
)
from transformers.models.t5 import modeling_t5

try:  # optional families: their model classes live in their own packages
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
except ImportError:  # pragma: no cover
    ChronosBoltModelForForecasting = None
try:
    from tsfm_public import TinyTimeMixerForPrediction
except ImportError:  # pragma: no cover
    TinyTimeMixerForPrediction = None
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.timesfm import modeling_timesfm
from transformers.models.timesfm2_5 import modeling_timesfm2_5

from .configuration_hf_tsprune import (
    PRUNED_CONFIG_CLASSES,
    PrunedChronosBoltConfig,
    PrunedChronosConfig,
    PrunedPatchTSMixerConfig,
    PrunedPatchTSTConfig,
    PrunedTimesFm2_5Config,
    PrunedTimesFmConfig,
)


class EmptyAttention(nn.Module):
    """Exact stand-in for an attention block whose heads were all pruned: it returns the output projection's bias.

    Args:
        out_features (`int`): width of the attention output (the model width).
        bias (`torch.Tensor`, *optional*): the output projection's bias; `None` gives zeros.
        num_outputs (`int`, *optional*, defaults to 2): length of the returned tuple, as the replaced block's
            `forward` returns it (the output first, then `None`s).
    """

    def __init__(self, out_features: int, bias: torch.Tensor | None = None, num_outputs: int = 2):
        super().__init__()
        self.out_features = out_features
        self.num_outputs = num_outputs
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple:
        out = hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)
        if self.bias is not None:
            out = out + self.bias
        return (out,) + (None,) * (self.num_outputs - 1)


def timesfm_attention_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
    """`TimesFmAttention.forward` with values viewed with `self.v_head_dim`."""
    input_shape = hidden_states.shape[:-1]
    query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    query_states = self._scale_query(query_states)
    key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_timesfm.simple_eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=1.0,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def timesfm2_5_attention_forward(
    self,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    cache=None,
    **kwargs,
):
    """`TimesFm2_5Attention.forward` with values viewed with `self.v_head_dim`."""
    input_shape = hidden_states.shape[:-1]
    query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    query_states, key_states = modeling_timesfm2_5.apply_rotary_pos_emb(query_states, key_states, cos, sin)
    query_states = self.q_norm(query_states)
    key_states = self.k_norm(key_states)
    scale = F.softplus(self.scaling).mul(1.442695041 / math.sqrt(self.head_dim))
    query_states = query_states * scale[None, None, None, :]
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_timesfm2_5.eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=self.attention_dropout if self.training else 0.0,
        scaling=1.0,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def t5_attention_forward(
    self,
    hidden_states: torch.Tensor,
    mask: torch.Tensor | None = None,
    key_value_states: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    cache=None,
    **kwargs,
):
    """`T5Attention.forward` for a shrunk block: `self.n_heads` kept heads, values viewed with `self.v_head_dim`, the
    shared position bias (over the original heads) indexed with `self.hf_tsprune_kept_heads`, and no head at all
    supported (the block then adds nothing; its key/value cache still advances). Returns the bias it was given (or
    computed) unsliced, for the next layers."""
    kwargs.pop("past_key_values", None)
    input_shape = hidden_states.shape[:-1]
    heads = self.n_heads
    past_seen_tokens = cache.get_seq_length(self.layer_idx) if cache is not None else 0
    past_seen_tokens = past_seen_tokens.clone() if isinstance(past_seen_tokens, torch.Tensor) else past_seen_tokens
    is_cross_attention = key_value_states is not None
    query_states = self.q(hidden_states).view(*input_shape, heads, self.key_value_proj_dim).transpose(1, 2)
    is_updated = False
    if isinstance(cache, modeling_t5.EncoderDecoderCache):
        is_updated = cache.is_updated.get(self.layer_idx)
        curr_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
    else:
        curr_cache = cache
    current_states = key_value_states if is_cross_attention else hidden_states
    if is_cross_attention and cache is not None and is_updated:
        key_states = curr_cache.layers[self.layer_idx].keys
        value_states = curr_cache.layers[self.layer_idx].values
    else:
        kv_shape = current_states.shape[:-1]
        key_states = self.k(current_states).view(*kv_shape, heads, self.key_value_proj_dim).transpose(1, 2)
        value_states = self.v(current_states).view(*kv_shape, heads, self.v_head_dim).transpose(1, 2)
        if cache is not None:
            key_states, value_states = curr_cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
            if is_cross_attention and isinstance(cache, modeling_t5.EncoderDecoderCache):
                cache.is_updated[self.layer_idx] = True
    if position_bias is None:
        key_length = key_states.shape[-2]
        if self.has_relative_attention_bias:  # over all original heads: the embedding is never sliced
            position_bias = self.compute_bias(
                input_shape[1], key_length, device=query_states.device, past_seen_tokens=past_seen_tokens
            )
        else:  # zeros broadcast over any head set
            position_bias = torch.zeros(
                (1, 1, input_shape[1], key_length), device=query_states.device, dtype=query_states.dtype
            )
            if self.gradient_checkpointing and self.training:
                position_bias.requires_grad = True
    if heads == 0:
        attn_output = hidden_states.new_zeros(*input_shape, 0)
        return self.o(attn_output), position_bias, None
    kept = getattr(self, "hf_tsprune_kept_heads", None)
    layer_bias = position_bias
    if kept is not None and position_bias.shape[1] != 1:
        layer_bias = position_bias.index_select(1, kept.to(position_bias.device))
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_t5.eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        mask,
        dropout=0.0 if not self.training else self.dropout,
        scaling=self.scaling,
        position_bias=layer_bias,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, heads * self.v_head_dim).contiguous()
    return self.o(attn_output), position_bias, attn_weights


def _attention(pattern: str, o: str = "o_proj", **kwargs) -> dict:
    entry = {
        "kind": "attention",
        "pattern": pattern,
        "q": "q_proj",
        "k": "k_proj",
        "v": "v_proj",
        "o": o,
        "head_dim_attr": "head_dim",
        "num_heads_attrs": (),
        "num_kv_heads_attrs": (),
        "size_attrs": {},
        "kv_groups_attr": None,
        "v_head_dim_forward": None,
        "kept_heads_attr": None,
        "module_classes": (),
        "num_outputs": 2,
    }
    entry.update(kwargs)
    return entry


def _mlp(
    pattern: str,
    producers: tuple[str, ...],
    consumer: str,
    width_attrs: tuple[str, ...] = (),
    module_classes: tuple[str, ...] = (),
) -> dict:
    return {
        "kind": "mlp",
        "pattern": pattern,
        "producers": producers,
        "consumer": consumer,
        "width_attrs": width_attrs,
        "module_classes": module_classes,
    }


def _t5_blocks() -> tuple[dict, ...]:
    stacks = r"(encoder|decoder)\.block\.\d+\.layer"
    attention = dict(
        q="q", k="k", v="v", head_dim_attr="key_value_proj_dim", num_heads_attrs=("n_heads",),
        size_attrs={"inner_dim": "q"}, v_head_dim_forward=t5_attention_forward, kept_heads_attr="hf_tsprune_kept_heads",
    )  # fmt: skip
    return (
        _attention(rf"{stacks}\.0\.SelfAttention", o="o", **attention),
        _attention(r"decoder\.block\.\d+\.layer\.1\.EncDecAttention", o="o", **attention),
        _mlp(rf"{stacks}\.\d+\.DenseReluDense", ("wi",), "wo", module_classes=("T5DenseActDense",)),
        _mlp(rf"{stacks}\.\d+\.DenseReluDense", ("wi_0", "wi_1"), "wo", module_classes=("T5DenseGatedActDense",)),
    )


# Per base `model_type`: the blocks a layout may resize (mirrors hf_tsprune's architecture specs).
BLOCKS = {
    "timesfm": (
        _attention(
            r"decoder\.layers\.\d+\.self_attn",
            num_heads_attrs=("num_heads",),
            size_attrs={"q_size": "q", "kv_size": "kv"},
            v_head_dim_forward=timesfm_attention_forward,
        ),
        _mlp(r"decoder\.layers\.\d+\.mlp", ("gate_proj",), "down_proj"),
        _mlp(r"decoder\.input_ff_layer|horizon_ff_layer", ("input_layer",), "output_layer", ("hidden_dims",)),
    ),
    "timesfm2_5": (
        _attention(
            r"model\.layers\.\d+\.self_attn",
            kv_groups_attr="num_key_value_groups",
            v_head_dim_forward=timesfm2_5_attention_forward,
        ),
        _mlp(r"model\.layers\.\d+\.mlp", ("fc1",), "fc2"),
        _mlp(
            r"model\.input_ff_layer|output_projection_point|output_projection_quantiles",
            ("input_layer",),
            "output_layer",
            ("hidden_dims",),
        ),
    ),
    "patchtst": (
        _attention(r"model\.encoder\.layers\.\d+\.self_attn", o="out_proj", num_heads_attrs=("num_heads",)),
        _mlp(r"model\.encoder\.layers\.\d+\.ff", ("0",), "3"),
    ),
    "patchtsmixer": (
        _attention(r".*\.patch_mixer\.self_attn_layer", o="out_proj", num_heads_attrs=("num_heads",)),
        _mlp(r".*\.(patch_mixer|feature_mixer|channel_feature_mixer)\.mlp", ("fc1",), "fc2"),
    ),
    "chronos": _t5_blocks(),
    "chronos_bolt": _t5_blocks()
    + (_mlp(r"input_patch_embedding|output_patch_embedding", ("hidden_layer",), "output_layer"),),
    "tinytimemixer": (
        _attention(
            r".*\.patch_mixer\.self_attn_layer",
            o="out_proj",
            num_heads_attrs=("num_heads",),
            size_attrs={"embed_dim": "o"},
            num_outputs=3,
        ),
        _mlp(
            r".*\.(patch_mixer|feature_mixer|channel_feature_mixer)\.mlp",
            ("fc1",),
            "fc2",
            module_classes=("TinyTimeMixerMLP",),
        ),
    ),
}


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def _resize_linear(block: nn.Module, path: str, in_features: int | None = None, out_features: int | None = None):
    """Replaces the Linear at `path` by one with the given sizes (same device, dtype, bias; placeholder weights)."""
    layer = block.get_submodule(path)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{path} is a {type(layer).__name__}, not an nn.Linear: the layout does not fit this model.")
    in_features = layer.in_features if in_features is None else int(in_features)
    out_features = layer.out_features if out_features is None else int(out_features)
    if (in_features, out_features) == (layer.in_features, layer.out_features):
        return
    new = nn.Linear(
        in_features,
        out_features,
        bias=layer.bias is not None,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    new.weight.requires_grad_(layer.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    _set_submodule(block, path, new)


_V_HEAD_DIM_CLASSES: dict[type, type] = {}


def _with_v_head_dim(module: nn.Module, forward: Callable) -> None:
    cls = type(module)
    if getattr(cls, "_hf_tsprune_v_head_dim", False):
        return
    if cls not in _V_HEAD_DIM_CLASSES:
        _V_HEAD_DIM_CLASSES[cls] = type(cls.__name__, (cls,), {"forward": forward, "_hf_tsprune_v_head_dim": True})
    module.__class__ = _V_HEAD_DIM_CLASSES[cls]


def _find_block(blocks: tuple[dict, ...], name: str, module: nn.Module) -> dict:
    classes = {cls.__name__ for cls in type(module).__mro__}
    for entry in blocks:
        if re.fullmatch(entry["pattern"], name) and (
            not entry["module_classes"] or classes & set(entry["module_classes"])
        ):
            return entry
    raise ValueError(f"The pruned layout names block {name!r}, which this architecture cannot resize.")


def apply_pruned_layout(model: nn.Module, layout: dict, base_model_type: str) -> nn.Module:
    """Gives a freshly built base model the per-layer sizes of a pruned layout, in place (placeholder weights).

    Works on any device, `meta` included (transformers builds models there before loading weights).

    Args:
        model (`nn.Module`): the freshly built base model.
        layout (`dict`): `config.hf_tsprune_layout`: block module name -> sizes.
        base_model_type (`str`): the base architecture's `model_type` (a key of `BLOCKS`).

    Returns:
        The model.
    """
    if base_model_type not in BLOCKS:
        raise ValueError(f"No pruned layout support for model type {base_model_type!r}; known: {sorted(BLOCKS)}.")
    blocks = BLOCKS[base_model_type]
    modules = dict(model.named_modules())
    for name, sizes in layout.items():
        if name not in modules:
            raise ValueError(
                f"The pruned layout names block {name!r}, which this {type(model).__name__} does not have: the "
                "checkpoint's layout does not match its base config."
            )
        block, entry = modules[name], _find_block(blocks, name, modules[name])
        if sizes["kind"] != entry["kind"]:
            raise ValueError(f"The pruned layout says {name!r} is a {sizes['kind']} block; it is a {entry['kind']}.")
        if entry["kind"] == "mlp":
            width = int(sizes["width"])
            for path in entry["producers"]:
                _resize_linear(block, path, out_features=width)
            _resize_linear(block, entry["consumer"], in_features=width)
            for attr in entry["width_attrs"]:
                setattr(block, attr, width)
            continue
        heads, v_head_dim = int(sizes["num_kv_heads"]), int(sizes["v_head_dim"])
        o = block.get_submodule(entry["o"])
        if heads == 0 and not entry["kept_heads_attr"]:
            bias = None if o.bias is None else torch.zeros_like(o.bias)
            _set_submodule(model, name, EmptyAttention(o.out_features, bias, entry["num_outputs"]))
            continue
        qk_dim = int(getattr(block, entry["head_dim_attr"]))
        groups = int(getattr(block, entry["kv_groups_attr"])) if entry["kv_groups_attr"] else 1
        sizes_by_kind = {"q": heads * groups * qk_dim, "kv": heads * qk_dim, "o": heads * groups * v_head_dim}
        _resize_linear(block, entry["q"], out_features=sizes_by_kind["q"])
        _resize_linear(block, entry["k"], out_features=sizes_by_kind["kv"])
        _resize_linear(block, entry["v"], out_features=heads * v_head_dim)
        _resize_linear(block, entry["o"], in_features=sizes_by_kind["o"])
        for attr in entry["num_heads_attrs"]:
            setattr(block, attr, heads * groups)
        for attr in entry["num_kv_heads_attrs"]:
            setattr(block, attr, heads)
        for attr, which in entry["size_attrs"].items():
            setattr(block, attr, sizes_by_kind[which])
        if entry["kept_heads_attr"]:  # per-layer heads of a tensor shared across layers (T5's position bias)
            kept = torch.as_tensor(sizes["kept_heads"], dtype=torch.long)
            query_heads = (kept[:, None] * groups + torch.arange(groups)).flatten()
            # persistent: on the meta device (from_pretrained) its values come from the checkpoint
            block.register_buffer(entry["kept_heads_attr"], query_heads.to(o.weight.device))
            block.v_head_dim = v_head_dim
            _with_v_head_dim(block, entry["v_head_dim_forward"])
        elif v_head_dim != qk_dim:
            if entry["v_head_dim_forward"] is None:
                raise ValueError(f"{name}: this architecture keeps the value head dimension; the layout changes it.")
            block.v_head_dim = v_head_dim
            _with_v_head_dim(block, entry["v_head_dim_forward"])
    return model


class _PrunedModelMixin:
    """Builds the base model, then applies `config.hf_tsprune_layout` (listed first in each class' bases)."""

    _auto_class = "AutoModelForTimeSeriesPrediction"

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_pruned_layout(self, config.hf_tsprune_layout or {}, config.base_model_type)
        self.post_init()  # initialises the resized layers (no-op where from_pretrained loads them) and tied keys


class PrunedTimesFmModelForPrediction(_PrunedModelMixin, TimesFmModelForPrediction):
    """[`TimesFmModelForPrediction`] with the per-layer sizes of [`PrunedTimesFmConfig`]."""

    config_class = PrunedTimesFmConfig


class PrunedTimesFm2_5ModelForPrediction(_PrunedModelMixin, TimesFm2_5ModelForPrediction):
    """[`TimesFm2_5ModelForPrediction`] with the per-layer sizes of [`PrunedTimesFm2_5Config`]."""

    config_class = PrunedTimesFm2_5Config


class PrunedPatchTSTForPrediction(_PrunedModelMixin, PatchTSTForPrediction):
    """[`PatchTSTForPrediction`] with the per-layer sizes of [`PrunedPatchTSTConfig`]."""

    config_class = PrunedPatchTSTConfig


class PrunedPatchTSMixerForPrediction(_PrunedModelMixin, PatchTSMixerForPrediction):
    """[`PatchTSMixerForPrediction`] with the per-layer sizes of [`PrunedPatchTSMixerConfig`]."""

    config_class = PrunedPatchTSMixerConfig


class PrunedChronosForConditionalGeneration(_PrunedModelMixin, T5ForConditionalGeneration):
    """Chronos' [`T5ForConditionalGeneration`] with the per-layer sizes of [`PrunedChronosConfig`]."""

    config_class = PrunedChronosConfig


_MODELS = [
    PrunedTimesFmModelForPrediction,
    PrunedTimesFm2_5ModelForPrediction,
    PrunedPatchTSTForPrediction,
    PrunedPatchTSMixerForPrediction,
    PrunedChronosForConditionalGeneration,
]

if ChronosBoltModelForForecasting is not None:

    class PrunedChronosBoltModelForForecasting(_PrunedModelMixin, ChronosBoltModelForForecasting):
        """`chronos`' `ChronosBoltModelForForecasting` with the per-layer sizes of [`PrunedChronosBoltConfig`]."""

        config_class = PrunedChronosBoltConfig

    _MODELS.append(PrunedChronosBoltModelForForecasting)

if TinyTimeMixerForPrediction is not None and "tinytimemixer" in PRUNED_CONFIG_CLASSES:

    class PrunedTinyTimeMixerForPrediction(_PrunedModelMixin, TinyTimeMixerForPrediction):
        """granite-tsfm's `TinyTimeMixerForPrediction` with the per-layer sizes of `PrunedTinyTimeMixerConfig`."""

        config_class = PRUNED_CONFIG_CLASSES["tinytimemixer"]

    _MODELS.append(PrunedTinyTimeMixerForPrediction)

PRUNED_MODEL_CLASSES = {cls.config_class.base_model_type: cls for cls in _MODELS}
