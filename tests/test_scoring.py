import pytest
import torch

from hf_tsprune.scoring import (
    PruningConfig,
    TaylorScorer,
    channels_to_prune_at_step,
    ema_update,
    max_pruned_units,
    select_units_to_prune,
    taylor_scores,
)


def test_taylor_score_hand_computed():
    # y = sum(w * x * m), loss = y  =>  d loss / d m = w * x;  score = -w * x * m
    w, x = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 3.0, -4.0])
    m = torch.tensor([1.0, 1.0, 0.0], requires_grad=True)
    (w * x * m).sum().backward()
    assert torch.equal(m.grad, torch.tensor([2.0, -3.0, -2.0]))
    assert torch.equal(taylor_scores(m.grad, m), torch.tensor([-2.0, 3.0, 0.0]))


def test_ema():
    first = ema_update(None, torch.tensor([1.0, 2.0]), 0.3)
    assert torch.equal(first, torch.tensor([1.0, 2.0]))
    second = ema_update(first, torch.tensor([3.0, 0.0]), 0.3)
    assert torch.allclose(second, torch.tensor([0.3 * 3 + 0.7 * 1, 0.7 * 2]))
    assert torch.equal(ema_update(first, torch.tensor([5.0, 6.0]), 1.0), torch.tensor([5.0, 6.0]))


def test_global_threshold_and_deterministic_ties():
    scores = [torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.1, 0.1, 0.2])]
    alive = [torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)]
    out = select_units_to_prune(scores, alive, 2, min_alive=[0, 0])
    # three units tie at 0.1: group 0 first, then lower index within group 1
    assert out[0].tolist() == [False, True, False] and out[1].tolist() == [True, False, False]
    for _ in range(3):  # same answer every time
        again = select_units_to_prune(scores, alive, 2, min_alive=[0, 0])
        assert all(torch.equal(a, b) for a, b in zip(out, again))
    out = select_units_to_prune(scores, alive, 4, min_alive=[0, 0])
    assert out[0].tolist() == [False, True, False] and out[1].tolist() == [True, True, True]


def test_dead_units_and_min_alive():
    scores = [torch.tensor([0.0, 1.0, 2.0, 3.0])]
    alive = [torch.tensor([False, True, True, True])]
    out = select_units_to_prune(scores, alive, 10, min_alive=[1])
    assert out[0].tolist() == [False, True, True, False]  # dead unit untouched, one unit kept


def test_cost_normalised_mode():
    scores = [torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.5])]
    alive = [torch.ones(2, dtype=torch.bool)] * 2
    costs = [torch.full((2,), 100.0), torch.full((2,), 1.0)]
    raw = select_units_to_prune(scores, alive, 1, min_alive=[0, 0])
    assert raw[1].tolist() == [True, False] and not raw[0].any()
    per_param = select_units_to_prune(scores, alive, 1, costs=costs, min_alive=[0, 0])
    assert per_param[0].tolist() == [True, False] and not per_param[1].any()  # 2/100 < 1/1


def test_round_to_blocks():
    torch.manual_seed(0)
    scores = [torch.rand(16), torch.rand(6)]
    alive = [torch.ones(16, dtype=torch.bool), torch.ones(6, dtype=torch.bool)]
    for n in range(1, 12):
        out = select_units_to_prune(scores, alive, n, block_sizes=[4, 1], min_alive=[4, 1])
        kept = 16 - int(out[0].sum())
        assert kept % 4 == 0 and kept >= 4
        if out[0].any():  # the block holds the lowest-scored channels of the group
            assert scores[0][out[0]].max() <= scores[0][~out[0]].min()
    # a width that is not a multiple first loses the remainder
    out = select_units_to_prune(
        [torch.rand(10)], [torch.ones(10, dtype=torch.bool)], 1, block_sizes=[4], min_alive=[4]
    )
    assert int(out[0].sum()) == 2


def test_scorer_schedule_math():
    config = PruningConfig(ratio_per_epoch=0.5, ema=1.0, min_units_per_group=0)
    scorer = TaylorScorer(config, [4, 4], [torch.ones(4), torch.ones(4)], [True, False])
    scorer.update([torch.tensor([-1.0, -2, -3, -4]), torch.tensor([-0.5, -5, -6, -7])], [torch.ones(4)] * 2)
    assert scorer.prune(3) == 3
    assert scorer.alive[0].tolist() == [False, False, True, True] and scorer.alive[1].tolist() == [
        False,
        True,
        True,
        True,
    ]
    assert scorer.sparsity == pytest.approx(3 / 8)
    state = scorer.state_dict()
    other = TaylorScorer(config, [4, 4], [torch.ones(4), torch.ones(4)], [True, False])
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.alive, scorer.alive))


def _epoch_of_steps(alive, steps_per_epoch, ratio_per_epoch=0.3, total_units=None, max_sparsity=0.9):
    """The per-step budgets of one epoch, applied as the callback applies them (every due channel goes)."""
    total_units = alive if total_units is None else total_units
    budgets, pruned, num_alive = [], 0, alive
    for step in range(steps_per_epoch):
        budget = channels_to_prune_at_step(
            ratio_per_epoch=ratio_per_epoch, alive_at_epoch_start=alive, pruned_this_epoch=pruned,
            step_in_epoch=step, steps_per_epoch=steps_per_epoch, total_units=total_units, num_alive=num_alive,
            max_sparsity=max_sparsity,
        )  # fmt: skip
        removed = max(budget, 0)
        budgets.append(budget)
        pruned, num_alive = pruned + removed, num_alive - removed
    return budgets


def test_per_step_budget_spreads_the_epoch_ratio_evenly():
    # 0.3 of 100 alive channels over 10 steps: 3 per step; over 4 steps the rounded running total spreads the 30
    assert _epoch_of_steps(100, 10) == [3] * 10
    assert _epoch_of_steps(100, 4) == [8, 7, 7, 8]  # running totals round(7.5, 15, 22.5, 30): 8, 15, 22, 30
    assert sum(_epoch_of_steps(37, 7)) == round(0.3 * 37)
    assert _epoch_of_steps(10, 1) == [3]  # one step per epoch takes the whole ratio at once
    # fewer channels due than steps: nothing at some steps, never negative in total
    assert _epoch_of_steps(5, 4, ratio_per_epoch=0.2) == [0, 0, 1, 0]  # round(0.25, 0.5, 0.75, 1.0)


def test_per_step_budget_stops_at_max_sparsity():
    assert max_pruned_units(10, 0.3) == 3 and max_pruned_units(7, 0.5) == 3
    # 88 of 100 channels gone, max_sparsity 0.9: only 2 more may go even though the schedule asks for 4
    budget = channels_to_prune_at_step(
        ratio_per_epoch=0.5, alive_at_epoch_start=12, pruned_this_epoch=0, step_in_epoch=1, steps_per_epoch=3,
        total_units=100, num_alive=12, max_sparsity=0.9,
    )  # fmt: skip
    assert budget == 2
    assert _epoch_of_steps(20, 2, ratio_per_epoch=0.5, total_units=100, max_sparsity=0.85) == [5, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratio_per_epoch=0.0), "ratio_per_epoch"),
        (dict(ratio_per_epoch=1.0), "ratio_per_epoch"),
        (dict(ema=0.0), "ema"),
        (dict(ema=1.5), "ema"),
        (dict(max_sparsity=1.0), "max_sparsity"),
        (dict(round_to=0), "round_to"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**kwargs)


def test_importance_functions_score_every_unit():
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    from hf_tsprune import install_masks
    from hf_tsprune.scoring import IMPORTANCE, magnitude_importance, random_importance

    torch.manual_seed(0)
    config = PatchTSTConfig(context_length=32, prediction_length=8, num_input_channels=1, patch_length=8,
                            patch_stride=8, d_model=16, num_attention_heads=4, num_hidden_layers=1, ffn_dim=32)  # fmt: skip
    model = PatchTSTForPrediction(config)
    groups = install_masks(model)
    grads = [torch.randn(g.num_units) for g in groups]
    scores = magnitude_importance(groups, grads, torch.Generator())
    mlp = next(i for i, g in enumerate(groups) if g.group.kind == "mlp")
    ff = groups[mlp]
    producer = ff.module.get_submodule(ff.group.producers[0])
    expected = (
        producer.weight.pow(2).sum(1) + producer.bias.pow(2) + ff.consumer.weight.pow(2).sum(0)
    ).sqrt()  # one producer (fc1) row with its bias, one consumer (fc2) column
    assert torch.allclose(scores[mlp], expected.detach())
    attention = next(i for i, g in enumerate(groups) if g.group.kind != "mlp")
    at = groups[attention]
    v = at.module.get_submodule(at.group.v)
    expected = (v.weight.pow(2).sum(1) + v.bias.pow(2) + at.consumer.weight.pow(2).sum(0)).sqrt()
    assert torch.allclose(scores[attention], expected.detach())
    with torch.no_grad():
        groups[mlp].mask[:3] = 0
    assert (magnitude_importance(groups, grads, torch.Generator())[mlp][:3] == 0).all()  # pruned units score 0
    first = random_importance(groups, grads, torch.Generator().manual_seed(1))
    again = random_importance(groups, grads, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and first[0].shape == (groups[0].num_units,)
    taylor = IMPORTANCE["taylor"](groups, grads, torch.Generator())
    assert torch.equal(taylor[0], -(grads[0] * groups[0].mask.detach()))
    with pytest.raises(ValueError, match="importance='fisher' is not one of"):
        PruningConfig(importance="fisher")
    with pytest.raises(ValueError, match="min_sparsity=0.95 must lie in"):
        PruningConfig(min_sparsity=0.95)


def test_scorer_ranks_by_absolute_ema_and_skips_groups_without_gradient():
    """The authors' implementation ranks |EMA(-grad * mask)|: a large negative first-order term marks an important
    channel, not a free one; a group whose mask got no gradient in a step keeps its EMA and its channels."""
    scorer = TaylorScorer(PruningConfig(ema=1.0), [4, 3], [torch.ones(4), torch.ones(3)], [False, False])
    scorer.update_scores([torch.tensor([-5.0, 0.1, 2.0, -0.05]), torch.tensor([0.0, 0.0, 0.0])], used=[True, False])
    assert scorer.ema_scores[1] is None  # never used: never scored
    assert scorer.prune(2, eligible=[True, False]) == 2
    assert scorer.alive[0].tolist() == [True, False, True, False] and scorer.alive[1].all()
    scorer.update_scores([torch.tensor([9.0, 9.0, 9.0, 9.0]), torch.tensor([0.3, -0.2, 0.1])], used=[True, True])
    assert scorer.prune(1) == 1 and scorer.alive[1].tolist() == [True, True, False]  # |0.1| is the lowest
