"""peft on pruned models: LoRA on the shrunk layers, one training step, merge, save, reload."""

import pytest
import torch
from models import build
from peft import LoraConfig, PeftModel, get_peft_model
from test_surgery import random_masks
from transformers import AutoModelForTimeSeriesPrediction

from hf_tsprune import get_spec, install_masks, is_pruned_model, shrink, to_pruned_model

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

CASES = {
    # LoRA target modules (explicit: peft has no default targets for these architectures)
    "timesfm2_5": ["q_proj", "v_proj", "o_proj", "fc1", "fc2"],
    "patchtst": ["q_proj", "v_proj", "out_proj", "ff.0", "ff.3"],
}


def batch(model, name):
    spec = get_spec(model)
    inputs = spec.example_inputs(model, 2, generator=torch.Generator().manual_seed(1))
    horizon = model.config.horizon_length if name == "timesfm2_5" else model.config.prediction_length
    shape = (2, horizon) if name == "timesfm2_5" else (2, horizon, model.config.num_input_channels)
    return inputs, torch.randn(*shape, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", sorted(CASES))
def test_lora_train_merge_save_reload(name, tmp_path):
    model = build(name)
    install_masks(model)
    plan = shrink(model, random_masks(model, 0.4, seed=1))
    if name == "timesfm2_5":
        assert any(g.head_dim_after < g.head_dim_before for g in plan.groups if g.kind == "attention")
    to_pruned_model(model, base_model=f"org/{name}", plan=plan)
    spec = get_spec(model)
    inputs, future = batch(model, name)
    with torch.no_grad():
        before = spec.forecast(model, inputs)

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=CASES[name], lora_dropout=0.0))
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    loss = peft_model(**inputs, future_values=future).loss
    loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        adapted = spec.forecast(peft_model, inputs)
    assert not torch.allclose(adapted, before)  # the step changed the model

    peft_model.save_pretrained(tmp_path / "adapter")  # adapters alone, on top of the pruned checkpoint
    merged = peft_model.merge_and_unload()
    assert is_pruned_model(merged)
    with torch.no_grad():
        merged_out = spec.forecast(merged.eval(), inputs)
    torch.testing.assert_close(merged_out, adapted, rtol=1e-4, atol=1e-5)

    merged.save_pretrained(tmp_path / "merged")
    reloaded, info = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        assert torch.equal(spec.forecast(reloaded.eval(), inputs), merged_out)
    assert not any("lora" in k for k in reloaded.state_dict())


def test_adapter_on_reloaded_pruned_checkpoint(tmp_path):
    """Save the pruned model, train LoRA on it, save the adapter; reload both and get the adapted outputs."""
    model = build("timesfm2_5")
    install_masks(model)
    shrink(model, random_masks(model, 0.4, seed=2))
    to_pruned_model(model).save_pretrained(tmp_path / "pruned")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "fc1"], lora_dropout=0.0))
    inputs, future = batch(model, "timesfm2_5")
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model(**inputs, future_values=future).loss.backward()
    optimizer.step()
    peft_model.save_pretrained(tmp_path / "adapter")
    spec = get_spec(model)
    with torch.no_grad():
        expected = spec.forecast(peft_model.eval(), inputs)
    base = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "pruned")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(spec.forecast(reloaded, inputs), expected)
    with pytest.raises(TypeError, match="merge_and_unload"):
        to_pruned_model(reloaded)
