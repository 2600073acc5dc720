"""The generic shrink engine: reads an architecture spec and physically removes what the masks zeroed.

`make_plan` turns masks into per-group keep indices and exact parameter counts (it changes nothing); `shrink` applies
a plan: it slices every coupled Linear, updates the module attributes the forward reads, records the per-layer layout
in the config (`config.hf_tsprune_layout`), and checks that the shrunk model's forecast equals the masked model's.

Exactness rules (masked model == shrunk model):

- feed-forward channel: producer rows and consumer columns go together; a block may shrink to width 0 (a zero-width
  Linear outputs its bias, exactly what the fully masked block computed);
- attention: a key/value head (with the query heads that share it) goes when all its value channels are pruned;
  value channels pruned inside kept heads are cut where the spec supports a separate value head dimension (one
  dimension for the layer: the largest kept count, rounded up to `round_to`; heads with fewer kept channels keep some
  pruned ones as zero `o_proj` columns), and otherwise kept as zero `o_proj` columns;
- an attention block with no head left is replaced, under its own name, by `EmptyAttention`, whose output is the
  `o_proj` bias: the exact function of the fully masked block (only with `allow_empty_blocks=True`);
- attention whose spec names a `kept_heads_attr` (heads that read a tensor shared across layers, such as T5's relative
  position bias) gets a buffer with the original indices of its kept query heads, always runs the spec's forward, and
  keeps a block with no head in place (zero-width projections); its kept heads are recorded in the layout;
- rotary query/key pairs (`AttentionGroup.rotary_pairs_attr`): a masked pair is removed from the query and key rows of
  its key/value head (all its query heads); every kept head of a layer keeps the largest kept count of pairs, at least
  one, rounded up so that the head dimension is a multiple of `round_to` (a layer whose pairs are all masked keeps
  one zero pair per head: its attention logits are all zero, as masked),
  heads with fewer keep masked pairs as exact zero query rows (weight and bias); the rows are laid out as [first
  halves of the kept pairs, second halves], `head_dim` becomes twice the kept pairs, and a persistent buffer holds the
  original pair indices per key/value head (also recorded in the layout, `rotary_pairs`), which the module's forward
  uses to index its cos/sin tables; its softmax scale (1/sqrt of the original head dim) is left as it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .checkpoint_code import (
    LAYOUT_ATTR,
    EmptyAttention,
    apply_pruned_layout,
    empty_attention,
    query_heads,
    resize_head_params,
    set_attention_sizes,
    set_submodule,
    use_forward,
)
from .family import get_spec
from .masks import (
    _STATE_ATTR,
    MaskedGroup,
    describe_groups,
    get_masks,
    install_masks,
    remove_masks,
    set_masks,
)
from .specs import ArchitectureSpec, AttentionGroup

__all__ = [
    "EmptyAttention",
    "GroupPlan",
    "PruningPlan",
    "apply_layout",
    "count_flops",
    "make_plan",
    "remove_experts",
    "shrink",
]


@dataclass
class GroupPlan:
    """What a shrink keeps of one group. Index tensors are not serialised."""

    name: str
    kind: str
    units_before: int
    units_after: int
    params_before: int
    params_after: int
    heads_before: int | None = None
    heads_after: int | None = None
    head_dim_before: int | None = None
    head_dim_after: int | None = None
    width_after: int | None = None  # physical width (units_after rounded up to round_to)
    keep: torch.Tensor | None = field(default=None, repr=False)  # MLP: kept channels; attention: kept kv heads
    keep_v: torch.Tensor | None = field(default=None, repr=False)  # attention: (heads_after, head_dim_after) channels
    zero: torch.Tensor | None = field(default=None, repr=False)  # kept-but-pruned positions (bool, like keep/keep_v)
    kept_heads: list[int] | None = None  # attention with a `kept_heads_attr`: original indices of the kept kv heads
    # (experts: original indices of the kept experts)
    pairs_before: int | None = None  # attention with rotary pairs: pairs per kv head before / after
    pairs_after: int | None = None
    keep_pairs: torch.Tensor | None = field(default=None, repr=False)  # (heads_after, pairs_after) current indices
    zero_pairs: torch.Tensor | None = field(default=None, repr=False)  # kept-but-masked pairs (bool, like keep_pairs)
    rotary_pairs: list[list[int]] | None = None  # original pair indices per kept kv head (None: all, unchanged)

    def to_dict(self) -> dict:
        tensors = ("keep", "keep_v", "zero", "keep_pairs", "zero_pairs")
        return {k: v for k, v in asdict(self).items() if k not in tensors}

    def layout_entry(self) -> dict:
        """This group's entry of the pruned layout (experts: kept count and original indices)."""
        return {"kind": "experts", "num_experts": self.units_after, "kept_experts": list(self.kept_heads or [])}


@dataclass
class PruningPlan:
    """Per-group kept units and exact parameter counts; after `shrink`, also FLOPs and the exactness error.

    Printable as a markdown table (`str(plan)`), JSON-serialisable (`plan.to_dict()`, `plan.to_json()`).
    """

    model_class: str
    groups: list[GroupPlan]
    params_before: int
    params_after: int
    flops_before: int | None = None
    flops_after: int | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of prunable units (channels) removed."""
        before = sum(g.units_before for g in self.groups)
        return 1.0 - sum(g.units_after for g in self.groups) / before

    @property
    def layout(self) -> dict[str, dict]:
        """Per block, the sizes a freshly built model needs to take this shape (stored in the config)."""
        layout = {}
        for g in self.groups:
            if g.kind == "attention":
                layout[g.name] = {"kind": "attention", "num_kv_heads": g.heads_after, "v_head_dim": g.head_dim_after}
                if g.kept_heads is not None:
                    layout[g.name]["kept_heads"] = list(g.kept_heads)
                if g.rotary_pairs is not None:
                    layout[g.name]["rotary_pairs"] = [list(p) for p in g.rotary_pairs]
            elif g.kind == "rotary":
                continue  # recorded in its attention block's entry (`rotary_pairs`)
            elif g.kind == "experts":
                layout[g.name] = {"kind": "experts", "num_experts": g.units_after, "kept_experts": g.kept_heads}
            else:
                layout[g.name] = {"kind": "mlp", "width": g.width_after}
        return layout

    def to_dict(self) -> dict:
        return {
            "model_class": self.model_class,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "sparsity": self.sparsity,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "groups": [g.to_dict() for g in self.groups],
        }

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def __str__(self) -> str:
        lines = [
            "| block | kind | kept units | heads | value head dim | params before | params after |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in self.groups:
            heads = f"{g.heads_after}/{g.heads_before}" if g.kind == "attention" else ""
            hdim = f"{g.head_dim_after}/{g.head_dim_before}" if g.kind == "attention" else ""
            if g.kind == "rotary":
                hdim = f"q/k {2 * g.pairs_after}/{2 * g.pairs_before}"
            lines.append(
                f"| {g.name} | {g.kind} | {g.units_after}/{g.units_before} | {heads} | {hdim} | "
                f"{g.params_before:,} | {g.params_after:,} |"
            )
        ratio = self.params_after / self.params_before
        lines.append(f"\nparameters: {self.params_before:,} -> {self.params_after:,} ({ratio:.1%})")
        if self.flops_before:
            lines.append(
                f"FLOPs (batch 1): {self.flops_before:,} -> {self.flops_after:,} ({self.flops_after / self.flops_before:.1%})"
            )
        if self.max_rel_error is not None:
            lines.append(
                f"masked vs shrunk forecast: max abs error {self.max_abs_error:.2e}, relative {self.max_rel_error:.2e}"
            )
        return "\n".join(lines)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not n.endswith("hf_tsprune_mask"))


def _row(layer: nn.Linear) -> int:
    return layer.in_features + (1 if layer.bias is not None else 0)


def _fill(alive: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the alive positions plus the lowest-index dead ones up to `count`, sorted; and which are dead."""
    idx = torch.nonzero(alive).flatten()
    dead = torch.nonzero(~alive).flatten()[: max(0, count - idx.numel())]
    keep = torch.sort(torch.cat([idx, dead])).values
    return keep, ~alive[keep]


def _plan_group(
    masked: MaskedGroup,
    mask: torch.Tensor,
    round_to: int,
    allow_empty_blocks: bool,
    rotary: tuple[MaskedGroup, torch.Tensor] | None = None,
) -> list[GroupPlan]:
    """The plan of one group; an attention group with rotary pairs (`rotary`: their masked group and mask) also
    returns the plan of its pairs, second (the attention plan then counts the query/key projections' parameters in
    the pairs' plan, not in its own)."""
    group, module = masked.group, masked.module
    before = _params(module)
    if not isinstance(group, AttentionGroup):
        width = mask.numel()
        kept = int(mask.sum())
        target = min(width, -(-kept // round_to) * round_to) if kept else 0
        keep, zero = _fill(mask, target)
        producers = [module.get_submodule(p) for p in group.producers]
        consumer = module.get_submodule(group.consumer)
        removed = (width - target) * (sum(_row(p) for p in producers) + consumer.out_features)
        return [
            GroupPlan(
                masked.name, "mlp", width, kept, before, before - removed, width_after=target, keep=keep, zero=zero
            )
        ]
    heads, head_dim, g = masked.num_kv_heads, masked.head_dim, masked.kv_groups
    per_head = mask.view(heads, head_dim)
    head_alive = per_head.any(dim=1)
    kept_heads = torch.nonzero(head_alive).flatten()
    kept_units = int(mask.sum())
    if kept_heads.numel() == 0 and heads and group.keep_one_head:
        kept_heads = torch.zeros(1, dtype=torch.long)  # the first head stays, without value channels
    q, k, v, o = (module.get_submodule(getattr(group, a)) for a in "qkvo")
    qk_params = _params(q) + _params(k) if rotary is not None else 0
    if kept_heads.numel() == 0 and not allow_empty_blocks:
        raise ValueError(
            f"The masks remove every head of {masked.name}. Pass `allow_empty_blocks=True` to replace the block by "
            "its exact constant equivalent (`EmptyAttention`), or keep `min_units_per_group >= 1` when pruning."
        )
    if kept_heads.numel() == 0 and not group.empty_in_place:
        after = o.bias.numel() if o.bias is not None else 0
        plan = GroupPlan(
            masked.name, "attention", mask.numel(), 0, before - qk_params, after, heads, 0, head_dim, 0,
            keep=kept_heads, keep_v=torch.zeros(0, 0, dtype=torch.long), zero=torch.zeros(0, 0, dtype=torch.bool),
        )  # fmt: skip
        if rotary is None:
            return [plan]
        pairs_masked, _ = rotary
        pairs = GroupPlan(
            pairs_masked.name, "rotary", pairs_masked.num_units, 0, qk_params, 0, heads, 0,
            pairs_before=pairs_masked.head_dim, pairs_after=0,
        )  # fmt: skip
        return [plan, pairs]
    if group.changes_v_head_dim:
        most = int(per_head.sum(dim=1).max()) if per_head.numel() else 0
        new_dim = min(head_dim, -(-most // round_to) * round_to)
    else:
        new_dim = head_dim
    filled = [_fill(per_head[h], new_dim) for h in kept_heads.tolist()]
    if filled:
        keep_v = torch.stack([f[0] for f in filled])
        zero = torch.stack([f[1] for f in filled])
    else:  # no head left, kept in place (`empty_in_place`)
        keep_v = torch.zeros(0, new_dim, dtype=torch.long)
        zero = torch.zeros(0, new_dim, dtype=torch.bool)
    qk_dim = int(getattr(module, group.head_dim_attr))
    gone_heads = heads - kept_heads.numel()
    removed = 0 if rotary is not None else gone_heads * qk_dim * (g * _row(q) + _row(k))
    removed += (heads * head_dim - kept_heads.numel() * new_dim) * (_row(v) + g * o.out_features)
    removed += gone_heads * g * sum(math.prod(t.shape[:-1]) for t in _head_params(module, group))
    original = None
    if group.kept_heads_attr is not None:  # kept kv heads in the numbering of the unpruned model
        previous = getattr(module, group.kept_heads_attr, None)
        original = (
            kept_heads
            if previous is None
            else previous.cpu().view(-1, g)[:, 0].div(g, rounding_mode="floor")[kept_heads]
        )
        original = [int(h) for h in original]
    plan = GroupPlan(
        masked.name, "attention", mask.numel(), kept_units, before - qk_params, before - qk_params - removed, heads,
        int(kept_heads.numel()), head_dim, new_dim, keep=kept_heads, keep_v=keep_v, zero=zero, kept_heads=original,
    )  # fmt: skip
    if rotary is None:
        return [plan]
    return [plan, _plan_rotary(plan, rotary[0], rotary[1], qk_params, q, k, round_to)]


def _plan_rotary(
    attention: GroupPlan,
    masked: MaskedGroup,
    mask: torch.Tensor,
    qk_params: int,
    q: nn.Linear,
    k: nn.Linear,
    round_to: int = 1,
) -> GroupPlan:
    """The rotary pairs of an attention block whose kept heads `attention` holds: every kept head keeps the same
    number of pairs (the largest kept count, at least one, rounded up so that the query/key head dimension, twice the
    pairs, is a multiple of `round_to` where the original allows: attention kernels such as FlashAttention want head
    dimensions that are multiples of 8), filled with masked ones kept as zero query rows."""
    module, group = masked.module, masked.group
    heads, pairs, g = masked.num_kv_heads, masked.head_dim, masked.kv_groups
    per_head = mask.view(heads, pairs)[attention.keep]
    if attention.units_after == 0:  # heads kept without value channels (`keep_one_head`): their logits serve nothing
        per_head = torch.zeros_like(per_head)
    kept_units = int(per_head.sum())
    count = max(1, int(per_head.sum(dim=1).max())) if per_head.numel() else 1
    pair_multiple = -(-round_to // 2)
    count = min(pairs, -(-count // pair_multiple) * pair_multiple)
    filled = [_fill(alive, count) for alive in per_head]
    keep_pairs = torch.stack([f[0] for f in filled]) if filled else torch.zeros(0, count, dtype=torch.long)
    zero_pairs = torch.stack([f[1] for f in filled]) if filled else torch.zeros(0, count, dtype=torch.bool)
    after = attention.heads_after * 2 * count * (g * _row(q) + _row(k))
    previous = getattr(module, group.rotary_pairs_attr, None)
    original = None
    if previous is not None:  # pruned before: the current pairs are a subset of the original ones
        previous = previous.cpu()[attention.keep]
        original = torch.gather(previous, 1, keep_pairs)
    elif count < pairs:
        original = keep_pairs
    attention.pairs_before, attention.pairs_after = pairs, count
    attention.keep_pairs, attention.zero_pairs = keep_pairs, zero_pairs
    attention.rotary_pairs = original.tolist() if original is not None else None
    return GroupPlan(
        masked.name, "rotary", masked.num_units, kept_units, qk_params, after, heads, attention.heads_after,
        pairs_before=pairs, pairs_after=count,
    )  # fmt: skip


def _head_params(module: nn.Module, group: AttentionGroup) -> list[nn.Parameter]:
    """The per-query-head parameters (`head_params`) of an attention block (buffers are no parameters)."""
    found = []
    for path in group.head_params:
        owner, _, name = path.rpartition(".")
        tensor = getattr(module.get_submodule(owner) if owner else module, name)
        if isinstance(tensor, nn.Parameter):
            found.append(tensor)
    return found


def make_plan(
    model: nn.Module,
    masks: dict[str, torch.Tensor] | None = None,
    round_to: int = 1,
    allow_empty_blocks: bool = False,
    spec: ArchitectureSpec | None = None,
) -> PruningPlan:
    """Computes what `shrink` would keep, with exact parameter counts, without changing the model.

    Args:
        model: a model of a supported class (masks installed or not).
        masks: boolean masks keyed by block name (True = kept); defaults to the installed masks. Missing blocks are
            kept whole.
        round_to: round feed-forward widths and value head dimensions up to a multiple of this (kept pruned channels
            become exact zeros).
        allow_empty_blocks: allow attention blocks with no head left (replaced by `EmptyAttention`).
    """
    spec = spec or get_spec(model)
    groups = getattr(model, _STATE_ATTR, None) or describe_groups(model, spec)
    if masks is None:
        masks = get_masks(model)
    unknown = set(masks) - {g.name for g in groups}
    if unknown:
        raise ValueError(f"Masks name blocks this model does not have: {sorted(unknown)}.")

    def mask_of(masked: MaskedGroup) -> torch.Tensor:
        mask = masks.get(masked.name, torch.ones(masked.num_units, dtype=torch.bool)).bool().cpu()
        if mask.numel() != masked.num_units:
            raise ValueError(f"Mask for {masked.name} has {mask.numel()} units; the model has {masked.num_units}.")
        return mask

    pairs_of = {g.owner: g for g in groups if g.part == "rotary"}
    by_name = {}
    for masked in groups:
        if masked.part == "rotary":
            continue  # planned with its attention block
        pairs = pairs_of.get(masked.name)
        rotary = (pairs, mask_of(pairs)) if pairs is not None else None
        for plan in _plan_group(masked, mask_of(masked), round_to, allow_empty_blocks, rotary):
            by_name[plan.name] = plan
    plans = [by_name[masked.name] for masked in groups]  # in the order of the masked groups (`shrink` zips them)
    total = _params(model)
    after = total - sum(p.params_before - p.params_after for p in plans)
    return PruningPlan(type(model).__name__, plans, total, after)


def _sliced_linear(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = layer.weight.detach()
    if rows is not None:
        weight = weight[rows.to(weight.device)]
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=layer.bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach()[rows.to(weight.device)] if rows is not None else layer.bias.detach())
    new.weight.requires_grad_(layer.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new


def _apply_group(model: nn.Module, masked: MaskedGroup, plan: GroupPlan) -> None:
    group, module = masked.group, masked.module
    if plan.kind == "rotary":
        return  # applied with its attention block
    if plan.kind == "mlp":
        for path in group.producers:
            set_submodule(module, path, _sliced_linear(module.get_submodule(path), rows=plan.keep))
        consumer = _sliced_linear(module.get_submodule(group.consumer), cols=plan.keep)
        with torch.no_grad():
            consumer.weight[:, plan.zero.to(consumer.weight.device)] = 0
        set_submodule(module, group.consumer, consumer)
        for attr in group.width_attrs:
            setattr(module, attr, plan.width_after)
        return
    o = module.get_submodule(group.o)
    if plan.heads_after == 0 and not group.empty_in_place:
        set_submodule(model, masked.name, empty_attention(o, group.num_outputs))
        return
    q, k, v = (module.get_submodule(getattr(group, a)) for a in "qkv")
    qk_dim = int(getattr(module, group.head_dim_attr))
    g = masked.kv_groups
    q_heads = query_heads(plan.keep, g)  # the query heads reading the kept kv heads
    if plan.keep_pairs is not None:  # rotary pairs: [first halves of the kept pairs, second halves] per head
        half = qk_dim // 2
        channels = torch.cat([plan.keep_pairs, plan.keep_pairs + half], dim=1)  # (kept kv heads, 2 * pairs)
        kv_rows = (plan.keep[:, None] * qk_dim + channels).flatten()
        q_rows = (q_heads[:, None] * qk_dim + channels.repeat_interleave(g, dim=0)).flatten()
        q_zero = torch.cat([plan.zero_pairs, plan.zero_pairs], dim=1).repeat_interleave(g, dim=0).flatten()
    else:
        kv_rows = (plan.keep[:, None] * qk_dim + torch.arange(qk_dim)).flatten()
        q_rows = (q_heads[:, None] * qk_dim + torch.arange(qk_dim)).flatten()
        q_zero = None
    v_rows = (plan.keep[:, None] * masked.head_dim + plan.keep_v).flatten()
    if group.kept_heads_attr is not None:
        previous = getattr(module, group.kept_heads_attr, None)
        original = q_heads if previous is None else previous.cpu()[q_heads]
        # persistent: a checkpoint carries it, so models built on the `meta` device (from_pretrained) get its values
        module.register_buffer(group.kept_heads_attr, original.to(device=o.weight.device, dtype=torch.long))
    o_cols = (q_heads[:, None] * masked.head_dim + plan.keep_v.repeat_interleave(g, dim=0)).flatten()
    o_zero = plan.zero.repeat_interleave(g, dim=0).flatten()
    new_o = _sliced_linear(o, cols=o_cols)
    with torch.no_grad():
        new_o.weight[:, o_zero.to(new_o.weight.device)] = 0
    for attr, layer, rows in ((group.q, q, q_rows), (group.k, k, kv_rows), (group.v, v, v_rows)):
        set_submodule(module, attr, _sliced_linear(layer, rows=rows))
    if q_zero is not None and bool(q_zero.any()):  # masked pairs kept for the common count: exact zero query rows
        new_q = module.get_submodule(group.q)
        with torch.no_grad():
            new_q.weight[q_zero.to(new_q.weight.device)] = 0
            if new_q.bias is not None:
                new_q.bias[q_zero.to(new_q.bias.device)] = 0
    set_submodule(module, group.o, new_o)
    sizes = {"q": q_rows.numel(), "kv": kv_rows.numel(), "o": o_cols.numel()}
    set_attention_sizes(module, group.to_block(), q_heads.numel(), plan.keep.numel(), sizes)
    resize_head_params(module, group.head_params, q_heads.numel(), keep=q_heads)
    if plan.keep_pairs is not None:
        setattr(module, group.head_dim_attr, 2 * int(plan.pairs_after))
        if plan.rotary_pairs is not None:  # persistent: saved with the weights, re-created by the layout
            pairs = torch.tensor(plan.rotary_pairs, dtype=torch.long).view(-1, int(plan.pairs_after))
            module.register_buffer(group.rotary_pairs_attr, pairs.to(o.weight.device))
    if group.native_v_head_dim:
        module.v_head_dim = int(plan.head_dim_after)
    elif plan.head_dim_after != masked.head_dim or hasattr(module, "v_head_dim") or group.kept_heads_attr is not None:
        if group.v_head_dim_forward is None:
            raise ValueError(f"{masked.name}: the spec has no value-head-dimension forward; cannot change it.")
        module.v_head_dim = int(plan.head_dim_after)
        use_forward(module, group.v_head_dim_forward)


def count_flops(model: nn.Module, inputs: dict, spec: ArchitectureSpec | None = None) -> int:
    """FLOPs of one forecast on `inputs` (torch.utils.flop_counter; matmuls and attention).

    Scaled-dot-product attention runs on its math backend here, so that its matmuls are counted whatever kernel the
    shapes would pick (fused CPU kernels are not counted, and a value head dimension that differs from the query/key
    one changes which kernel runs).
    """
    spec = spec or get_spec(model)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        spec.forecast(model, inputs)
    return int(counter.get_total_flops())


@torch.no_grad()
def shrink(
    model: nn.Module,
    masks: dict[str, torch.Tensor] | None = None,
    *,
    round_to: int = 1,
    allow_empty_blocks: bool = False,
    verify: bool = True,
    tolerance: float = 1e-4,
    example_inputs: dict | None = None,
    count_model_flops: bool = True,
    spec: ArchitectureSpec | None = None,
) -> PruningPlan:
    """Physically removes the pruned channels and heads of `model`, in place; returns the plan with its figures.

    Call it after the prune run (`trainer.train()` returned): never inside a running Trainer, whose optimizer would
    keep the old parameters. The installed masks (or `masks`) say what goes; they are removed afterwards.

    Args:
        model: a model of a supported class, with masks installed or with `masks` given.
        masks: boolean masks keyed by block name (True = kept); defaults to the installed masks.
        round_to: round feed-forward widths and value head dimensions up to a multiple of this.
        allow_empty_blocks: replace attention blocks with no head left by `EmptyAttention` (else `ValueError`).
        verify: compare the masked and the shrunk model's forecast on `example_inputs` (raises above `tolerance`,
            relative to the forecast's largest magnitude).
        example_inputs: forward kwargs for the check and FLOP counts (default: the spec's, batch 1, seed 0).
        count_model_flops: measure FLOPs before and after.
        spec: the architecture spec (default: the registered one of the model's family), e.g. to shrink a model
            whose family is not registered.

    Returns:
        `PruningPlan` with parameters, FLOPs before/after and the measured masked-vs-shrunk error.
    """
    from .masks import unwrap

    model = unwrap(model)
    spec = spec or get_spec(model)
    if getattr(model, _STATE_ATTR, None) is None:
        if masks is None:
            raise ValueError("No masks installed and none given: pass `masks` or call `install_masks` first.")
        install_masks(model, spec, freeze=False)
        set_masks(model, masks)
    elif masks is not None:
        set_masks(model, masks)
    groups = getattr(model, _STATE_ATTR)
    plan = make_plan(model, get_masks(model), round_to=round_to, allow_empty_blocks=allow_empty_blocks, spec=spec)
    was_training = model.training
    model.eval()
    if example_inputs is None:
        example_inputs = spec.example_inputs(model, 1, generator=torch.Generator().manual_seed(0))
    reference = spec.forecast(model, example_inputs) if verify else None
    remove_masks(model)
    if count_model_flops:
        plan.flops_before = count_flops(model, example_inputs, spec)
    for masked, group_plan in zip(groups, plan.groups):
        _apply_group(model, masked, group_plan)
    layout = dict(getattr(model.config, LAYOUT_ATTR, None) or {})
    layout.update(plan.layout)
    setattr(model.config, LAYOUT_ATTR, layout)
    if count_model_flops:
        plan.flops_after = count_flops(model, example_inputs, spec)
    actual = _params(model)
    if actual != plan.params_after:
        raise RuntimeError(f"Internal error: shrunk model has {actual} parameters, the plan says {plan.params_after}.")
    if verify:
        output = spec.forecast(model, example_inputs)
        err = (output - reference).abs().max().item()
        plan.max_abs_error = err
        plan.max_rel_error = err / max(reference.abs().max().item(), 1e-12)
        if plan.max_rel_error > tolerance:
            raise RuntimeError(
                f"Shrunk model differs from the masked one by {plan.max_rel_error:.2e} (relative) on {spec.name}; "
                "please report this with the model config."
            )
    model.train(was_training)
    return plan


def _renumbered_layout(layout: dict, name: str, experts_path: str, kept: list[int], entry: dict) -> dict:
    """The layout after a removal of experts of block `name`: its experts entry first (it is applied before the
    entries of its experts), the entries of the kept experts under their new indices, those of removed ones gone."""
    prefix = f"{name}.{experts_path}."
    new_index = {old: new for new, old in enumerate(kept)}
    experts_first, rest = {}, {}
    for key, value in layout.items():
        if key == name:
            continue
        if key.startswith(prefix):
            index, dot, tail = key[len(prefix) :].partition(".")
            if int(index) not in new_index:
                continue
            key = f"{prefix}{new_index[int(index)]}{dot}{tail}"
        (experts_first if value.get("kind") == "experts" else rest)[key] = value
    return {**experts_first, name: entry, **rest}


@torch.no_grad()
def remove_experts(
    model: nn.Module,
    keep: dict[str, torch.Tensor],
    *,
    verify: bool = True,
    tolerance: float = 1e-4,
    example_inputs: dict | None = None,
) -> PruningPlan:
    """Removes whole experts of mixture-of-experts blocks (the spec's `ExpertGroup`s), in place: their modules and
    router rows go (or the block's kept-experts buffer selects the kept rows: for a router outside the block, and for
    a router kept whole because its softmax runs over all rows, `ExpertGroup.native_kept_experts`), so the kept
    experts' routing is unchanged; the kept experts (original indices) are recorded in the layout.

    Removing experts that no token reached leaves the forecast on those inputs exactly unchanged; removing used ones
    changes it (their tokens are routed to the next experts), so `verify` (on by default) only reports the change:
    `plan.max_rel_error` is the relative change of the forecast on `example_inputs`, and it raises above `tolerance`
    only when every removed expert was unused on them.

    Args:
        model (`nn.Module`): a model whose spec has `ExpertGroup`s (channel masks removed or not installed).
        keep (`dict[str, torch.Tensor]`): block name -> `(num_experts,)` bool, True = kept (e.g.
            [`hf_tsprune.scoring.experts_to_keep`]); blocks not listed keep every expert.
        verify (`bool`): measure the forecast change on `example_inputs`.
        tolerance (`float`): see above.
        example_inputs (`dict`, *optional*): forward kwargs (default: the spec's, batch 1, seed 0).

    Returns:
        `PruningPlan` with one `"experts"` group per changed block (units: experts) and exact parameter counts.

    Raises:
        `ValueError`: an unknown block, a wrong mask size, or fewer kept experts than the block's top-k.
    """
    from .masks import describe_expert_blocks, install_expert_gates, remove_expert_gates, unwrap

    model = unwrap(model)
    spec = get_spec(model)
    blocks = {b.name: b for b in describe_expert_blocks(model, spec)}
    unknown = set(keep) - set(blocks)
    if unknown:
        raise ValueError(f"`keep` names blocks without experts: {sorted(unknown)}; known: {sorted(blocks)}.")
    if example_inputs is None:
        example_inputs = spec.example_inputs(model, 1, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    reference, used = None, {}
    if verify:
        install_expert_gates(model, spec, gates=False)
        try:
            reference = spec.forecast(model, example_inputs)
        finally:
            used = {k: v > 0 for k, v in remove_expert_gates(model).items()}
    total_before = _params(model)
    plans, layout = [], dict(getattr(model.config, LAYOUT_ATTR, None) or {})
    for name, mask in keep.items():
        block, mask = blocks[name], torch.as_tensor(mask).bool().cpu()
        if mask.numel() != block.num_experts:
            raise ValueError(f"The mask of {name} has {mask.numel()} experts; the block has {block.num_experts}.")
        kept = torch.nonzero(mask).flatten()
        if kept.numel() < block.top_k:
            raise ValueError(f"{name} routes every token to {block.top_k} experts; the mask keeps {kept.numel()}.")
        if kept.numel() == block.num_experts:
            continue
        group, module = block.group, block.module
        before = _params(module)
        experts = block.experts()
        set_submodule(module, group.experts, nn.ModuleList([experts[i] for i in kept.tolist()]))
        if group.router is not None:
            set_submodule(module, group.router, _sliced_linear(module.get_submodule(group.router), rows=kept))
        previous = getattr(module, group.kept_experts_attr, None) if group.kept_experts_attr else None
        original = kept if previous is None else previous.cpu()[kept]
        if group.kept_experts_attr is not None:
            module.register_buffer(group.kept_experts_attr, original.to(next(module.parameters()).device))
        for attr in group.num_experts_attrs:
            setattr(module, attr, int(kept.numel()))
        if group.router_forward is not None:
            use_forward(module, group.router_forward)
        plan = GroupPlan(name, "experts", block.num_experts, int(kept.numel()), before, _params(module),
                         kept_heads=[int(i) for i in original])  # fmt: skip
        plans.append(plan)
        layout = _renumbered_layout(layout, name, group.experts, kept.tolist(), plan.layout_entry())
    setattr(model.config, LAYOUT_ATTR, layout)
    total_after = total_before - sum(p.params_before - p.params_after for p in plans)
    if _params(model) != total_after:
        raise RuntimeError("Internal error: the expert removal's parameter count does not add up.")
    result = PruningPlan(type(model).__name__, plans, total_before, total_after)
    if verify:
        output = spec.forecast(model, example_inputs)
        err = (output - reference).abs().max().item()
        result.max_abs_error = err
        result.max_rel_error = err / max(reference.abs().max().item(), 1e-12)
        only_unused = all(not bool(used[p.name][~torch.as_tensor(keep[p.name]).bool().cpu()].any()) for p in plans)
        if only_unused and result.max_rel_error > tolerance:
            raise RuntimeError(
                f"Removing experts no token reached changed the forecast by {result.max_rel_error:.2e} (relative) on "
                f"{spec.name}; please report this with the model config."
            )
    model.train(was_training)
    return result


def apply_layout(model: nn.Module, layout: dict[str, dict]) -> nn.Module:
    """Gives a freshly built (unpruned) model the per-layer sizes recorded in `config.hf_tsprune_layout`, so that a
    pruned checkpoint's weights load into it exactly (placeholder weights until then). This is the loader's own
    [`hf_tsprune.checkpoint_code.apply_pruned_layout`], with the block kinds of the model's registered spec."""
    spec = get_spec(model)
    apply_pruned_layout(model, layout, spec.blocks(), {f.__name__: f for f in spec.attention_forwards()})
    setattr(model.config, LAYOUT_ATTR, dict(layout))
    return model
