import pytest
import torch
from models import TINY, build
from torch import nn

from hf_tsprune import ArchitectureSpec, MLPGroup, get_spec, install_masks, remove_masks
from hf_tsprune.masks import MASK_NAME, get_masks, masked_groups, set_masks


@pytest.mark.parametrize("name", sorted(TINY))
def test_install_then_remove_keeps_function(name):
    model = build(name)
    spec = get_spec(model)
    inputs = spec.example_inputs(model, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = spec.forecast(model, inputs)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    groups = install_masks(model)
    assert groups and all(g.mask.requires_grad for g in groups)
    mask_names = {n for n, _ in model.named_parameters() if n.endswith(MASK_NAME)}
    assert len(mask_names) == len(groups)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n not in mask_names)  # weights frozen
    with torch.no_grad():  # x * 1 is exact; only the matmul kernel may differ (contiguous vs strided input)
        torch.testing.assert_close(spec.forecast(model, inputs), before, rtol=1e-6, atol=1e-6)
    masks = remove_masks(model)
    assert all(m.all() for m in masks.values())
    assert not any(n.endswith(MASK_NAME) for n, _ in model.named_parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    with torch.no_grad():
        assert torch.equal(spec.forecast(model, inputs), before)


def test_masks_zero_channels_and_round_trip():
    model = build("patchtst")
    install_masks(model)
    masks = {name: torch.ones_like(m) for name, m in get_masks(model).items()}
    first = next(iter(masks))
    masks[first][:3] = False
    set_masks(model, masks)
    assert torch.equal(get_masks(model)[first], masks[first])
    with pytest.raises(ValueError, match="shape"):
        set_masks(model, {first: torch.ones(1)})
    with pytest.raises(ValueError, match="unknown blocks"):
        set_masks(model, {"nope": torch.ones(1)})
    with pytest.raises(ValueError, match="already installed"):
        install_masks(model)


def test_gradient_of_tied_mask_is_removal_effect():
    """The mask gradient equals the first-order change of the loss when the channel is removed everywhere."""
    model = build("patchtst")
    spec = get_spec(model)
    groups = install_masks(model)
    inputs = spec.example_inputs(model, 2, generator=torch.Generator().manual_seed(1))
    loss = spec.forecast(model, inputs).pow(2).mean()
    loss.backward()
    ffn = next(g for g in groups if g.group.kind == "mlp")
    channel = 5
    with torch.no_grad():
        ffn.mask[channel] = 1 - 1e-3
        nudged = spec.forecast(model, inputs).pow(2).mean()
    finite_difference = (loss - nudged) / 1e-3
    assert torch.allclose(ffn.mask.grad[channel], finite_difference, rtol=1e-2, atol=1e-6)


def test_unsupported_and_nothing_prunable():
    with pytest.raises(TypeError, match="Supported: .*TimesFmModelForPrediction.*register_family"):
        install_masks(nn.Sequential(nn.Linear(2, 2)))
    bogus = ArchitectureSpec(
        "x", ("Sequential",), (MLPGroup("nomatch", ("0",), "1"),), lambda m, b: {}, lambda m, i: None
    )
    with pytest.raises(ValueError, match="nothing prunable"):
        install_masks(nn.Sequential(nn.Linear(2, 2)), spec=bogus)
    with pytest.raises(ValueError, match="install_masks"):
        masked_groups(build("timesfm"))
