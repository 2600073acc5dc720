import json

import pytest
import torch
from models import DEFAULT, TINY, build

from hf_tsprune import EmptyAttention, get_spec, install_masks, make_plan, set_masks, shrink
from hf_tsprune.masks import get_masks


def random_masks(model, fraction: float, seed: int = 0) -> dict:
    """Prunes `fraction` of every group's channels at random."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, mask in get_masks(model).items():
        keep = torch.ones_like(mask)
        keep[torch.randperm(mask.numel(), generator=generator)[: round(fraction * mask.numel())]] = False
        masks[name] = keep
    return masks


def masked_vs_shrunk(model, masks, batch_size=3, **shrink_kwargs):
    spec = get_spec(model)
    inputs = spec.example_inputs(model, batch_size, generator=torch.Generator().manual_seed(7))
    set_masks(model, masks)
    with torch.no_grad():
        masked = spec.forecast(model, inputs)
    plan = shrink(model, **shrink_kwargs)
    with torch.no_grad():
        shrunk = spec.forecast(model, inputs)
    rel = ((shrunk - masked).abs().max() / masked.abs().max()).item()
    return plan, rel, shrunk


def params(model):
    return sum(p.numel() for p in model.parameters())


def check_exact_random_shrink(model, fraction: float, **shrink_kwargs):
    """Masks `fraction` of `model`'s channels at random, shrinks it and checks the shrink: same outputs, fewer
    parameters and FLOPs, no mask left, a JSON-able plan. Returns the plan."""
    install_masks(model)
    masks = random_masks(model, fraction, seed=int(fraction * 10))
    plan, rel, shrunk = masked_vs_shrunk(model, masks, **shrink_kwargs)
    assert rel < 1e-5 and plan.max_rel_error < 1e-5
    assert torch.isfinite(shrunk).all()
    assert params(model) == plan.params_after < plan.params_before
    assert plan.flops_after < plan.flops_before
    assert not any(n.endswith("hf_tsprune_mask") for n, _ in model.named_parameters())
    json.loads(plan.to_json())
    return plan


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", sorted(TINY))
def test_exact_shrink_tiny(name, fraction):
    plan = check_exact_random_shrink(build(name), fraction, allow_empty_blocks=True)
    assert "| block |" in str(plan)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DEFAULT))
def test_exact_shrink_released_layout(name):
    model = build(name, default=True)
    install_masks(model)
    plan, rel, shrunk = masked_vs_shrunk(model, random_masks(model, 0.5), batch_size=2)
    assert rel < 1e-5
    assert params(model) == plan.params_after
    assert plan.params_after < 0.8 * plan.params_before
    assert torch.isfinite(shrunk).all()


def test_whole_attention_block_needs_permission_and_stays_exact():
    model = build("timesfm")
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["decoder.layers.0.self_attn"][:] = False
    masks["decoder.layers.1.mlp"][:] = False  # a zero-width MLP is exact without any replacement
    set_masks(model, masks)
    with pytest.raises(ValueError, match="allow_empty_blocks=True"):
        make_plan(model)
    with pytest.raises(ValueError, match="allow_empty_blocks=True"):
        shrink(model)
    assert any(n.endswith("hf_tsprune_mask") for n, _ in model.named_parameters())  # nothing half-done
    plan, rel, _ = masked_vs_shrunk(model, masks, allow_empty_blocks=True)
    assert rel < 1e-6
    assert isinstance(model.decoder.layers[0].self_attn, EmptyAttention)
    assert model.decoder.layers[1].mlp.gate_proj.out_features == 0
    assert params(model) == plan.params_after


def test_heads_gqa_and_value_head_dim():
    model = build("timesfm2_5")  # 4 query heads, 2 kv heads, head_dim 4
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    attn = masks["model.layers.0.self_attn"].view(2, 4)
    attn[0] = False  # kv head 0 (and its 2 query heads) goes
    attn[1, :2] = False  # half of kv head 1's value channels go
    plan, rel, _ = masked_vs_shrunk(model, masks)
    assert rel < 1e-5
    layer = model.model.layers[0].self_attn
    assert layer.k_proj.out_features == 4 and layer.q_proj.out_features == 8
    assert layer.v_head_dim == 2 and layer.v_proj.out_features == 2 and layer.o_proj.in_features == 4
    group = plan.groups[0]
    assert (group.heads_before, group.heads_after, group.head_dim_after) == (2, 1, 2)


def test_timesfm_heads_and_value_head_dim():
    model = build("timesfm")  # 4 heads of 4
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    attn = masks["decoder.layers.1.self_attn"].view(4, 4)
    attn[2] = False
    attn[0, 0] = attn[1, 3] = attn[3, 1] = False  # every kept head loses one channel: value head dim 3
    plan, rel, _ = masked_vs_shrunk(model, masks)
    assert rel < 1e-5
    layer = model.decoder.layers[1].self_attn
    assert layer.num_heads == 3 and layer.v_head_dim == 3 and layer.o_proj.in_features == 9
    assert layer.q_proj.out_features == 12


def test_patchtst_partial_heads_stay_exact_as_zero_columns():
    model = build("patchtst")  # no value-head-dim forward: pruned channels of kept heads become zero columns
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    attn = masks["model.encoder.layers.0.self_attn"].view(4, 4)
    attn[1] = False
    attn[0, :2] = False
    plan, rel, _ = masked_vs_shrunk(model, masks)
    assert rel < 1e-5
    layer = model.model.encoder.layers[0].self_attn
    assert layer.num_heads == 3 and layer.out_proj.in_features == 12
    assert (layer.out_proj.weight[:, :2] == 0).all()


def test_round_to_rounds_widths_up_exactly():
    model = build("timesfm")
    install_masks(model)
    masks = random_masks(model, 0.5, seed=3)
    plan, rel, _ = masked_vs_shrunk(model, masks, round_to=8)
    assert rel < 1e-5
    assert model.decoder.layers[0].mlp.gate_proj.out_features % 8 == 0
    assert params(model) == plan.params_after


def test_layout_recorded_in_config():
    model = build("patchtsmixer")
    install_masks(model)
    plan, _, _ = masked_vs_shrunk(model, random_masks(model, 0.5))
    layout = model.config.hf_tsprune_layout
    assert layout == plan.layout
    some_mlp = next(k for k, v in layout.items() if v["kind"] == "mlp")
    assert model.get_submodule(some_mlp).fc1.out_features == layout[some_mlp]["width"]
    json.dumps(model.config.to_dict())


def test_shrink_with_external_masks_and_errors():
    model = build("patchtst")
    with pytest.raises(ValueError, match="No masks"):
        shrink(model)
    reference = build("patchtst")
    install_masks(reference)
    masks = random_masks(reference, 0.4)
    plan = shrink(model, masks, allow_empty_blocks=True)
    assert plan.max_rel_error < 1e-5 and params(model) == plan.params_after


@pytest.mark.parametrize("name", sorted(TINY))
def test_apply_layout_rebuilds_the_shrunk_shapes(name):
    from hf_tsprune.surgery import apply_layout

    model = build(name)
    install_masks(model)
    shrink(model, random_masks(model, 0.6, seed=2), allow_empty_blocks=True)
    fresh = apply_layout(build(name, seed=5), model.config.hf_tsprune_layout)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    fresh.load_state_dict(model.state_dict())
    spec = get_spec(model)
    inputs = spec.example_inputs(model, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(spec.forecast(model, inputs), spec.forecast(fresh, inputs))
    with pytest.raises(ValueError, match="does not match its base config"):
        apply_layout(build(name), {"no.such.block": {"kind": "mlp", "width": 1}})


def test_a_shrunk_model_with_an_empty_block_can_be_pruned_again():
    model = build("timesfm")
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["decoder.layers.0.self_attn"][:] = False
    shrink(model, masks, allow_empty_blocks=True)
    groups = install_masks(model)
    assert "decoder.layers.0.self_attn" not in {g.name for g in groups}
    plan, rel, _ = masked_vs_shrunk(model, random_masks(model, 0.3), allow_empty_blocks=True)
    assert rel < 1e-5 and params(model) == plan.params_after
