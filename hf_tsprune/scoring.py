"""Taylor importance, its EMA, and the global selection of channels to prune (pure tensor code).

The paper's method ("Less is More", arXiv 2505.23195):

- score each channel by the first-order Taylor importance of its mask, `s = -grad(mask) * mask`, computed on the mean
  loss of one optimizer step (so gradient accumulation gives the paper's macro batch);
- smooth the scores across steps with an EMA, `ŝ ← α·s + (1−α)·ŝ` (α = `ema`; the first step sets `ŝ = s`);
- at every step zero the channels still alive with the lowest absolute EMA score `|ŝ|`, with one threshold across
  all masks (as the authors' implementation ranks them: a channel whose removal moves the loss little either way goes
  first); a mask that gets no gradient in a step (its channels do not reach the loss) is neither scored nor pruned
  there.

The importance is pluggable (`PruningConfig.importance`, or any callable of the same signature passed to
`PruningCallback(importance=...)`): `"taylor"` (the paper's), `"taylor_abs"` (its absolute value before the EMA),
`"magnitude"` (the L2 norm of the weights a channel removes, data-free) and `"random"` (seeded uniform scores: the
chance baseline the Taylor scores must beat); the EMA and the global selection apply to all of them (`ema=1.0` turns
the smoothing off).

Two additions beyond the paper: `cost_normalized` ranks channels by score per parameter the channel would remove (the
paper's threshold counts channels, so a wide FFN channel and a narrow head channel count the same), and `round_to`
keeps every feed-forward width a multiple of N (channels go in blocks of N, the block's score being the mean of its
channels'), which keeps matmul shapes friendly to fast kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass
class PruningConfig:
    """Settings of a prune run.

    Args:
        ratio_per_epoch (`float`, defaults to 0.3):
            Fraction of the channels alive at the start of an epoch that the epoch removes, spread evenly over its
            optimizer steps (after `e` epochs, `1 - (1 - ratio_per_epoch) ** e` of the channels are gone). In (0, 1).
        ema (`float`, defaults to 0.3):
            EMA weight α of the newest step's scores. In (0, 1]; 1 disables smoothing.
        max_sparsity (`float`, defaults to 0.9):
            Pruning stops (and training ends after one last evaluation) once this fraction of channels is gone.
        cost_normalized (`bool`, defaults to `False`):
            Rank channels by score divided by the parameters they would remove, instead of by score.
        round_to (`int`, defaults to 1):
            Keep every feed-forward width a multiple of this number (value head dimensions are rounded up to it
            when shrinking).
        min_units_per_group (`int`, defaults to 1):
            Channels each group keeps at least (1 keeps at least one head per attention layer). 0 lets a whole block
            go; `shrink` then needs `allow_empty_blocks=True` to replace it by its exact constant equivalent.
        importance (`str`, defaults to `"taylor"`):
            Channel score of each optimizer step: `"taylor"` (`-grad(mask) * mask`, the paper's), `"taylor_abs"`
            (its absolute value, taken before the EMA), `"magnitude"` (L2 norm of the weights the channel removes;
            ignores the data) or `"random"` (uniform scores from a generator seeded with `seed`: the chance
            baseline). See [`IMPORTANCE`].
        seed (`int`, defaults to 0):
            Seed of the `"random"` importance's generator (the same on every process, so ranks agree).
        min_sparsity (`float`, defaults to 0.0):
            Mask sets below this sparsity are not candidates for the best one. At 0 the unpruned model (step 0,
            evaluated with `TrainingArguments(eval_on_start=True)`) is a candidate, so pruning is kept only where it
            lowers the validation metric; set e.g. 0.3 for a model at least 30% smaller whatever validation says.
        metric_for_best_mask (`str`, defaults to `"eval_loss"`):
            Evaluation metric that picks the best mask set (lower is better unless `greater_is_better`).
        greater_is_better (`bool`, defaults to `False`):
            Whether a larger `metric_for_best_mask` is better.
    """

    ratio_per_epoch: float = 0.3
    ema: float = 0.3
    max_sparsity: float = 0.9
    cost_normalized: bool = False
    round_to: int = 1
    min_units_per_group: int = 1
    importance: str = "taylor"
    seed: int = 0
    min_sparsity: float = 0.0
    metric_for_best_mask: str = "eval_loss"
    greater_is_better: bool = False

    def __post_init__(self):
        if not 0.0 < self.ratio_per_epoch < 1.0:
            raise ValueError(
                f"ratio_per_epoch={self.ratio_per_epoch} must lie in (0, 1): it is the fraction of alive channels "
                "removed per epoch (e.g. 0.3). For more pruning, train more epochs or raise max_sparsity."
            )
        if not 0.0 < self.ema <= 1.0:
            raise ValueError(f"ema={self.ema} must lie in (0, 1] (weight of the newest scores; 1 = no smoothing).")
        if not 0.0 < self.max_sparsity < 1.0:
            raise ValueError(f"max_sparsity={self.max_sparsity} must lie in (0, 1) (fraction of channels removed).")
        if self.round_to < 1:
            raise ValueError(f"round_to={self.round_to} must be a positive integer (1 disables rounding).")
        if self.min_units_per_group < 0:
            raise ValueError(f"min_units_per_group={self.min_units_per_group} must be >= 0.")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"importance={self.importance!r} is not one of {sorted(IMPORTANCE)}.")
        if not 0.0 <= self.min_sparsity <= self.max_sparsity:
            raise ValueError(
                f"min_sparsity={self.min_sparsity} must lie in [0, max_sparsity={self.max_sparsity}]: mask sets below "
                "it are not candidates for the best one, so the run must be able to reach it."
            )

    def to_dict(self) -> dict:
        return asdict(self)


def taylor_scores(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """First-order Taylor importance of each channel: `-grad * mask` (0 for pruned channels)."""
    return -(grad.detach().float() * mask.detach().float())


# -- importance: per optimizer step, one score per unit of every masked group (higher = more important) ------------

Importance = Callable[[Sequence, Sequence[torch.Tensor], torch.Generator], list[torch.Tensor]]
"""`importance(groups, grads, generator) -> scores`: `groups` are the installed `hf_tsprune.masks.MaskedGroup`s,
`grads` their masks' gradients of this optimizer step (zeros where a mask got none), `generator` a CPU generator
seeded with `PruningConfig.seed`; returns one float tensor of `group.num_units` scores per group (CPU)."""


def taylor_importance(
    groups: Sequence, grads: Sequence[torch.Tensor], generator: torch.Generator
) -> list[torch.Tensor]:
    """The paper's first-order Taylor importance of each channel, `-grad(mask) * mask` ([`taylor_scores`])."""
    return [taylor_scores(grad, g.mask).cpu() for g, grad in zip(groups, grads)]


def absolute_taylor_importance(
    groups: Sequence, grads: Sequence[torch.Tensor], generator: torch.Generator
) -> list[torch.Tensor]:
    """`|grad(mask) * mask|`: the size of the first-order change of the loss when a channel goes, whatever its sign
    (Molchanov et al., 2019). Both Taylor importances are ranked by absolute value; this one takes it before the EMA,
    so steps whose first-order terms have opposite signs add up instead of cancelling."""
    return [taylor_scores(grad, g.mask).abs().cpu() for g, grad in zip(groups, grads)]


def _squared_row_norms(layer: torch.nn.Linear) -> torch.Tensor:
    norms = layer.weight.detach().float().pow(2).sum(1)
    return norms + layer.bias.detach().float().pow(2) if layer.bias is not None else norms


@torch.no_grad()
def magnitude_importance(
    groups: Sequence, grads: Sequence[torch.Tensor], generator: torch.Generator
) -> list[torch.Tensor]:
    """Weight magnitude of each channel: the L2 norm of every weight (and bias) it removes, data-free.

    A feed-forward channel removes its producers' rows and its consumer's column; a value channel its `v_proj` row
    and the `o_proj` column of every query head reading it; a rotary pair (`part == "rotary"`) the two `q_proj` rows
    of each query head of its group and the two `k_proj` rows.
    """
    from .specs import MLPGroup

    scores = []
    for g in groups:
        part = getattr(g, "part", None)
        if isinstance(g.group, MLPGroup):
            squared = sum(_squared_row_norms(g.module.get_submodule(p)) for p in g.group.producers)
            squared = squared + g.consumer.weight.detach().float().pow(2).sum(0)
        elif part == "rotary":
            q, k = g.module.get_submodule(g.group.q), g.module.get_submodule(g.group.k)
            pairs = g.head_dim
            q_rows = _squared_row_norms(q).view(g.num_kv_heads, g.kv_groups, 2, pairs).sum((1, 2))
            k_rows = _squared_row_norms(k).view(g.num_kv_heads, 2, pairs).sum(1)
            squared = (q_rows + k_rows).reshape(-1)
        else:
            o_columns = g.consumer.weight.detach().float().pow(2).sum(0)
            o_columns = o_columns.view(g.num_kv_heads, g.kv_groups, -1).sum(1).reshape(-1)
            squared = _squared_row_norms(g.module.get_submodule(g.group.v)) + o_columns
        scores.append((squared.sqrt() * g.mask.detach().float()).cpu())
    return scores


def random_importance(
    groups: Sequence, grads: Sequence[torch.Tensor], generator: torch.Generator
) -> list[torch.Tensor]:
    """Uniform random scores in [0, 1) from `generator`: random masks, the baseline the other scores must beat."""
    return [torch.rand(g.num_units, generator=generator) for g in groups]


IMPORTANCE: dict[str, Importance] = {
    "taylor": taylor_importance,
    "taylor_abs": absolute_taylor_importance,
    "magnitude": magnitude_importance,
    "random": random_importance,
}
"""The importance functions `PruningConfig.importance` names."""


def ema_update(previous: torch.Tensor | None, scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """`α·s + (1−α)·ŝ`, or `s` on the first visit (`previous is None`)."""
    if previous is None:
        return scores.clone()
    return alpha * scores + (1.0 - alpha) * previous


def max_pruned_units(total_units: int, max_sparsity: float) -> int:
    """The most channels a prune run may remove: `max_sparsity` of `total_units`, rounded down.

    Args:
        total_units (`int`): Channels of all masked groups.
        max_sparsity (`float`): The largest fraction of channels to remove ([`PruningConfig.max_sparsity`]).

    Returns:
        `int`: `floor(max_sparsity * total_units)`, tolerant of float round-off (0.3 * 10 gives 3).
    """
    return math.floor(max_sparsity * total_units + 1e-9)


def channels_to_prune_at_step(
    *,
    ratio_per_epoch: float,
    alive_at_epoch_start: int,
    pruned_this_epoch: int,
    step_in_epoch: int,
    steps_per_epoch: int,
    total_units: int,
    num_alive: int,
    max_sparsity: float,
) -> int:
    """How many channels one optimizer step removes: the per-step pruning budget of the prune run's schedule.

    An epoch removes `ratio_per_epoch` of the channels alive at its start, spread evenly over its optimizer steps: by
    the end of step `step_in_epoch` (0-based) `round(ratio_per_epoch * alive_at_epoch_start * (step_in_epoch + 1) /
    steps_per_epoch)` channels are due, of which `pruned_this_epoch` are gone already. No step goes beyond
    [`max_pruned_units`] in total.

    Args:
        ratio_per_epoch (`float`): Fraction of the channels alive at the epoch start that the epoch removes.
        alive_at_epoch_start (`int`): Channels alive when the epoch's first optimizer step began.
        pruned_this_epoch (`int`): Channels removed by the epoch's earlier steps.
        step_in_epoch (`int`): Index of this optimizer step within its epoch, from 0.
        steps_per_epoch (`int`): Optimizer steps per epoch (at least 1).
        total_units (`int`): Channels of all masked groups.
        num_alive (`int`): Channels alive now.
        max_sparsity (`float`): The largest fraction of `total_units` a prune run removes.

    Returns:
        `int`: channels to remove at this step; 0 or less means none.
    """
    due = round(ratio_per_epoch * alive_at_epoch_start * (step_in_epoch + 1) / steps_per_epoch)
    left_under_max_sparsity = max_pruned_units(total_units, max_sparsity) - (total_units - num_alive)
    return min(due - pruned_this_epoch, left_under_max_sparsity)


def select_units_to_prune(
    scores: list[torch.Tensor],
    alive: list[torch.Tensor],
    num_to_prune: int,
    costs: list[torch.Tensor] | None = None,
    block_sizes: list[int] | None = None,
    min_alive: list[int] | None = None,
) -> list[torch.Tensor]:
    """Picks the globally lowest-ranked alive units, with one threshold across all groups.

    Within a group, alive units are sorted by score (ties: lower index first) and cut into blocks (`block_sizes[i]`
    units; a first, smaller block takes the remainder so that the width stays a multiple). Blocks of all groups are
    ranked by their mean score, or by score per parameter when `costs` are given; ties break by group order and then
    block order, so the result is deterministic. Blocks are taken until `num_to_prune` units are reached (the last
    block may overshoot by less than its size). No group drops below `min_alive[i]` units.

    Args:
        scores: per group, a float tensor of unit scores (higher = more important).
        alive: per group, a bool tensor, True for units not yet pruned.
        num_to_prune: units to remove now.
        costs: per group, parameters removed per unit (cost-normalised mode), or `None`.
        block_sizes: per group, units removed together (the `round_to` of feed-forward groups); default 1.
        min_alive: per group, the fewest units to keep; default 1.

    Returns:
        Per group, a bool tensor marking the units to prune now.
    """
    n_groups = len(scores)
    block_sizes = block_sizes or [1] * n_groups
    min_alive = min_alive or [1] * n_groups
    keys, sizes, owners, orders, starts = [], [], [], [], []
    for i in range(n_groups):
        idx = torch.nonzero(alive[i], as_tuple=False).flatten()
        unit_scores = scores[i].float()[idx]
        order = idx[torch.sort(unit_scores, stable=True).indices]
        orders.append(order)
        n_alive, size = idx.numel(), block_sizes[i]
        floor = min(n_alive, -(-min_alive[i] // size) * size if min_alive[i] > 0 else 0)
        eligible = n_alive - floor
        if eligible <= 0:
            starts.append(torch.zeros(0, dtype=torch.long))
            continue
        remainder = n_alive % size
        bounds = ([0, remainder] if remainder else [0]) + list(range(remainder + size, eligible + 1, size))
        bounds = torch.tensor([b for b in bounds if b <= eligible], dtype=torch.long)
        if bounds.numel() < 2:
            starts.append(torch.zeros(0, dtype=torch.long))
            continue
        sorted_scores = scores[i].float()[order]
        csum = torch.cat([torch.zeros(1), torch.cumsum(sorted_scores, 0)])
        block_score = csum[bounds[1:]] - csum[bounds[:-1]]
        block_size = bounds[1:] - bounds[:-1]
        if costs is not None:
            ccum = torch.cat([torch.zeros(1), torch.cumsum(costs[i].float()[order], 0)])
            key = block_score / (ccum[bounds[1:]] - ccum[bounds[:-1]]).clamp_min(1e-12)
        else:
            key = block_score / block_size
        keys.append(key)
        sizes.append(block_size)
        owners.append(torch.full_like(block_size, i))
        starts.append(bounds)
    pruned = [torch.zeros_like(a, dtype=torch.bool) for a in alive]
    if not keys or num_to_prune <= 0:
        return pruned
    keys, sizes, owners = torch.cat(keys), torch.cat(sizes), torch.cat(owners)
    rank = torch.sort(keys, stable=True).indices
    taken_before = torch.cumsum(sizes[rank], 0) - sizes[rank]
    chosen = rank[taken_before < num_to_prune]
    counts = torch.bincount(owners[chosen], minlength=n_groups)
    for i in range(n_groups):
        if counts[i] > 0:
            n_units = int(starts[i][int(counts[i])])
            pruned[i][orders[i][:n_units]] = True
    return pruned


class TaylorScorer:
    """Keeps the EMA scores and alive masks of all groups and applies the selection rule.

    Args:
        config (`PruningConfig`): the prune-run settings.
        num_units (`list[int]`): units per group.
        unit_costs (`list[torch.Tensor]`): parameters removed per unit, per group.
        roundable (`list[bool]`): whether `round_to` applies to the group (feed-forward groups).
    """

    def __init__(
        self, config: PruningConfig, num_units: list[int], unit_costs: list[torch.Tensor], roundable: list[bool]
    ):
        self.config = config
        self.unit_costs = [c.float().cpu() for c in unit_costs]
        self.block_sizes = [config.round_to if r else 1 for r in roundable]
        self.min_alive = [
            max(config.min_units_per_group, b if config.min_units_per_group else 0) for b in self.block_sizes
        ]
        self.ema_scores: list[torch.Tensor | None] = [None] * len(num_units)
        self.alive = [torch.ones(n, dtype=torch.bool) for n in num_units]
        self.total_units = sum(num_units)

    @property
    def num_alive(self) -> int:
        return int(sum(a.sum() for a in self.alive))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.num_alive / self.total_units

    def update(self, grads: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        """Adds one optimizer step's Taylor scores to the EMA."""
        self.update_scores([taylor_scores(grad, mask).cpu() for grad, mask in zip(grads, masks)])

    def update_scores(self, step_scores: list[torch.Tensor], used: list[bool] | None = None) -> None:
        """Adds one optimizer step's scores (any importance, one tensor per group) to the EMA; a group not `used` in
        the step (its mask got no gradient: the loss did not depend on it) keeps its previous EMA."""
        for i, scores in enumerate(step_scores):
            if used is None or used[i]:
                self.ema_scores[i] = ema_update(self.ema_scores[i], scores.detach().float().cpu(), self.config.ema)

    def prune(self, num_to_prune: int, eligible: list[bool] | None = None) -> int:
        """Marks the `num_to_prune` alive units of the lowest absolute EMA score as pruned; returns how many went.

        The rank is `|EMA(s)|`, as in the authors' implementation of the method: a channel whose removal moves the
        loss little either way goes first. Ranking the signed Taylor score instead removes first the channels with
        the most negative first-order term, which are often the most important ones (on the bundled reference model
        the 25 lowest signed scores cost about 165 times the validation loss of 25 random channels removed one at a
        time). Groups not `eligible` (no gradient in this step) or never scored keep their units.
        """
        usable = [s is not None and (eligible is None or eligible[i]) for i, s in enumerate(self.ema_scores)]
        if num_to_prune <= 0 or not any(usable):
            return 0
        pruned = select_units_to_prune(
            [s.abs() if ok else torch.zeros(a.numel()) for s, a, ok in zip(self.ema_scores, self.alive, usable)],
            [a if ok else torch.zeros_like(a) for a, ok in zip(self.alive, usable)],
            num_to_prune,
            costs=self.unit_costs if self.config.cost_normalized else None,
            block_sizes=self.block_sizes,
            min_alive=self.min_alive,
        )
        for alive, gone in zip(self.alive, pruned):
            alive &= ~gone
        return int(sum(g.sum() for g in pruned))

    def state_dict(self) -> dict:
        return {"ema_scores": self.ema_scores, "alive": self.alive}

    def load_state_dict(self, state: dict) -> None:
        self.ema_scores = [None if s is None else s.clone() for s in state["ema_scores"]]
        self.alive = [a.clone().bool() for a in state["alive"]]


# -- experts (mixture-of-experts blocks, `hf_tsprune.specs.ExpertGroup`) -------------------------------------------


@torch.no_grad()
def count_expert_tokens(model: torch.nn.Module, batches, forward=None) -> dict[str, torch.Tensor]:
    """Tokens routed to each expert of every mixture-of-experts block over `batches` (no gradients): the paper's
    expert-usage statistics (run it over the train and validation windows).

    Args:
        model (`nn.Module`): a model whose spec has `ExpertGroup`s (run in its current train/eval mode).
        batches (iterable of `dict`): forward arguments (e.g. a `DataLoader` with the family's `ForecastCollator`).
        forward (`Callable[[dict], Any]`, *optional*): runs the model on one batch (default `model(**batch)`).

    Returns:
        Block name -> `(num_experts,)` token counts (CPU, long).
    """
    from .masks import install_expert_gates, remove_expert_gates

    install_expert_gates(model, gates=False)
    try:
        for batch in batches:
            forward(batch) if forward is not None else model(**batch)
    finally:
        counts = remove_expert_gates(model)
    return counts


def expert_usage(tokens: torch.Tensor, top_k: int) -> torch.Tensor:
    """Per-layer usage relative to top-k: the fraction of the layer's tokens routed to each expert, divided by `top_k`
    (each token goes to `top_k` experts, so a layer's usages sum to 1; uniform routing gives `1 / num_experts`, an
    expert no token reached 0)."""
    total = tokens.sum()
    if total == 0:
        return torch.zeros(tokens.shape, dtype=torch.float64)
    return tokens.double() / total.double()  # = (tokens / num_tokens) / top_k, as sum(tokens) = num_tokens * top_k


def experts_to_keep(scores: torch.Tensor, threshold: float, top_k: int) -> torch.Tensor:
    """Which experts of one layer stay: those scored above `threshold` (usage, or Taylor score); a negative `threshold`
    keeps only the `top_k` best; a layer always keeps at least `top_k` experts (the best, ties to the lower index),
    because routing picks `top_k` of them. Unscored experts (NaN: never used) count as the lowest.

    Args:
        scores (`torch.Tensor`): `(num_experts,)` usage ([`expert_usage`]) or EMA Taylor scores ([`ExpertTaylorScorer`]).
        threshold (`float`): experts at or below it go (`0` with usage: only the experts no token reached).
        top_k (`int`): experts per token.

    Returns:
        `(num_experts,)` bool, True = kept.
    """
    scores = torch.nan_to_num(scores.double(), nan=-math.inf)
    order = sorted(range(scores.numel()), key=lambda e: (-float(scores[e]), e))
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    if threshold >= 0:
        keep = scores > threshold
    keep[order[: min(top_k, scores.numel())]] = True
    return keep


class ExpertTaylorScorer:
    """First-order (Taylor) score of removing each whole expert, `s = -grad(gate) * gate` per optimizer step on the
    gates of [`hf_tsprune.masks.install_expert_gates`], smoothed with the channel scores' EMA; an expert that received
    no token in a step is *unused* there (its EMA keeps its previous value) rather than scored 0, which would
    spuriously prune experts that are merely idle in some steps (the paper's fix). Experts never used keep NaN.

    Args:
        blocks (`list[ExpertBlock]`): the installed expert blocks.
        ema (`float`): EMA weight of the newest step's score, in (0, 1].
    """

    def __init__(self, blocks, ema: float = 0.3):
        self.blocks = blocks
        self.ema = ema
        self.scores = {b.name: torch.full((b.num_experts,), math.nan, dtype=torch.float64) for b in blocks}

    @torch.no_grad()
    def step(self) -> None:
        """Scores the current step from the gates' gradients (call after `backward`), then resets the gradients and
        token counters."""
        for block in self.blocks:
            used = block.tokens.cpu() > 0
            grad = block.gate.grad
            if grad is None:
                grad = torch.zeros_like(block.gate)
            step = (-grad * block.gate).detach().double().cpu()
            previous = self.scores[block.name]
            smoothed = torch.where(torch.isnan(previous), step, self.ema * step + (1 - self.ema) * previous)
            self.scores[block.name] = torch.where(used, smoothed, previous)
            block.gate.grad = None
            block.tokens.zero_()

    def keep(self, threshold: float) -> dict[str, torch.Tensor]:
        """Per block, the experts to keep under `threshold` ([`experts_to_keep`])."""
        return {b.name: experts_to_keep(self.scores[b.name], threshold, b.top_k) for b in self.blocks}
