"""Channel masks on the prunable `nn.Linear` layers of a model.

An output channel of a producer Linear (`fc1`, `gate_proj`, `v_proj`) and the input channel of its consumer (`fc2`,
`down_proj`, `o_proj`) are one channel: it can only be removed from both at once. hf_tsprune therefore keeps one mask
per coupled channel set (the producer's output-channel mask and the consumer's input-channel mask, tied into a single
`nn.Parameter`) and applies it where the channel enters the consumer. Its gradient is then exactly the first-order
effect on the loss of removing the channel everywhere, which is the Taylor importance of the coupled group.

Masks are parameters (named `...<consumer>.hf_tsprune_mask`) so that DDP averages their gradients across ranks and
checkpoints carry them; the optimizer never moves them (`PruningCallback` drops their gradients after scoring).

Rotary query/key pairs (`AttentionGroup.rotary_pairs_attr`) are a second masked group of their attention block, named
`<block>.<q>` (e.g. `model.layers.0.self_attn.q_proj`): one unit per rotary pair `(i, i + d/2)` of every key/value
head, applied to the query projection's output (both channels of the pair, in every query head of the GQA group).
Rotation mixes only the two channels of a pair, so a zero query pair contributes nothing to any attention logit: the
gradient of its mask is the first-order effect of removing the pair from the query and the key projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .family import get_spec
from .specs import ArchitectureSpec, ExpertGroup, Group, MLPGroup

MASK_NAME = "hf_tsprune_mask"
_STATE_ATTR = "_hf_tsprune_masked_groups"


@dataclass
class MaskedGroup:
    """One coupled channel set of a model, with its mask.

    Attributes:
        name: module name of the block (e.g. `decoder.layers.3.mlp`).
        group: the spec entry that matched it.
        module: the block module.
        mask: the mask parameter (1 = kept, 0 = pruned), shape `(num_units,)`.
        unit_cost: parameters removed with each unit, shape `(num_units,)` (the cost-normalised mode divides by it).
        num_kv_heads, head_dim, kv_groups: attention structure (1, width, 1 for MLP groups; for rotary pairs,
            `head_dim` is the number of pairs per key/value head).
        part: `"channels"` (feed-forward channels, attention value channels) or `"rotary"` (the rotary query/key
            pairs of an attention block, whose name is then `<owner>.<q>`).
        owner: for rotary pairs, the name of the attention block.
    """

    name: str
    group: Group
    module: nn.Module
    mask: nn.Parameter
    unit_cost: torch.Tensor
    num_kv_heads: int = 1
    head_dim: int = 0
    kv_groups: int = 1
    hook: torch.utils.hooks.RemovableHandle | None = None
    part: str = "channels"
    owner: str | None = None

    @property
    def num_units(self) -> int:
        return self.mask.numel()

    @property
    def kind(self) -> str:
        """`"mlp"`, `"attention"` or `"rotary"`."""
        return "rotary" if self.part == "rotary" else self.group.kind

    @property
    def consumer(self) -> nn.Linear:
        """The Linear holding the mask: the consumer (input columns), or for rotary pairs the query projection
        (output rows)."""
        if self.part == "rotary":
            return self.module.get_submodule(self.group.q)
        return self.module.get_submodule(self.group.consumer if isinstance(self.group, MLPGroup) else self.group.o)

    def consumer_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Expands a unit mask to the consumer's input columns (GQA: every query head of a key/value head), or for
        rotary pairs to the query projection's output rows (pair `j` of `n` is channels `j` and `n + j` of a head)."""
        if self.part == "rotary":
            pairs = mask.view(self.num_kv_heads, 1, 1, self.head_dim)
            return pairs.expand(-1, self.kv_groups, 2, -1).reshape(-1)
        if self.kv_groups == 1:
            return mask
        return mask.view(self.num_kv_heads, 1, self.head_dim).expand(-1, self.kv_groups, -1).reshape(-1)


def _linear(module: nn.Module, path: str, block_name: str) -> nn.Linear:
    layer = module.get_submodule(path)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{block_name}.{path} is a {type(layer).__name__}; hf_tsprune specs may only name nn.Linear.")
    return layer


def _row_cost(layer: nn.Linear) -> int:
    return layer.in_features + (1 if layer.bias is not None else 0)


def describe_groups(model: nn.Module, spec: ArchitectureSpec | None = None) -> list[MaskedGroup]:
    """Lists the coupled channel sets of `model` with unit costs, without installing anything (masks are detached
    tensors of ones). Optional groups (`MLPGroup.optional`) are left out unless the spec switched them on
    (`spec.with_optional_groups()`)."""
    spec = spec or get_spec(model)
    groups = []
    for name, group, module in spec.match(model):
        if getattr(group, "optional", False):
            continue  # off unless asked for (`ArchitectureSpec.with_optional_groups`)
        if getattr(module, "hf_tsprune_empty", False):
            continue  # an attention block already pruned to nothing (`EmptyAttention`): nothing left to remove
        if isinstance(group, ExpertGroup):
            continue  # experts are removed whole, by their own scores (`install_expert_gates`), not by channel masks
        if isinstance(group, MLPGroup):
            producers = [_linear(module, p, name) for p in group.producers]
            consumer = _linear(module, group.consumer, name)
            width = consumer.in_features
            for p in producers:
                if p.out_features != width:
                    raise ValueError(f"{name}: producer width {p.out_features} != consumer input width {width}.")
            cost = sum(_row_cost(p) for p in producers) + consumer.out_features
            groups.append(
                MaskedGroup(name, group, module, nn.Parameter(torch.ones(width)), torch.full((width,), cost))
            )
        else:
            q, k, v, o = (_linear(module, getattr(group, a), name) for a in "qkvo")
            head_dim = int(getattr(module, group.head_dim_attr))
            v_head_dim = int(getattr(module, "v_head_dim", head_dim))
            if v_head_dim:
                num_kv_heads = v.out_features // v_head_dim
            else:  # heads without value channels (`keep_one_head`), or a block shrunk to no head (0)
                num_kv_heads = k.out_features // head_dim if head_dim else 0
            kv_groups = int(getattr(module, group.kv_groups_attr)) if group.kv_groups_attr else 1
            if (
                q.out_features != num_kv_heads * kv_groups * head_dim
                or o.in_features != q.out_features // head_dim * v_head_dim
            ):
                raise ValueError(
                    f"{name}: projection sizes do not match {num_kv_heads} kv heads x {kv_groups} groups."
                )
            # A value channel removes its v row and one o column per query head reading it, plus its share of the
            # head's query/key rows (they go when the whole head goes), unless those are units of their own.
            qk_share = 0 if group.rotary_pairs_attr else (kv_groups * _row_cost(q) + _row_cost(k)) * head_dim
            cost = _row_cost(v) + kv_groups * o.out_features + qk_share / max(v_head_dim, 1)
            units = num_kv_heads * v_head_dim
            groups.append(
                MaskedGroup(
                    name, group, module, nn.Parameter(torch.ones(units)), torch.full((units,), float(cost)),
                    num_kv_heads=num_kv_heads, head_dim=v_head_dim, kv_groups=kv_groups,
                )
            )  # fmt: skip
            if group.rotary_pairs_attr and num_kv_heads:
                if head_dim % 2:
                    raise ValueError(f"{name}: rotary pairs need an even query/key head dimension, got {head_dim}.")
                pairs = head_dim // 2
                units = num_kv_heads * pairs
                cost = 2 * (kv_groups * _row_cost(q) + _row_cost(k))  # both channels, in q (every group) and k
                groups.append(
                    MaskedGroup(
                        f"{name}.{group.q}", group, module, nn.Parameter(torch.ones(units)),
                        torch.full((units,), float(cost)), num_kv_heads=num_kv_heads, head_dim=pairs,
                        kv_groups=kv_groups, part="rotary", owner=name,
                    )
                )  # fmt: skip
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has nothing prunable: its spec matched no module. Check that the model was built "
            "from the class the spec describes, or register a spec whose patterns match its module names."
        )
    return groups


class _ApplyOutputMask:
    """Forward hook: multiplies the query projection's output by the (expanded) rotary pair mask."""

    def __init__(self, masked: MaskedGroup):
        self.masked = masked

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        mask = self.masked.consumer_mask(getattr(module, MASK_NAME))
        return output * mask.to(output.dtype)


class _ApplyMask:
    """Forward pre-hook: multiplies the consumer's input by the (expanded) mask."""

    def __init__(self, masked: MaskedGroup):
        self.masked = masked

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        mask = self.masked.consumer_mask(getattr(module, MASK_NAME))
        return (x * mask.to(x.dtype),) + tuple(args[1:])


def install_masks(model: nn.Module, spec: ArchitectureSpec | None = None, freeze: bool = True) -> list[MaskedGroup]:
    """Adds a mask (ones) to every prunable channel set of `model`, optionally freezing all other weights.

    Call this *before* building the `Trainer` (and before DDP wrapping), so that the masks are registered parameters
    everywhere. Installing then removing masks leaves the model's function unchanged.

    Args:
        model (`nn.Module`): a model of a supported class.
        spec (`ArchitectureSpec`, *optional*): defaults to the registered spec for the model's class.
        freeze (`bool`, defaults to `True`): set `requires_grad=False` on every weight (the prune run's setting) and
            freeze batch-norm statistics (batch-norm layers run as in inference: running statistics, never updated,
            so the prune run scores the function the model will serve).

    Returns:
        The list of `MaskedGroup`s, also kept on the model (see `masked_groups`).
    """
    if getattr(model, _STATE_ATTR, None):
        raise ValueError("Masks are already installed on this model; call `remove_masks(model)` first.")
    groups = describe_groups(model, spec)
    frozen, hooks = {}, []
    if freeze:
        for pname, param in model.named_parameters():
            frozen[pname] = param.requires_grad
            param.requires_grad_(False)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                hooks.append(module.register_forward_pre_hook(_inference_mode_norm))
    device = next(model.parameters()).device
    for masked in groups:
        consumer = masked.consumer
        masked.mask = nn.Parameter(torch.ones(masked.num_units, device=device, dtype=torch.float32))
        consumer.register_parameter(MASK_NAME, masked.mask)
        if masked.part == "rotary":
            masked.hook = consumer.register_forward_hook(_ApplyOutputMask(masked))
        else:
            masked.hook = consumer.register_forward_pre_hook(_ApplyMask(masked))
    object.__setattr__(model, _STATE_ATTR, groups)
    object.__setattr__(model, "_hf_tsprune_frozen", (frozen, hooks))
    return groups


def _inference_mode_norm(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook keeping a batch-norm layer on its running statistics (the Trainer calls `model.train()`)."""
    module.training = False


def masked_groups(model: nn.Module) -> list[MaskedGroup]:
    """The `MaskedGroup`s installed on `model` (unwraps DDP/accelerate wrappers)."""
    model = unwrap(model)
    groups = getattr(model, _STATE_ATTR, None)
    if not groups:
        raise ValueError(
            "No pruning masks on this model: call `hf_tsprune.install_masks(model)` before "
            "building the Trainer, so that the masks are parameters the Trainer and DDP know about."
        )
    return groups


def unwrap(model: nn.Module) -> nn.Module:
    """Strips DDP / accelerate / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _check_binary(name: str, mask: torch.Tensor, where: str) -> None:
    """Raises when a mask holds a value other than 0 and 1: a fractional mask scales its channels, which no shrink
    can remove exactly."""
    if mask.dtype == torch.bool:
        return
    binary = (mask == 0) | (mask == 1)
    if not bool(binary.all()):
        values = sorted({float(v) for v in mask.detach()[~binary].flatten()[:5].tolist()})
        raise ValueError(
            f"{where} mask of {name} holds values other than 0 and 1 ({values}): a mask keeps (1) or removes (0) a "
            "channel, and a fractional one scales it, which shrinking cannot remove exactly. Pass boolean masks "
            "(e.g. `scores > threshold`) or round them (`mask > 0.5`)."
        )


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current masks as boolean CPU tensors keyed by block name (True = kept).

    Raises:
        `ValueError`: an installed mask holds a value other than 0 and 1 (written into the parameter directly).
    """
    out = {}
    for g in masked_groups(model):
        mask = g.mask.detach().cpu()
        _check_binary(g.name, mask, "The installed")
        out[g.name] = mask > 0.5
    return out


@torch.no_grad()
def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Writes boolean (or 0/1) masks keyed by block name into the installed mask parameters.

    Raises:
        `ValueError`: an unknown block, a wrong shape, or a value other than 0 and 1 (nothing is written then).
    """
    groups = {g.name: g for g in masked_groups(model)}
    unknown = set(masks) - set(groups)
    if unknown:
        raise ValueError(f"Masks given for unknown blocks {sorted(unknown)}; known: {sorted(groups)}.")
    for name, value in masks.items():  # every mask is checked before any is written
        mask = groups[name].mask
        if value.shape != mask.shape:
            raise ValueError(f"Mask for {name} has shape {tuple(value.shape)}, expected {tuple(mask.shape)}.")
        _check_binary(name, torch.as_tensor(value), "The given")
    for name, value in masks.items():
        mask = groups[name].mask
        mask.copy_(value.to(device=mask.device, dtype=mask.dtype))


def remove_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Removes the mask parameters and hooks and restores each weight's `requires_grad`.

    Returns:
        The masks that were installed (boolean, keyed by block name), e.g. to pass to `shrink`.
    """
    model = unwrap(model)
    masks = get_masks(model)
    for masked in masked_groups(model):
        masked.hook.remove()
        del masked.consumer._parameters[MASK_NAME]
    frozen, hooks = model._hf_tsprune_frozen
    for pname, param in model.named_parameters():
        param.requires_grad_(frozen.get(pname, param.requires_grad))
    for hook in hooks:
        hook.remove()
    object.__setattr__(model, _STATE_ATTR, None)
    return masks


# -- experts ---------------------------------------------------------------------------------------------------------

EXPERT_GATE_NAME = "hf_tsprune_expert_gate"
_EXPERTS_ATTR = "_hf_tsprune_expert_blocks"


@dataclass
class ExpertBlock:
    """The experts of one mixture-of-experts block, with the counters (and optional gates) scoring them.

    Attributes:
        name: module name of the block (e.g. `model.encoder.layers.3.ffn`).
        group: the `ExpertGroup` that matched it.
        module: the block module.
        num_experts: its number of experts.
        top_k: experts per token (`group.top_k_attr`).
        tokens: tokens routed to each expert since the counters were last reset, `(num_experts,)` (long).
        gate: with gates installed, a parameter of ones `(num_experts,)` multiplying each expert's output: its
            gradient is the first-order effect of removing the expert (its Taylor score).
    """

    name: str
    group: ExpertGroup
    module: nn.Module
    num_experts: int
    top_k: int
    tokens: torch.Tensor
    gate: nn.Parameter | None = None
    hooks: list = None

    def experts(self) -> nn.ModuleList:
        return self.module.get_submodule(self.group.experts)


def describe_expert_blocks(model: nn.Module, spec: ArchitectureSpec | None = None) -> list[ExpertBlock]:
    """The mixture-of-experts blocks of `model` (its spec's `ExpertGroup`s), without installing anything."""
    spec = spec or get_spec(model)
    blocks = []
    for name, group, module in spec.match(model):
        if isinstance(group, ExpertGroup):
            experts = module.get_submodule(group.experts)
            top_k = int(getattr(module, group.top_k_attr))
            blocks.append(
                ExpertBlock(name, group, module, len(experts), top_k, torch.zeros(len(experts), dtype=torch.long))
            )
    return blocks


class _ExpertHook:
    """Forward hook of one expert: counts the tokens it receives and applies its gate."""

    def __init__(self, block: ExpertBlock, index: int):
        self.block, self.index = block, index

    def __call__(self, module: nn.Module, args: tuple, output):
        x = args[0]
        self.block.tokens[self.index] += x.numel() // max(x.shape[-1], 1)
        if self.block.gate is None:
            return None
        return output * self.block.gate[self.index].to(output.dtype)


def install_expert_gates(
    model: nn.Module, spec: ArchitectureSpec | None = None, gates: bool = True
) -> list[ExpertBlock]:
    """Hooks every expert of `model`'s mixture-of-experts blocks: counts the tokens routed to it and, with `gates`,
    multiplies its output by a gate parameter (ones: the function is unchanged) whose gradient scores the expert.

    Args:
        model (`nn.Module`): a model whose spec has `ExpertGroup`s.
        spec (`ArchitectureSpec`, *optional*): defaults to the registered spec for the model's class.
        gates (`bool`, defaults to `True`): install the gates (`False`: count tokens only, as usage scoring does).

    Returns:
        The `ExpertBlock`s, also kept on the model until [`remove_expert_gates`].
    """
    model = unwrap(model)
    if getattr(model, _EXPERTS_ATTR, None):
        raise ValueError("Expert gates are already installed on this model; call `remove_expert_gates(model)` first.")
    blocks = describe_expert_blocks(model, spec)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no mixture-of-experts block in its spec.")
    device = next(model.parameters()).device
    for block in blocks:
        block.tokens = block.tokens.to(device)
        if gates:
            block.gate = nn.Parameter(torch.ones(block.num_experts, device=device))
            block.module.register_parameter(EXPERT_GATE_NAME, block.gate)
        block.hooks = [expert.register_forward_hook(_ExpertHook(block, e)) for e, expert in enumerate(block.experts())]
    object.__setattr__(model, _EXPERTS_ATTR, blocks)
    return blocks


def remove_expert_gates(model: nn.Module) -> dict[str, torch.Tensor]:
    """Removes the hooks and gates of [`install_expert_gates`]; returns the token counts (CPU) by block name."""
    model = unwrap(model)
    blocks = getattr(model, _EXPERTS_ATTR, None) or []
    for block in blocks:
        for hook in block.hooks:
            hook.remove()
        if block.gate is not None:
            del block.module._parameters[EXPERT_GATE_NAME]
    object.__setattr__(model, _EXPERTS_ATTR, None)
    return {block.name: block.tokens.cpu() for block in blocks}
