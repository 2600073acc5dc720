"""Declarative architecture specs: the coupled groups of channels of one model family.

A spec names, for one model family, the coupled groups of channels that can be removed together; the generic engine
in `hf_tsprune.surgery` does every index computation, tensor slice and attribute update from it. Each family file in
`hf_tsprune/families/` holds its spec and registers it with the rest of the family (`hf_tsprune.register_family`).

Three kinds of group exist:

- `MLPGroup`: the intermediate channels of a feed-forward block. Channel `c` is output row `c` of every *producer*
  Linear (`fc1`, `gate_proj`, `up_proj`, ...) and input column `c` of the *consumer* Linear (`fc2`, `down_proj`).
- `AttentionGroup`: the value channels of every key/value head. Channel `(h, d)` is output row `h * head_dim + d` of
  `v_proj` and input column `d` of every query head that reads key/value head `h` in `o_proj`. A head (a GQA group:
  its key/value head and the query heads that share it) goes when all of its value channels are pruned, as in the
  paper; value channels pruned inside a kept head are cut from a uniform value head dimension where the spec provides
  an attention forward that supports it (`v_head_dim_forward`, or the module's own forward with
  `native_v_head_dim`), and otherwise stay as exact zero columns of `o_proj`. With `rotary_pairs_attr`, the
  query/key channels are a second set of units: the rotary pairs `(i, i + d/2)` of every key/value head (see
  `AttentionGroup`).
- `ExpertGroup`: the experts of a mixture-of-experts block, removed whole (by routing usage or a Taylor score per
  expert: `hf_tsprune.scoring`, `hf_tsprune.surgery.remove_experts`) with their router rows, or, for a router whose
  softmax runs over all its rows (Time-MoE), with the router kept whole and a buffer of the kept experts; channel
  masks never cover them (the channels inside each expert are an `MLPGroup`).

Residual-stream (model-width) channels are never pruned: every block adds its output to the residual stream, so one
residual channel couples the embedding, every norm weight and every block's input and output projections at once;
removing it changes what RMS/LayerNorm statistics are computed over, so no removal is exact.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class MLPGroup:
    """Intermediate channels of a feed-forward block.

    Args:
        pattern (`str`):
            Regular expression that must fully match the name of the block module (as in `model.named_modules()`).
        producers (`tuple[str, ...]`):
            Attribute paths (relative to the block) of the Linears whose output rows are the channels.
        consumer (`str`):
            Attribute path of the Linear whose input columns are the channels.
        width_attrs (`tuple[str, ...]`, *optional*):
            Attributes of the block that hold the width and must follow it (e.g. `hidden_dims`).
        module_classes (`tuple[str, ...]`, *optional*):
            When given, only modules whose class (or a base class) has one of these names match, e.g. to tell a gated
            feed-forward block from a plain one that carries the same module name (T5's `DenseReluDense`).
        optional (`bool`, *optional*, defaults to `False`):
            An optional group (Sundial's flow-matching head): masked and pruned only when asked for, with the spec's
            [`ArchitectureSpec.with_optional_groups`] (`install_masks(model, spec.with_optional_groups())`, the
            recipes' `--prune_optional_groups`); its blocks are part of the spec either way, so that checkpoints
            whose layout shrank them load.
    """

    pattern: str
    producers: tuple[str, ...]
    consumer: str
    width_attrs: tuple[str, ...] = ()
    module_classes: tuple[str, ...] = ()
    optional: bool = False

    kind = "mlp"

    def to_block(self) -> dict:
        """The group as the plain dict a pruned checkpoint's configuration records (`hf_tsprune_blocks`)."""
        return _to_block(self)


@dataclass(frozen=True)
class AttentionGroup:
    """Heads and value channels of a (possibly grouped-query) attention block.

    Args:
        pattern (`str`):
            Regular expression that must fully match the name of the attention module.
        q (`str`), k (`str`), v (`str`), o (`str`):
            Attribute names of the query, key, value and output projections.
        head_dim_attr (`str`):
            Module attribute holding the per-head query/key dimension.
        num_heads_attrs (`tuple[str, ...]`):
            Module attributes holding the number of query heads (updated after a shrink).
        num_kv_heads_attrs (`tuple[str, ...]`):
            Module attributes holding the number of key/value heads, for GQA modules that store it.
        size_attrs (`dict[str, str]`):
            Module attributes holding products, updated after a shrink: attribute name -> one of `"q"`, `"kv"`,
            `"o"` (the new width of `q_proj`, `k_proj`/`v_proj` and `o_proj`'s input).
        kv_groups_attr (`str`, *optional*):
            Module attribute holding the number of query heads per key/value head (GQA). `None` means 1.
        v_head_dim_forward (`Callable`, *optional*):
            A forward function (bound as the module's `forward`) that reads `self.v_head_dim` for the value heads.
            When given, value channels pruned inside kept heads are removed (one value head dimension, the largest
            kept, for all heads of the layer); otherwise they stay as exact zero columns.
        kept_heads_attr (`str`, *optional*):
            For attention that reads per-head tensors computed outside the block and shared by several layers (T5's
            relative position bias, computed over all heads by the first layer of a stack): the name of a buffer the
            engine registers on every shrunk block (persistent: saved with the weights), holding the original indices
            of its kept query heads, so that `v_head_dim_forward` (required with it, and bound to every shrunk block)
            selects those heads from the shared tensor. The kept heads are recorded in the layout (`kept_heads`), and
            a block left with no head stays in place with zero-width projections (its forward must support that)
            instead of being replaced by `EmptyAttention`.
        keep_empty_blocks (`bool`, *optional*, defaults to `False`):
            Keep a block left with no head in place, with zero-width projections, instead of replacing it by
            `EmptyAttention`: for blocks whose callers read more than a tuple from them (Chronos-2's attention returns
            a `ModelOutput`); `v_head_dim_forward` or, with `native_v_head_dim`, the module's own forward must
            support zero heads.
        module_classes (`tuple[str, ...]`, *optional*):
            When given, only modules whose class (or a base class) has one of these names match.
        num_outputs (`int`, *optional*, defaults to 2):
            How many values the block's `forward` returns (the attention output first): the `EmptyAttention` that
            replaces a block with no head left returns as many, the rest `None` (TTM's attention returns three).
        head_params (`tuple[str, ...]`, *optional*):
            Paths (relative to the block) of parameters or buffers with one entry per query head along their last
            axis (Moirai's per-head variate attention bias `var_attn_bias.emb.weight`): sliced to the kept query
            heads with the projections. `num_heads_attrs` / `num_kv_heads_attrs` may name attributes of submodules
            by dotted path (`var_attn_bias.num_heads`) to keep such a submodule's head count in step.
        native_v_head_dim (`bool`, *optional*, defaults to `False`):
            The module's own forward reads `self.v_head_dim` (the per-head value width) and derives every shape from
            the module's attributes (hf_tsprune's own models, `hf_tsprune.models`): value channels pruned inside
            kept heads are cut without a replacement forward.
        rotary_pairs_attr (`str`, *optional*):
            Prune the query/key head dimension of rotary attention by pairs. Rotary position embedding rotates
            channel `i` of a query/key head with channel `i + d/2`, so the pair is the unit: a second mask (named
            `<block>.<q>`, applied to the query projection's output) holds one unit per pair of every key/value
            head, shared by the query heads of its GQA group (q·k sums over the same channels). A pair goes when
            masked; every kept head of a layer keeps the same number of pairs (the largest kept count, at least one:
            heads with fewer keep some masked pairs as exact zero rows of the query projection). The engine slices
            the query/key rows into the layout [first halves of the kept pairs, second halves], sets
            `head_dim_attr` to twice the kept pairs and registers a persistent buffer under this name, of shape
            `(num_key_value_heads, pairs)`, holding the original pair (frequency) indices of each key/value head;
            the module's own forward must read it to index its cos/sin tables and must keep its softmax scale
            (`scaling`, 1/sqrt of the original head dim) unchanged. The module may not normalise query/key heads
            (an RMS norm over the head dimension changes when channels go). The kept pairs are recorded in the
            layout (`rotary_pairs`).
        keep_one_head (`bool`, *optional*, defaults to `False`):
            A block whose every head is pruned keeps its first key/value head (and the query heads reading it) with
            no value channel left, in place, instead of being replaced: its output is exactly the masked block's
            (`o_proj` of nothing), and its keys still carry the sequence length, which transformers' key/value cache
            reads from the layers' key tensors (a layer without heads, or an `EmptyAttention`, would report 0 and
            break cached generation). Such a block needs no `allow_empty_blocks` (nothing is replaced); its value
            head dimension is 0 where the spec can change it, else its value channels stay as zero `o_proj` columns.
    """

    pattern: str
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    head_dim_attr: str = "head_dim"
    num_heads_attrs: tuple[str, ...] = ()
    num_kv_heads_attrs: tuple[str, ...] = ()
    size_attrs: dict[str, str] = field(default_factory=dict)
    kv_groups_attr: str | None = None
    v_head_dim_forward: Callable | None = None
    kept_heads_attr: str | None = None
    keep_empty_blocks: bool = False
    module_classes: tuple[str, ...] = ()
    num_outputs: int = 2
    head_params: tuple[str, ...] = ()
    native_v_head_dim: bool = False
    rotary_pairs_attr: str | None = None
    keep_one_head: bool = False

    kind = "attention"

    def to_block(self) -> dict:
        """The group as the plain dict a pruned checkpoint's configuration records (`hf_tsprune_blocks`); the
        attention forward by function name (the checkpoint's code holds the function)."""
        return _to_block(self)

    def __post_init__(self):
        if self.kept_heads_attr is not None and self.v_head_dim_forward is None:
            raise ValueError(
                f"AttentionGroup({self.pattern!r}): `kept_heads_attr` needs a `v_head_dim_forward` that reads it."
            )
        if self.keep_empty_blocks and not self.changes_v_head_dim:
            raise ValueError(
                f"AttentionGroup({self.pattern!r}): `keep_empty_blocks` needs a `v_head_dim_forward` (or "
                "`native_v_head_dim`) that supports zero heads."
            )
        if self.rotary_pairs_attr is not None and (self.kept_heads_attr is not None or self.keep_empty_blocks):
            raise ValueError(
                f"AttentionGroup({self.pattern!r}): `rotary_pairs_attr` is not supported with `kept_heads_attr` or "
                "`keep_empty_blocks` (use `keep_one_head`)."
            )
        if self.keep_one_head and (self.keep_empty_blocks or self.kept_heads_attr is not None):
            raise ValueError(
                f"AttentionGroup({self.pattern!r}): `keep_one_head` excludes `keep_empty_blocks` and `kept_heads_attr`."
            )

    @property
    def changes_v_head_dim(self) -> bool:
        """Whether value channels pruned inside kept heads can be cut (a replacement or the module's own forward
        reads `v_head_dim`)."""
        return self.v_head_dim_forward is not None or self.native_v_head_dim

    @property
    def empty_in_place(self) -> bool:
        """Whether a block left with no head stays in place (zero-width projections) instead of `EmptyAttention`."""
        return self.keep_empty_blocks or self.kept_heads_attr is not None


def contract_attention_group(
    module_classes: tuple[str, ...] = (),
    pattern: str = r"model\.layers\.\d+\.self_attn",
    keep_one_head: bool = True,
) -> AttentionGroup:
    r"""The `AttentionGroup` of an attention module that follows the attention contract of hf_tsprune's own models
    (`hf_tsprune.models`): it holds `num_heads`, `num_key_value_heads`, `num_key_value_groups`, `head_dim`,
    `v_head_dim` and a fixed `scaling`, reads `v_head_dim` itself (`native_v_head_dim`) and indexes its rotary tables
    by the `rotary_pairs` buffer (`rotary_pairs_attr`), so heads, value channels and rotary query/key pairs are pruned.

    Args:
        module_classes (`tuple[str, ...]`, *optional*):
            Class names of the attention module (e.g. `("TimerAttention",)`); empty matches any module named by
            `pattern`.
        pattern (`str`, *optional*, defaults to `r"model\.layers\.\d+\.self_attn"`):
            Regular expression of the attention modules' names.
        keep_one_head (`bool`, *optional*, defaults to `True`):
            A layer whose heads are all pruned keeps one head without value channels (a layer without heads would
            stop the key/value cache's length, which transformers reads from the layers' keys).
    """
    return AttentionGroup(
        pattern=pattern,
        num_heads_attrs=("num_heads",),
        num_kv_heads_attrs=("num_key_value_heads",),
        kv_groups_attr="num_key_value_groups",
        native_v_head_dim=True,
        rotary_pairs_attr="rotary_pairs",
        keep_one_head=keep_one_head,
        module_classes=tuple(module_classes),
    )


def swiglu_group(pattern: str, module_classes: tuple[str, ...] = ()) -> MLPGroup:
    r"""The `MLPGroup` of a SwiGLU feed-forward block: the channels are the output rows of `gate_proj` and `up_proj`
    and the input columns of `down_proj`.

    Args:
        pattern (`str`):
            Regular expression of the blocks' names (e.g. `r"model\.layers\.\d+\.ffn_layer"`).
        module_classes (`tuple[str, ...]`, *optional*):
            Class names of the block; empty matches any module named by `pattern`.
    """
    return MLPGroup(
        pattern=pattern,
        producers=("gate_proj", "up_proj"),
        consumer="down_proj",
        module_classes=tuple(module_classes),
    )


@dataclass(frozen=True)
class ExpertGroup:
    """The experts of a mixture-of-experts block, removed whole (the paper's expert pruning of Time-MoE).

    Expert `e` is `experts[e]` (a module; the channels inside each expert are an `MLPGroup` of their own) and row `e`
    of the router. Removing an expert drops the module; the kept experts' routing logits stay those of the unpruned
    model. Whether their top-k choice *and weights* stay too depends on the router, and decides how the spec must
    describe it:

    - routing weights computed from the top-k logits alone (a softmax over the chosen experts, as Moirai-MoE): cutting
      the removed experts' router rows (`router`, or `kept_experts_attr` with a `router_forward` for a router outside
      the block) is exact wherever no removed expert was chosen;
    - routing weights that are a softmax over *all* router rows (Time-MoE: the probabilities of the chosen experts,
      not renormalised): cutting rows shrinks the softmax denominator of every token, hence changes every routing
      weight even where no removed expert was chosen. Such a router is kept whole and the block's own forward takes
      the top-k over the kept experts' columns only (`kept_experts_attr` with `native_kept_experts`), which is exact.

    With either description, removing experts that no token was routed to leaves every output exactly unchanged.

    Args:
        pattern (`str`):
            Regular expression that must fully match the name of the mixture-of-experts block.
        experts (`str`, defaults to `"experts"`):
            Attribute path (relative to the block) of the `nn.ModuleList` of experts.
        router (`str`, *optional*):
            Attribute path of the router `nn.Linear` whose output rows are the experts' logits (Time-MoE's `gate`):
            its rows of removed experts are cut.
        kept_experts_attr (`str`, *optional*):
            For a router held outside the block (Moirai-MoE: one centroid tensor of every layer, held by the encoder
            and passed to each block): the name of a buffer the engine registers on the block (persistent), holding
            the original indices of its kept experts, which `router_forward` (required with it) uses to select the
            kept experts' rows of that tensor.
        num_experts_attrs (`tuple[str, ...]`):
            Block attributes holding the number of experts (updated after a removal).
        top_k_attr (`str`, defaults to `"top_k"`):
            Block attribute holding the number of experts per token; a block keeps at least that many experts.
        router_forward (`Callable`, *optional*):
            A forward bound as the block's `forward` after a removal (reads `kept_experts_attr`).
        module_classes (`tuple[str, ...]`, *optional*):
            When given, only modules whose class (or a base class) has one of these names match.
        native_kept_experts (`bool`, *optional*, defaults to `False`):
            The block's own forward reads the buffer `kept_experts_attr` (the original indices of its kept experts)
            and routes over those columns of its whole router (hf_tsprune's own models, `hf_tsprune.models`: Time-MoE's
            softmax-over-all-rows router, see above): no `router_forward` is needed, and the router is not cut.
    """

    pattern: str
    experts: str = "experts"
    router: str | None = None
    kept_experts_attr: str | None = None
    num_experts_attrs: tuple[str, ...] = ()
    top_k_attr: str = "top_k"
    router_forward: Callable | None = None
    module_classes: tuple[str, ...] = ()
    native_kept_experts: bool = False

    kind = "experts"

    def __post_init__(self):
        if (self.router is None) == (self.kept_experts_attr is None):
            raise ValueError(f"ExpertGroup({self.pattern!r}): give exactly one of `router` and `kept_experts_attr`.")
        if self.kept_experts_attr is not None and self.router_forward is None and not self.native_kept_experts:
            raise ValueError(
                f"ExpertGroup({self.pattern!r}): `kept_experts_attr` needs a `router_forward`, or "
                "`native_kept_experts=True` when the block's own forward reads it."
            )
        if self.native_kept_experts and (self.kept_experts_attr is None or self.router_forward is not None):
            raise ValueError(
                f"ExpertGroup({self.pattern!r}): `native_kept_experts` needs `kept_experts_attr` and no "
                "`router_forward` (the block's own forward reads the buffer)."
            )

    def to_block(self) -> dict:
        """The group as the plain dict a pruned checkpoint's configuration records (`hf_tsprune_blocks`)."""
        return _to_block(self)


Group = MLPGroup | AttentionGroup | ExpertGroup


def _to_block(group: Group) -> dict:
    block = {"kind": group.kind}
    for item in dataclasses.fields(group):
        value = getattr(group, item.name)
        if callable(value):
            value = value.__name__
        block[item.name] = list(value) if isinstance(value, tuple) else value
    return block


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything the engine needs to know about one model family.

    Args:
        name (`str`):
            The family (e.g. `"timesfm"`).
        model_classes (`tuple[str, ...]`):
            Class names this spec applies to (e.g. `("TimesFmModelForPrediction",)`); a subclass (such as the pruned
            class) matches through its bases.
        groups (`tuple[Group, ...]`):
            The prunable groups, in the order the engine visits them (this order also breaks score ties).
        example_inputs (`Callable[[nn.Module, int], dict]`):
            Returns forward kwargs for a batch of the given size; used for FLOP counts, benchmarks and tests.
        forecast (`Callable[[nn.Module, dict], torch.Tensor]`):
            Runs the model on `example_inputs` and returns the point forecast tensor (used by exactness checks).
    """

    name: str
    model_classes: tuple[str, ...]
    groups: tuple[Group, ...]
    example_inputs: Callable
    forecast: Callable

    def match(self, model: nn.Module) -> list[tuple[str, Group, nn.Module]]:
        """Returns `(module_name, group, module)` for every module of `model` matched by a group, in spec order."""
        named = list(model.named_modules())
        found = []
        for group in self.groups:
            regex = re.compile(group.pattern)
            found.extend(
                (name, group, module)
                for name, module in named
                if regex.fullmatch(name) and _class_matches(module, group.module_classes)
            )
        return found

    def blocks(self) -> list[dict]:
        """The groups as a pruned checkpoint's configuration records them (`hf_tsprune_blocks`)."""
        return [group.to_block() for group in self.groups]

    @property
    def has_optional_groups(self) -> bool:
        """Whether some group is optional (off unless [`with_optional_groups`] switches it on)."""
        return any(getattr(group, "optional", False) for group in self.groups)

    def with_optional_groups(self) -> ArchitectureSpec:
        """The same spec with its optional groups switched on (pruned like the others); the spec itself when it has
        none."""
        if not self.has_optional_groups:
            return self
        groups = tuple(
            dataclasses.replace(g, optional=False) if getattr(g, "optional", False) else g for g in self.groups
        )
        return dataclasses.replace(self, groups=groups)

    def attention_forwards(self) -> tuple[Callable, ...]:
        """The forwards the groups use (`v_head_dim_forward`, `router_forward`), each once."""
        forwards = [getattr(g, "v_head_dim_forward", None) or getattr(g, "router_forward", None) for g in self.groups]
        return tuple(dict.fromkeys(f for f in forwards if f is not None))


def _class_matches(module: nn.Module, class_names: tuple[str, ...]) -> bool:
    return not class_names or any(cls.__name__ in class_names for cls in type(module).__mro__)
