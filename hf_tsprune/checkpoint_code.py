# Load-time code of hf_tsprune pruned checkpoints.
#
# hf_tsprune imports this module, and writes it unchanged beside the weights of every pruned checkpoint (as
# `hf_tsprune_checkpoint.py`, next to the two small generated files `configuration_hf_tsprune.py` and
# `modeling_hf_tsprune.py` that build the family's classes with it), so that a checkpoint loads with transformers alone
# and `trust_remote_code=True`. It imports nothing but the standard library and torch: there is one copy of this code.
"""What a pruned checkpoint needs at load time: its layout applied to a freshly built base model.

A pruned model is its base architecture with some blocks narrower than the base configuration says. Its
configuration records:

- `hf_tsprune_layout`: per pruned block (module name), its sizes: `{"kind": "mlp", "width": w}` for a feed-forward
  block, `{"kind": "attention", "num_kv_heads": h, "v_head_dim": d}` for an attention block (the query heads follow as
  `h` times the query heads per key/value head; `h == 0`: the block was replaced by its constant output); attention
  that reads a tensor shared across layers (T5's position bias) also lists `kept_heads`, its original head indices;
  attention with pruned rotary query/key pairs lists `rotary_pairs`, per key/value head the original indices of its
  kept pairs (the query/key head dimension is twice their count);
- `hf_tsprune_blocks`: the family's prunable block kinds, written from hf_tsprune's registered family at save time
  (each the fields of its `MLPGroup` / `AttentionGroup`, with the attention forward by function name);
- `base_model` / `base_model_revision` / `pruning`: provenance and figures.

The pruned classes are the base classes plus one mixin each ([`make_pruned_config_class`],
[`make_pruned_model_class`]): the model builds the base model, then [`apply_pruned_layout`] gives every block in the
layout its sizes (placeholder weights, on any device, `meta` included), and the checkpoint's weights load into it.
Each pruned configuration has its own `model_type` (`hf_tsprune_<family>`), so transformers neither mistakes a pruned
checkpoint for a dense one nor applies the base model's checkpoint weight renamings to it.
"""

import re
from collections.abc import Callable, Mapping

import torch
from torch import nn

MODEL_TYPE_PREFIX = "hf_tsprune_"
LAYOUT_ATTR = "hf_tsprune_layout"
BLOCKS_ATTR = "hf_tsprune_blocks"
KEPT_HEADS = "hf_tsprune_kept_heads"
"""Buffer of a shrunk attention block whose heads index a tensor shared across layers: its original query heads."""

CHECKPOINT_MODULE = "hf_tsprune_checkpoint"
CONFIG_MODULE = "configuration_hf_tsprune"
MODEL_MODULE = "modeling_hf_tsprune"


class EmptyAttention(nn.Module):
    """Exact stand-in for an attention block whose heads were all pruned: it returns the output projection's bias.

    Args:
        out_features (`int`): width of the attention output (the model width).
        bias (`torch.Tensor`, *optional*): the output projection's bias; `None` gives zeros.
        num_outputs (`int`, *optional*, defaults to 2): length of the returned tuple, as the replaced block's
            `forward` returns it (the output first, then `None`s).
    """

    hf_tsprune_empty = True  # nothing prunable left: hf_tsprune skips it when the model is pruned again

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


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replaces the submodule of `root` at the dotted `path` by `new`."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def empty_attention(o_proj: nn.Linear, num_outputs: int) -> EmptyAttention:
    """The `EmptyAttention` of an attention block with output projection `o_proj`."""
    return EmptyAttention(o_proj.out_features, o_proj.bias, num_outputs)


_FORWARD_CLASSES: dict[tuple[type, Callable], type] = {}


def use_forward(module: nn.Module, forward: Callable) -> None:
    """Gives `module` the attention `forward` of a shrunk block (one subclass per class and forward, made once)."""
    cls = type(module)
    if getattr(cls, "_hf_tsprune_forward", None) is forward:
        return
    base = getattr(cls, "_hf_tsprune_base_class", cls)
    if (base, forward) not in _FORWARD_CLASSES:
        attrs = {"forward": forward, "_hf_tsprune_forward": forward, "_hf_tsprune_base_class": base}
        _FORWARD_CLASSES[base, forward] = type(base.__name__, (base,), attrs)
    module.__class__ = _FORWARD_CLASSES[base, forward]


def query_heads(kv_heads: torch.Tensor, groups: int) -> torch.Tensor:
    """The query heads that read the key/value heads `kv_heads` when `groups` query heads share each."""
    return (kv_heads[:, None] * groups + torch.arange(groups)).flatten()


def set_attention_sizes(block: nn.Module, entry: Mapping, num_query_heads: int, num_kv_heads: int, sizes: dict):
    """Writes a resized attention block's head counts and projection sizes into the attributes its forward reads.

    Args:
        entry: the block kind (`AttentionGroup` fields: `num_heads_attrs`, `num_kv_heads_attrs`, `size_attrs`).
        sizes: the new widths `{"q": ..., "kv": ..., "o": ...}` that `size_attrs` refer to.
    """
    for attr in entry["num_heads_attrs"]:
        _set_path(block, attr, int(num_query_heads))
    for attr in entry["num_kv_heads_attrs"]:
        _set_path(block, attr, int(num_kv_heads))
    for attr, which in entry["size_attrs"].items():
        setattr(block, attr, int(sizes[which]))


def _set_path(block: nn.Module, path: str, value) -> None:
    """`setattr` on the attribute at a dotted path of `block` (`var_attn_bias.num_heads`)."""
    owner, _, attr = path.rpartition(".")
    setattr(block.get_submodule(owner) if owner else block, attr, value)


def resize_head_params(block: nn.Module, paths, num_query_heads: int, keep: torch.Tensor | None = None) -> None:
    """Gives the per-query-head tensors at `paths` (last axis: the head) `num_query_heads` entries: the heads `keep`
    of the current tensor, or placeholder values (for weights loaded afterwards) without `keep`."""
    for path in paths:
        owner_path, _, name = path.rpartition(".")
        owner = block.get_submodule(owner_path) if owner_path else block
        tensor = getattr(owner, name)
        if keep is not None:
            data = tensor.detach().index_select(-1, keep.to(tensor.device)).clone()
        elif tensor.shape[-1] == num_query_heads:
            continue
        else:
            data = torch.zeros(*tensor.shape[:-1], num_query_heads, dtype=tensor.dtype, device=tensor.device)
        if isinstance(tensor, nn.Parameter):
            setattr(owner, name, nn.Parameter(data, requires_grad=tensor.requires_grad))
        else:
            owner.register_buffer(name, data, persistent=name not in owner._non_persistent_buffers_set)


def _resized_linear(block: nn.Module, path: str, in_features: int | None = None, out_features: int | None = None):
    """Replaces the Linear at `path` by one with the given sizes (same device, dtype, bias; placeholder weights)."""
    layer = block.get_submodule(path)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{path} is a {type(layer).__name__}, not an nn.Linear: the layout does not fit this model.")
    in_features = layer.in_features if in_features is None else int(in_features)
    out_features = layer.out_features if out_features is None else int(out_features)
    if (in_features, out_features) == (layer.in_features, layer.out_features):
        return
    new = nn.Linear(
        in_features, out_features, bias=layer.bias is not None, device=layer.weight.device, dtype=layer.weight.dtype
    )
    new.weight.requires_grad_(layer.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    set_submodule(block, path, new)


def find_block(blocks: list[Mapping], name: str, module: nn.Module) -> Mapping:
    """The block kind (of `blocks`) whose pattern and classes match the module `name`."""
    classes = {cls.__name__ for cls in type(module).__mro__}
    for entry in blocks:
        if re.fullmatch(entry["pattern"], name) and (
            not entry["module_classes"] or classes & set(entry["module_classes"])
        ):
            return entry
    raise ValueError(f"The pruned layout names block {name!r}, which this architecture cannot resize.")


def apply_expert_layout(block: nn.Module, entry: Mapping, sizes: Mapping, forwards: Mapping[str, Callable]) -> None:
    """Gives a mixture-of-experts block the kept experts of a layout entry (`{"kind": "experts", "num_experts": n,
    "kept_experts": [original indices]}`): its first `n` experts stay (placeholder weights), the router gets `n`
    rows, or the kept-experts buffer (routers outside the block) the original indices."""
    count = int(sizes["num_experts"])
    experts = block.get_submodule(entry["experts"])
    if count > len(experts):
        raise ValueError(f"The pruned layout keeps {count} experts of a block that has {len(experts)}.")
    set_submodule(block, entry["experts"], nn.ModuleList(list(experts)[:count]))
    if entry["router"]:
        _resized_linear(block, entry["router"], out_features=count)
    if entry["kept_experts_attr"]:
        kept = torch.as_tensor(sizes["kept_experts"], dtype=torch.long)
        if kept.numel() != count:
            raise ValueError(f"The pruned layout lists {kept.numel()} kept experts for num_experts={count}.")
        device = next((p.device for p in block.parameters()), torch.device("cpu"))
        block.register_buffer(entry["kept_experts_attr"], kept.to(device))  # persistent: loaded from the checkpoint
    for attr in entry["num_experts_attrs"]:
        _set_path(block, attr, count)
    if entry["router_forward"]:
        use_forward(block, forwards[entry["router_forward"]])


def apply_pruned_layout(
    model: nn.Module, layout: Mapping, blocks: list[Mapping], forwards: Mapping[str, Callable]
) -> nn.Module:
    """Gives a freshly built base model the per-block sizes of a pruned layout, in place (placeholder weights).

    Works on any device, `meta` included (transformers builds models there before loading weights).

    Args:
        model (`nn.Module`): the freshly built base model.
        layout (`dict`): `config.hf_tsprune_layout`: block module name -> sizes.
        blocks (`list[dict]`): `config.hf_tsprune_blocks`: the family's block kinds.
        forwards (`dict[str, Callable]`): the family's attention forwards by name (`v_head_dim_forward`).

    Returns:
        The model.
    """
    if layout and not blocks:
        raise ValueError(
            f"The configuration has a pruned layout but no `{BLOCKS_ATTR}`: it was not written by hf_tsprune's "
            "`save_pruned` / `to_pruned_model`; save the pruned model with one of them."
        )
    modules = dict(model.named_modules())
    for name, sizes in layout.items():
        if name not in modules:
            raise ValueError(
                f"The pruned layout names block {name!r}, which this {type(model).__name__} does not have: the "
                "checkpoint's layout does not match its base config."
            )
        block = modules[name]
        entry = find_block(blocks, name, block)
        if sizes["kind"] != entry["kind"]:
            raise ValueError(f"The pruned layout says {name!r} is a {sizes['kind']} block; it is a {entry['kind']}.")
        if entry["kind"] == "experts":
            apply_expert_layout(block, entry, sizes, forwards)
            continue
        if entry["kind"] == "mlp":
            width = int(sizes["width"])
            for path in entry["producers"]:
                _resized_linear(block, path, out_features=width)
            _resized_linear(block, entry["consumer"], in_features=width)
            for attr in entry["width_attrs"]:
                setattr(block, attr, width)
            continue
        heads, v_head_dim = int(sizes["num_kv_heads"]), int(sizes["v_head_dim"])
        o = block.get_submodule(entry["o"])
        if heads == 0 and not (entry["kept_heads_attr"] or entry["keep_empty_blocks"]):
            set_submodule(model, name, empty_attention(o, entry["num_outputs"]))
            continue
        base_dim = qk_dim = int(getattr(block, entry["head_dim_attr"]))
        pairs = sizes.get("rotary_pairs")
        if pairs is not None:  # pruned rotary query/key pairs: original pair indices per kept key/value head
            counts = {len(p) for p in pairs}
            if (
                not entry.get("rotary_pairs_attr")
                or len(pairs) != heads
                or len(counts) != 1
                or 0 in counts
                or not all(0 <= int(i) < base_dim // 2 for p in pairs for i in p)
            ):
                raise ValueError(f"The pruned layout of {name} lists rotary pairs this architecture cannot take.")
            pairs = torch.as_tensor(pairs, dtype=torch.long, device="cpu")
            qk_dim = 2 * pairs.shape[1]
        groups = int(getattr(block, entry["kv_groups_attr"])) if entry["kv_groups_attr"] else 1
        sizes_by_kind = {"q": heads * groups * qk_dim, "kv": heads * qk_dim, "o": heads * groups * v_head_dim}
        _resized_linear(block, entry["q"], out_features=sizes_by_kind["q"])
        _resized_linear(block, entry["k"], out_features=sizes_by_kind["kv"])
        _resized_linear(block, entry["v"], out_features=heads * v_head_dim)
        _resized_linear(block, entry["o"], in_features=sizes_by_kind["o"])
        set_attention_sizes(block, entry, heads * groups, heads, sizes_by_kind)
        resize_head_params(block, entry.get("head_params", ()), heads * groups)
        if entry["kept_heads_attr"]:  # per-layer heads of a tensor shared across layers (T5's position bias)
            kept_kv_heads = torch.as_tensor(sizes["kept_heads"], dtype=torch.long)
            if kept_kv_heads.numel() != heads:
                raise ValueError(
                    f"The pruned layout of {name} lists {kept_kv_heads.numel()} kept heads for num_kv_heads={heads}: "
                    "the checkpoint's config is inconsistent."
                )
            kept = query_heads(kept_kv_heads, groups)
            # persistent: on the meta device (from_pretrained) its values come from the checkpoint
            block.register_buffer(entry["kept_heads_attr"], kept.to(o.weight.device))
        if pairs is not None:
            setattr(block, entry["head_dim_attr"], qk_dim)
            # persistent: on the meta device (from_pretrained) its values come from the checkpoint
            block.register_buffer(entry["rotary_pairs_attr"], pairs.to(o.weight.device))
        if entry.get("native_v_head_dim"):  # the block's own forward reads `v_head_dim`
            block.v_head_dim = v_head_dim
        elif entry["kept_heads_attr"] or v_head_dim != base_dim:
            if entry["v_head_dim_forward"] is None:
                raise ValueError(f"{name}: this architecture keeps the value head dimension; the layout changes it.")
            block.v_head_dim = v_head_dim
            use_forward(block, forwards[entry["v_head_dim_forward"]])
    return model


# -- pruned configuration and model classes -------------------------------------------------------------------------


class PrunedConfigMixin:
    r"""Fields and behaviour of a pruned configuration (listed first in its bases, before the base configuration).

    Args:
        hf_tsprune_layout (`dict`, *optional*):
            Per pruned block, its sizes (see the module docstring); blocks not listed keep the base sizes.
        hf_tsprune_blocks (`list[dict]`, *optional*):
            The family's prunable block kinds, which the loader needs to resize the blocks of the layout.
        base_model (`str`, *optional*):
            Hub id or path of the checkpoint the model was pruned from.
        base_model_revision (`str`, *optional*):
            Revision (commit) of `base_model`.
        pruning (`dict`, *optional*):
            Pruning settings and figures.
        kwargs: The fields of the base configuration.
    """

    base_model_type = ""  # the hf_tsprune family (class attribute, not serialised)
    base_config_model_type = None  # the base configuration's `model_type` ("t5" for Chronos, Chronos-Bolt)
    model_class_name = ""  # the pruned model class, for `auto_map`
    extra_auto_classes = ()  # further transformers Auto classes that load the pruned model (Chronos: Seq2SeqLM)
    _hf_tsprune_save_hook = None  # hf_tsprune only: writes the remote-code files beside a saved configuration

    def __init__(
        self,
        hf_tsprune_layout: dict | None = None,
        hf_tsprune_blocks: list | None = None,
        base_model: str | None = None,
        base_model_revision: str | None = None,
        pruning: dict | None = None,
        **kwargs,
    ):
        # A config dict of the base model carries its `model_type` (e.g. "timesfm2_5"). Kept as an instance attribute
        # it would shadow this class' own, and transformers would apply the base model's checkpoint weight renamings
        # (timesfm2_5: fc1 <-> ff0, fc2 <-> ff1) when saving but not when loading: the weights would silently
        # re-initialise. The model type of a pruned config is always its class'.
        model_type = kwargs.pop("model_type", None)
        if model_type not in (None, self.model_type, self.base_model_type, self.base_config_model_type):
            raise ValueError(
                f"{type(self).__name__} prunes {self.base_model_type!r} models; got a config of model type "
                f"{model_type!r}. Use the pruned config class of that architecture."
            )
        self.hf_tsprune_layout = hf_tsprune_layout
        self.hf_tsprune_blocks = hf_tsprune_blocks
        self.base_model = base_model
        self.base_model_revision = base_model_revision
        self.pruning = pruning
        super().__init__(**kwargs)
        self.__dict__.pop("model_type", None)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = self.default_auto_map()

    @classmethod
    def default_auto_map(cls) -> dict:
        """The `auto_map` of a saved pruned checkpoint: the remote-code classes for `trust_remote_code=True`."""
        model = f"{MODEL_MODULE}.{cls.model_class_name}"
        auto_map = {"AutoConfig": f"{CONFIG_MODULE}.{cls.__name__}", "AutoModel": model}
        for auto_class in ("AutoModelForTimeSeriesPrediction", *cls.extra_auto_classes):
            auto_map[auto_class] = model
        return auto_map

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._hf_tsprune_save_hook is not None:  # before the push a `push_to_hub=True` save ends with
            type(self)._hf_tsprune_save_hook(self, save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)


def make_pruned_config_class(
    base_config_class: type,
    name: str,
    *,
    family: str,
    model_class_name: str,
    base_config_model_type: str | None = None,
    extra_auto_classes: tuple[str, ...] = (),
    module: str | None = None,
    doc: str | None = None,
) -> type:
    """The pruned configuration class of a family: `base_config_class` plus [`PrunedConfigMixin`].

    Args:
        base_config_class (`type`): the family's transformers configuration class.
        name (`str`): the class name (e.g. `"PrunedTimesFm2_5Config"`).
        family (`str`): the hf_tsprune family; the `model_type` is `"hf_tsprune_<family>"`.
        model_class_name (`str`): the name of the pruned model class (for `auto_map`).
        base_config_model_type (`str`, *optional*): the base configuration's `model_type`, where a configuration of
            another family shares it (Chronos and Chronos-Bolt: `"t5"`).
        extra_auto_classes (`tuple[str, ...]`): further transformers Auto classes that load the model.
        module (`str`, *optional*): the module the class is reported in (`__module__`).
        doc (`str`, *optional*): the class docstring.
    """
    attrs = {
        "model_type": MODEL_TYPE_PREFIX + family,
        "base_model_type": family,
        "base_config_model_type": base_config_model_type or getattr(base_config_class, "model_type", None),
        "model_class_name": model_class_name,
        "extra_auto_classes": tuple(extra_auto_classes),
        "__module__": module or __name__,
        "__qualname__": name,
        "__doc__": doc or f"[`{base_config_class.__name__}`] of a pruned {family} model, with its per-block sizes.",
    }
    # __init__ is the mixin's (it calls the base configuration's own): transformers applies its dataclass handling
    # to the new class without replacing it
    attrs["__init__"] = PrunedConfigMixin.__init__
    return type(name, (PrunedConfigMixin, base_config_class), attrs)


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match the model built from its configuration (missing, unexpected or
    mismatched tensors): loading it would leave freshly initialised weights in the model."""


def check_loading_info(info: Mapping, checkpoint, model_class: str, strict_hint: str = "strict=False") -> None:
    """Raises a [`CheckpointMismatchError`] naming the tensors when a transformers loading report (`from_pretrained(
    ..., output_loading_info=True)`) lists any missing, unexpected or mismatched tensor or a loading error.

    Args:
        info (`Mapping`): The loading report (`missing_keys`, `unexpected_keys`, `mismatched_keys`, `error_msgs`).
        checkpoint: The checkpoint loaded (its path or Hub id), for the message.
        model_class (`str`): The class it was loaded into, for the message.
        strict_hint (`str`): How the caller accepts such a checkpoint anyway, for the message.
    """

    def listed(keys) -> str:
        keys = sorted(str(k[0] if isinstance(k, (tuple, list)) else k) for k in keys)
        return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing tensors {listed(info['missing_keys'])} (they would be freshly initialised)")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected tensors {listed(info['unexpected_keys'])} (they would be ignored)")
    if info.get("mismatched_keys"):
        problems.append(f"tensors of another shape {listed(info['mismatched_keys'])}")
    if info.get("error_msgs"):
        problems.append("loading errors: " + "; ".join(str(m) for m in info["error_msgs"][:3]))
    if problems:
        raise CheckpointMismatchError(
            f"The checkpoint {checkpoint} does not match {model_class}: " + "; ".join(problems) + ". It is "
            "incomplete or was altered after saving: restore or re-save it (`save_pretrained`), or pass "
            f"`{strict_hint}` to load it with the freshly initialised tensors anyway."
        )


class PrunedModelMixin:
    """Builds the base model, then applies `config.hf_tsprune_layout` (listed first in the pruned class' bases).

    `from_pretrained` loads strictly: a checkpoint with a missing, unexpected or mismatched tensor raises a
    [`CheckpointMismatchError`] naming them (with hf_tsprune and with `trust_remote_code=True` alike), never a silent
    re-initialisation; `strict=False` accepts it, as transformers does.
    """

    _hf_tsprune_forwards: dict[str, Callable] = {}

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        layout = getattr(config, LAYOUT_ATTR, None) or {}
        blocks = getattr(config, BLOCKS_ATTR, None) or []
        apply_pruned_layout(self, layout, blocks, self._hf_tsprune_forwards)
        self.post_init()  # initialises the resized layers (no-op where from_pretrained loads them) and tied keys

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """The base class' `from_pretrained`, which raises on any missing, unexpected or mismatched tensor unless
        `strict=False` (the loading report is returned as usual with `output_loading_info=True`)."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if strict:
            check_loading_info(info, pretrained_model_name_or_path, cls.__name__)
        return (model, info) if output_loading_info else model


def make_pruned_model_class(
    base_model_class: type,
    config_class: type,
    name: str,
    *,
    forwards: tuple[Callable, ...] = (),
    module: str | None = None,
    doc: str | None = None,
) -> type:
    """The pruned model class of a family: `base_model_class` plus [`PrunedModelMixin`], with `config_class`.

    Args:
        base_model_class (`type`): the family's model class.
        config_class (`type`): its pruned configuration class ([`make_pruned_config_class`]).
        name (`str`): the class name (e.g. `"PrunedTimesFm2_5ModelForPrediction"`).
        forwards (`tuple[Callable, ...]`): the attention forwards the family's blocks name (`v_head_dim_forward`).
        module (`str`, *optional*): the module the class is reported in (`__module__`).
        doc (`str`, *optional*): the class docstring.
    """
    attrs = {
        "config_class": config_class,
        "_hf_tsprune_forwards": {forward.__name__: forward for forward in forwards},
        "__module__": module or __name__,
        "__qualname__": name,
        "__doc__": doc or f"[`{base_model_class.__name__}`] with the per-block sizes of [`{config_class.__name__}`].",
    }
    return type(name, (PrunedModelMixin, base_model_class), attrs)
