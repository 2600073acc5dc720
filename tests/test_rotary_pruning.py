"""Rotary query/key head-dimension pruning (`AttentionGroup.rotary_pairs_attr`), on hf_tsprune's own Timer-XL
attention (`hf_tsprune.models.timer_xl.TimerAttention`, which follows the attention contract) in its multi-head form
and turned grouped-query (its forward reads every shape from the module's attributes), and on Time-MoE's grouped-query
attention (an ad-hoc spec: its family is another file's).

What is checked: a pair mask zeroes both channels `(i, i + d/2)` of every query head of its key/value group; masked
and shrunk models agree at 30/50/70 % of the pairs (and with value channels, heads and feed-forward channels pruned
too); every kept head keeps the same number of pairs, masked ones padded as exact zero query rows; a layer with every
pair masked keeps one zero pair; a head removed whole loses its pairs; a second prune indexes the original
frequencies; the plan's parameter counts equal the shrunk model's; the layout rebuilds the shapes and the
`rotary_pairs` buffer loads with the weights.
"""

import json

import pytest
import torch
from test_surgery import params, random_masks
from torch import nn

from hf_tsprune import get_spec, install_masks, make_plan, set_masks, shrink
from hf_tsprune.checkpoint_code import apply_pruned_layout
from hf_tsprune.masks import get_masks, masked_groups, remove_masks
from hf_tsprune.models.timer_xl import TimerConfig, TimerForPrediction
from hf_tsprune.specs import ArchitectureSpec, contract_attention_group
from hf_tsprune.surgery import apply_layout

TINY = dict(
    input_token_len=4, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    output_token_lens=[4, 8], max_position_embeddings=64,
)  # fmt: skip
PAIRS = 8  # head dim 16


def grouped_query(model: TimerForPrediction, kv_heads: int, seed: int = 0) -> TimerForPrediction:
    """Turns every attention layer of a Timer-XL into grouped-query attention with `kv_heads` key/value heads (new
    random key/value projections): its forward reads the head counts from the module's attributes."""
    generator = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        attention = layer.self_attn
        hidden = attention.q_proj.in_features
        attention.num_key_value_heads = kv_heads
        attention.num_key_value_groups = attention.num_heads // kv_heads
        for name in ("k_proj", "v_proj"):
            new = nn.Linear(hidden, kv_heads * attention.head_dim, bias=True)
            with torch.no_grad():
                new.weight.copy_(torch.randn(new.weight.shape, generator=generator) * 0.3)
                new.bias.copy_(torch.randn(new.bias.shape, generator=generator) * 0.3)
            setattr(attention, name, new)
    return model


def build(kv_heads: int | None = None, seed: int = 0) -> TimerForPrediction:
    torch.manual_seed(seed)
    model = TimerForPrediction(TimerConfig(**TINY)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)  # large enough that every rotary pair moves the attention
    return grouped_query(model, kv_heads, seed) if kv_heads else model


def inputs(batch: int = 3) -> dict:
    return {"input_ids": torch.randn(batch, 32, generator=torch.Generator().manual_seed(7))}


def forecast(model) -> torch.Tensor:
    with torch.no_grad():
        return get_spec(model).forecast(model, inputs())


def only_pairs(model, fraction: float, seed: int = 0) -> dict:
    """`fraction` of every layer's rotary pairs masked at random; value channels and feed-forward channels kept."""
    masks = random_masks(model, fraction, seed)
    return {k: v if k.endswith(".q_proj") else torch.ones_like(v) for k, v in masks.items()}


def check_shrink(model, masks: dict, **kwargs):
    """Masked vs shrunk forecasts (relative error), parameters vs the plan, no mask left; returns the plan."""
    set_masks(model, masks)
    expected = forecast(model)
    planned = make_plan(model, masks, **kwargs)
    plan = shrink(model, **kwargs)
    shrunk = forecast(model)
    rel = ((shrunk - expected).abs().max() / expected.abs().max()).item()
    assert rel < 1e-5 and plan.max_rel_error < 1e-5, rel
    assert params(model) == plan.params_after == planned.params_after < plan.params_before
    assert not any(n.endswith("hf_tsprune_mask") for n, _ in model.named_parameters())
    json.loads(plan.to_json())
    return plan


def round_trip(model, kv_heads: int | None = None):
    """A fresh model given the layout (as stored in config.json) takes the shrunk state dict (with its
    `rotary_pairs` buffers) strictly and forecasts the same."""
    layout = json.loads(json.dumps(model.config.hf_tsprune_layout))
    fresh = apply_layout(build(kv_heads, seed=9), layout)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(forecast(model), forecast(fresh.eval()))
    return layout


def test_pair_mask_zeroes_both_halves_in_every_query_head_of_its_group():
    """Masking pair `j` of key/value head `h` is zeroing query channels `j` and `j + d/2` of the query heads of `h`:
    the same function as the model without masks whose query rows (weights and biases) of that pair are zero."""
    model = build(kv_heads=2)
    reference = build(kv_heads=2)
    install_masks(model)
    group = next(g for g in masked_groups(model) if g.kind == "rotary")
    assert group.name == "model.layers.0.self_attn.q_proj" and group.owner == "model.layers.0.self_attn"
    assert (group.num_kv_heads, group.head_dim, group.kv_groups, group.num_units) == (2, PAIRS, 2, 16)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks[group.name].view(2, PAIRS)[1, 3] = False  # pair 3 of kv head 1: query heads 2 and 3, channels 3 and 11
    set_masks(model, masks)
    seen = {}
    handle = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.update(q=out))
    masked = forecast(model)
    handle.remove()
    query = seen["q"].view(3, 8, 4, 2 * PAIRS)
    zero = torch.zeros(4, 2 * PAIRS, dtype=torch.bool)
    zero[2:, [3, 3 + PAIRS]] = True
    assert bool((query[..., zero] == 0).all()) and bool((query[..., ~zero] != 0).all())
    rows = zero.flatten()
    with torch.no_grad():
        reference.model.layers[0].self_attn.q_proj.weight[rows] = 0
        reference.model.layers[0].self_attn.q_proj.bias[rows] = 0
    torch.testing.assert_close(masked, forecast(reference), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(masked, forecast(build(kv_heads=2)), rtol=1e-4, atol=1e-4)  # the pair mattered


@pytest.mark.parametrize("kv_heads", [None, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_masked_equals_shrunk_pairs_only(fraction, kv_heads):
    model = build(kv_heads)
    install_masks(model)
    masks = only_pairs(model, fraction, seed=int(fraction * 10))
    plan = check_shrink(model, masks)
    for layer_index, layer in enumerate(model.model.layers):
        attention = layer.self_attn
        name = f"model.layers.{layer_index}.self_attn.q_proj"
        kept = masks[name].view(-1, PAIRS)
        count = int(kept.sum(1).max())
        rotary = next(g for g in plan.groups if g.name == name)
        assert (rotary.pairs_before, rotary.pairs_after, rotary.units_after) == (PAIRS, count, int(kept.sum()))
        assert attention.head_dim == 2 * count and attention.scaling == 16**-0.5  # the softmax scale of d = 16
        assert attention.v_head_dim == 16 and attention.num_heads == 4
        assert attention.q_proj.out_features == 4 * 2 * count
        assert attention.k_proj.out_features == attention.num_key_value_heads * 2 * count
        pairs = attention.rotary_pairs
        assert pairs.shape == (attention.num_key_value_heads, count) and pairs.dtype == torch.long
        for head in range(attention.num_key_value_heads):  # the kept pairs, padded with the lowest masked ones
            alive = torch.nonzero(kept[head]).flatten().tolist()
            assert set(alive) <= set(pairs[head].tolist()) and pairs[head].tolist() == sorted(pairs[head].tolist())
            padded = [j for j, p in enumerate(pairs[head].tolist()) if p not in alive]
            groups = attention.num_key_value_groups
            rows = [(head * groups + g) * 2 * count + j + half for g in range(groups) for j in padded
                    for half in (0, count)]  # fmt: skip
            assert bool((attention.q_proj.weight[rows] == 0).all()) and bool((attention.q_proj.bias[rows] == 0).all())
        assert f"model.layers.{layer_index}.self_attn.rotary_pairs" in model.state_dict()  # persistent
    layout = round_trip(model, kv_heads)
    assert layout["model.layers.0.self_attn"]["rotary_pairs"] == model.model.layers[0].self_attn.rotary_pairs.tolist()


@pytest.mark.parametrize("kv_heads", [None, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_masked_equals_shrunk_every_group(fraction, kv_heads):
    """Pairs, value channels (heads going whole when all theirs go) and feed-forward channels at once."""
    model = build(kv_heads)
    install_masks(model)
    masks = random_masks(model, fraction, seed=int(fraction * 10) + 1)
    plan = check_shrink(model, masks, allow_empty_blocks=True)
    assert {g.kind for g in plan.groups} == {"attention", "rotary", "mlp"}
    round_trip(model, kv_heads)


def test_every_pair_masked_keeps_one_zero_pair_per_head():
    """A layer with all its pairs masked has all-zero attention logits (uniform causal attention); the shrunk layer
    keeps one pair per head as zero query rows, which computes exactly that."""
    model = build(kv_heads=2)
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["model.layers.0.self_attn.q_proj"][:] = False
    plan = check_shrink(model, masks)
    attention = model.model.layers[0].self_attn
    assert attention.head_dim == 2 and attention.rotary_pairs.tolist() == [[0], [0]]
    assert bool((attention.q_proj.weight == 0).all()) and bool((attention.q_proj.bias == 0).all())
    assert next(g for g in plan.groups if g.name.endswith("0.self_attn.q_proj")).units_after == 0
    round_trip(model, 2)


def test_a_head_removed_whole_loses_its_pairs():
    model = build(kv_heads=2)
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["model.layers.1.self_attn"].view(2, 16)[0] = False  # kv head 0 (query heads 0, 1) goes
    masks["model.layers.1.self_attn.q_proj"].view(2, PAIRS)[1, [0, 5, 6]] = False  # kv head 1 keeps 5 pairs
    plan = check_shrink(model, masks)
    attention = model.model.layers[1].self_attn
    assert (attention.num_heads, attention.num_key_value_heads, attention.head_dim) == (2, 1, 10)
    assert attention.rotary_pairs.tolist() == [[1, 2, 3, 4, 7]]
    rotary = next(g for g in plan.groups if g.name == "model.layers.1.self_attn.q_proj")
    assert (rotary.heads_after, rotary.units_after, rotary.units_before) == (1, 5, 16)
    assert model.config.hf_tsprune_layout["model.layers.1.self_attn"] == {
        "kind": "attention", "num_kv_heads": 1, "v_head_dim": 16, "rotary_pairs": [[1, 2, 3, 4, 7]]
    }  # fmt: skip
    round_trip(model, 2)


def test_unpruned_pairs_leave_the_layout_and_buffers_alone():
    model = build()
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["model.layers.0.ffn_layer"][:10] = False
    check_shrink(model, masks)
    assert all(layer.self_attn.rotary_pairs is None and layer.self_attn.head_dim == 16 for layer in model.model.layers)
    assert "rotary_pairs" not in model.config.hf_tsprune_layout["model.layers.0.self_attn"]


def test_second_prune_indexes_the_original_pairs():
    model = build(kv_heads=2)
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    name = "model.layers.0.self_attn.q_proj"
    masks[name].view(2, PAIRS)[0, [1, 2]] = False
    masks[name].view(2, PAIRS)[1, [0, 7]] = False
    check_shrink(model, masks)
    attention = model.model.layers[0].self_attn
    assert attention.rotary_pairs.tolist() == [[0, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6]]
    install_masks(model)  # prune the shrunk model again: 6 pairs per head now, in the current numbering
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    assert masks[name].numel() == 2 * 6
    masks[name].view(2, 6)[0, [0, 5]] = False  # original pairs 0 and 7 of kv head 0
    masks[name].view(2, 6)[1, [1, 2, 3]] = False  # original pairs 2, 3, 4 of kv head 1 (one padded back)
    check_shrink(model, masks)
    assert attention.rotary_pairs.tolist() == [[3, 4, 5, 6], [1, 2, 5, 6]]
    assert model.config.hf_tsprune_layout["model.layers.0.self_attn"]["rotary_pairs"] == [[3, 4, 5, 6], [1, 2, 5, 6]]
    round_trip(model, 2)


def test_pair_costs_count_query_and_key_rows():
    model = build(kv_heads=2)
    groups = {g.name: g for g in install_masks(model)}
    rotary = groups["model.layers.0.self_attn.q_proj"]
    # a pair removes two query rows in each of the 2 query heads of its group and two key rows (weights + bias)
    assert bool((rotary.unit_cost == 2 * (2 * 65 + 65)).all())
    remove_masks(model)


def time_moe_spec() -> ArchitectureSpec:
    """Time-MoE's grouped-query attention with rotary pairs, as a family spec would name it (unregistered here: the
    Time-MoE family is another file's; `shrink(spec=...)` takes it)."""

    def example(model, batch_size=1, generator=None):
        return {"input_ids": torch.randn(batch_size, 24, generator=generator)}

    def run(model, inputs):
        return model(**inputs, use_cache=False, return_dict=True).logits

    return ArchitectureSpec(
        name="time_moe_attention",
        model_classes=("TimeMoeForPrediction",),
        groups=(contract_attention_group(keep_one_head=False),),
        example_inputs=example,
        forecast=run,
    )


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_time_moe_grouped_query_attention(fraction):
    """Time-MoE's own attention (`hf_tsprune.models.time_moe`: 4 query heads on 2 key/value heads of 16): masked vs
    shrunk with pairs, value channels and heads pruned; the layout rebuilds it."""
    time_moe = pytest.importorskip("hf_tsprune.models.time_moe", reason="hf_tsprune.models.time_moe is missing")
    spec = time_moe_spec()

    def build_time_moe(seed):
        torch.manual_seed(seed)
        config = time_moe.TimeMoeConfig(
            hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            num_experts=4, num_experts_per_tok=2, horizon_lengths=[1, 4], max_position_embeddings=64,
        )  # fmt: skip
        model = time_moe.TimeMoeForPrediction(config).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.3)
        return model

    model = build_time_moe(0)
    groups = install_masks(model, spec)
    rotary = [g for g in groups if g.kind == "rotary"]
    assert len(rotary) == 2 and all((g.num_kv_heads, g.kv_groups, g.head_dim) == (2, 2, PAIRS) for g in rotary)
    example = spec.example_inputs(model, 2, generator=torch.Generator().manual_seed(1))
    set_masks(model, random_masks(model, fraction, seed=int(fraction * 10)))
    with torch.no_grad():
        expected = spec.forecast(model, example)
    plan = shrink(model, allow_empty_blocks=True, spec=spec)
    with torch.no_grad():
        shrunk = spec.forecast(model, example)
    assert ((shrunk - expected).abs().max() / expected.abs().max()).item() < 1e-5
    assert params(model) == plan.params_after < plan.params_before
    attention = model.model.layers[0].self_attn
    assert attention.head_dim == 2 * next(g for g in plan.groups if g.kind == "rotary").pairs_after
    fresh = apply_pruned_layout(build_time_moe(9), json.loads(json.dumps(model.config.hf_tsprune_layout)),
                                spec.blocks(), {})  # fmt: skip
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(spec.forecast(fresh.eval(), example), shrunk)


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_the_query_key_head_dim_a_multiple(round_to):
    """`round_to` pads the kept pairs with masked ones (exact zero rows) so the head dim, twice the pairs, is a multiple
    of it (attention kernels such as FlashAttention want multiples of 8), capped at the original head dim."""
    model = build(2)
    install_masks(model)
    masks = only_pairs(model, 0.7, seed=3)
    plan = check_shrink(model, masks, round_to=round_to)
    for layer_index, layer in enumerate(model.model.layers):
        kept = int(masks[f"model.layers.{layer_index}.self_attn.q_proj"].view(-1, PAIRS).sum(1).max())
        head_dim = layer.self_attn.head_dim
        assert head_dim % round_to == 0 and 2 * kept <= head_dim < 2 * kept + round_to
    assert plan.params_after < plan.params_before
    round_trip(model, 2)
