"""Moirai 1.x (`uni2ts`'s `MoiraiModule` in `hf_tsprune.families.moirai.MoiraiForPrediction`): exact shrink (tiny and
released widths) with the per-head variate bias cut with the heads, a layer with no head kept in place, the adapter,
prune -> shrink -> finetune on the MSE of the predictive mean, and pruned checkpoints: saved, reloaded in a fresh
process with identical forecasts, and refused loudly where a tensor does not fit.

Released layouts (the `config.json` of the Hub checkpoints, written out here because the Hub is not reachable in tests;
written from the published model cards and configs, not read from a file here: check them against the Hub files when
it is reachable). For `benchmarks/speed.py` (issue 16) to add as rows:

- `Salesforce/moirai-1.0-R-small`: d_model 384, 6 layers (6 heads of 64), patch sizes 8/16/32/64/128, max_seq_len 512,
  no dropout, scaling, a mixture of Student-t, normal (fixed scale), negative binomial and log-normal (about 14 M
  parameters, as the Moirai paper's table says);
- `Salesforce/moirai-1.0-R-base`: d_model 768, 12 layers (about 91 M);
- `Salesforce/moirai-1.0-R-large`: d_model 1024, 24 layers (about 311 M).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_families import HORIZON, Windows
from test_surgery import check_exact_random_shrink, masked_vs_shrunk, params, random_masks
from transformers import Trainer, TrainingArguments

from hf_tsprune import (
    PruningCallback,
    PruningConfig,
    family_of,
    get_family,
    get_spec,
    install_masks,
    masked_groups,
    save_pruned,
    shrink,
)
from hf_tsprune.adapters import get_adapter
from hf_tsprune.masks import get_masks
from hf_tsprune.modeling import load_pruned
from hf_tsprune.training import ForecastCollator, training_label_names

pytest.importorskip("uni2ts")

MIXTURE = {
    "_target_": "uni2ts.distribution.mixture.MixtureOutput",
    "components": [
        {"_target_": "uni2ts.distribution.student_t.StudentTOutput"},
        {"_target_": "uni2ts.distribution.normal.NormalFixedScaleOutput", "scale": 0.001},
        {"_target_": "uni2ts.distribution.negative_binomial.NegativeBinomialOutput"},
        {"_target_": "uni2ts.distribution.log_normal.LogNormalOutput"},
    ],
}
"""Moirai 1.x's `distr_output` as its `config.json` writes it."""

MOIRAI_COMMON = dict(
    patch_sizes=[8, 16, 32, 64, 128], max_seq_len=512, attn_dropout_p=0.0, dropout_p=0.0, scaling=True
)
MOIRAI_1_0_R = {
    "small": dict(d_model=384, num_layers=6, **MOIRAI_COMMON),
    "base": dict(d_model=768, num_layers=12, **MOIRAI_COMMON),
    "large": dict(d_model=1024, num_layers=24, **MOIRAI_COMMON),
}
"""Released Moirai-1.0-R layouts (module arguments besides `distr_output`; see the module docstring)."""

TINY = dict(d_model=256, num_layers=2, patch_sizes=[8, 16], max_seq_len=64, attn_dropout_p=0.0, dropout_p=0.0)
"""4 heads of 64 (uni2ts: heads = d_model // 64), SwiGLU width 688."""

FORECAST = dict(prediction_length=HORIZON, context_length=32, patch_size=8)


def distribution_output():
    from uni2ts.model.moirai.module import decode_distr_output

    return decode_distr_output(json.loads(json.dumps(MIXTURE)))


def build(settings=TINY, seed: int = 0, forecast=FORECAST):
    from uni2ts.model.moirai import MoiraiModule

    from hf_tsprune.families.moirai import MoiraiForPrediction

    torch.manual_seed(seed)
    module = MoiraiModule(distr_output=distribution_output(), **settings)
    return MoiraiForPrediction(module, **forecast).eval()


def forecast(model, inputs):
    with torch.no_grad():
        return get_spec(model).forecast(model, inputs)


def test_family_lookups():
    model = build()
    family = get_family(model)
    assert family.name == family_of(model) == "moirai" and get_adapter(model) is family.adapter
    assert not family.has_pruned_classes and training_label_names(model) == ["future_values"]
    with pytest.raises(TypeError, match="not transformers models"):
        _ = family.pruned_model_class
    groups = {g.name: g for g in install_masks(model)}
    attention = groups["model.encoder.layers.0.self_attn"]
    assert (attention.num_kv_heads, attention.head_dim, groups["model.encoder.layers.0.ffn"].num_units) == (4, 64, 688)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_exact_shrink_tiny(fraction):
    check_exact_random_shrink(build(), fraction)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "base"])
def test_exact_shrink_released_widths(size):
    model = build(MOIRAI_1_0_R[size], forecast=dict(prediction_length=96, context_length=512, patch_size=32))
    install_masks(model)
    plan, rel, shrunk = masked_vs_shrunk(model, random_masks(model, 0.5), batch_size=2, count_model_flops=False)
    assert rel < 1e-5 and params(model) == plan.params_after < 0.8 * plan.params_before
    assert torch.isfinite(shrunk).all()


def every_change_masks(model) -> dict:
    """Layer 0's attention loses every head, layer 1's one head and a value channel of each other head, and layer
    1's feed-forward block goes entirely."""
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["model.encoder.layers.0.self_attn"][:] = False
    heads = masks["model.encoder.layers.1.self_attn"].view(4, 64)
    heads[2] = False
    heads[[0, 1, 3], 5] = False
    masks["model.encoder.layers.1.ffn"][:] = False
    return masks


def shrunk_with_every_change(seed: int = 0):
    model = build(seed=seed)
    install_masks(model)
    bias = model.model.encoder.layers[1].self_attn.var_attn_bias.emb.weight.detach().clone()
    plan, rel, _ = masked_vs_shrunk(model, every_change_masks(model), allow_empty_blocks=True)
    assert rel < 1e-5 and params(model) == plan.params_after
    return model.eval(), plan, bias


def test_heads_go_with_their_variate_bias():
    model, plan, bias = shrunk_with_every_change()
    empty = model.get_submodule("model.encoder.layers.0.self_attn")
    assert empty.num_heads == 0 and empty.q_proj.out_features == 0 and empty.var_attn_bias.emb.weight.shape == (2, 0)
    cut = model.get_submodule("model.encoder.layers.1.self_attn")
    assert (cut.num_heads, cut.num_groups, cut.var_attn_bias.num_heads, cut.v_proj.out_features) == (3, 3, 3, 189)
    assert torch.equal(cut.var_attn_bias.emb.weight, bias[:, [0, 1, 3]])  # the kept heads' own bias values
    assert cut.q_proj.out_features == cut.k_proj.out_features == 192  # query/key channels are not pruned
    assert model.model.encoder.layers[1].ffn.fc1.out_features == 0
    before = plan.groups[1]
    assert before.params_before - before.params_after == 4 * 256 * 64 + 3 * 2 * 256 + 2  # q/k/v/o of a head, 3
    # value channels (v row, out_proj column), the head's two variate bias values
    again = install_masks(model)  # a shrunk model prunes again (the emptied layer has no unit left)
    assert {g.name: g.num_units for g in again}["model.encoder.layers.0.self_attn"] == 0
    plan, rel, _ = masked_vs_shrunk(model, random_masks(model, 0.3, seed=2), allow_empty_blocks=True)
    assert rel < 1e-5 and params(model) == plan.params_after


def test_adapter_forecasts_every_channel():
    model = build()
    adapter = get_adapter(model)
    assert adapter.native_horizon(model) == HORIZON and adapter.max_context(model) == 32
    past = torch.randn(3, 28, 2) + 5.0  # shorter than the context: front-padded as missing
    observed = torch.ones_like(past)
    observed[0, :3] = 0
    dense = adapter.predict(model, past, observed)
    assert dense.mean.shape == (3, HORIZON, 2) and torch.isfinite(dense.mean).all()
    single = adapter.predict(model, past[:, :, 1:], observed[:, :, 1:]).mean
    assert torch.allclose(dense.mean[..., 1:], single, atol=1e-5)  # channels forecast one at a time
    install_masks(model)
    shrink(model, random_masks(model, 0.4, seed=1))
    assert adapter.predict(model, past, observed).mean.shape == dense.mean.shape


def test_prune_shrink_finetune_save_and_reload(tmp_path):
    model = build()
    install_masks(model)
    train, validation = Windows(32, 32, 1, 0), Windows(16, 32, 1, 1)
    common = dict(per_device_train_batch_size=8, label_names=training_label_names(model), report_to=[],
                  save_strategy="no", use_cpu=True, disable_tqdm=True, remove_unused_columns=False)  # fmt: skip
    callback = PruningCallback(PruningConfig(ratio_per_epoch=0.3, ema=0.5))
    prune_args = TrainingArguments(str(tmp_path / "prune"), num_train_epochs=1, eval_strategy="steps", eval_steps=2,
                                   max_grad_norm=0.0, learning_rate=1e-2, **common)  # fmt: skip
    trainer = Trainer(model=model, args=prune_args, train_dataset=train, eval_dataset=validation,
                      data_collator=ForecastCollator(model), callbacks=[callback])  # fmt: skip
    trainer.train()
    assert callback.history and all(torch.isfinite(torch.tensor(h["eval_loss"])) for h in callback.history)
    assert 0.2 < callback.scorer.sparsity <= 0.32
    assert all(g.mask.grad is None for g in masked_groups(model))
    plan = shrink(model)
    assert plan.max_rel_error < 1e-5 and params(model) == plan.params_after < plan.params_before
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune = Trainer(
        model=model.train(),
        args=TrainingArguments(str(tmp_path / "finetune"), max_steps=2, learning_rate=1e-3, **common),
        train_dataset=train,
        data_collator=ForecastCollator(model),
    )
    assert torch.isfinite(torch.tensor(finetune.train().training_loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    files = save_pruned(model, tmp_path / "model", base_model="Salesforce/moirai-tiny", plan=plan, seed=3)
    assert {"config.json", "model.safetensors"} <= set(files)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["base_model_type"] == "moirai" and config["pruning"]["params_after"] == params(model.model)
    assert config["pruning"]["params_before"] == params(build().model)
    loaded = load_pruned(tmp_path / "model")
    inputs = get_spec(model).example_inputs(model, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(forecast(loaded, inputs), forecast(model, inputs))


def test_a_checkpoint_that_does_not_fit_fails_loudly(tmp_path):
    from safetensors.torch import load_file, save_file
    from uni2ts.model.moirai import MoiraiModule

    model, plan, _ = shrunk_with_every_change()
    save_pruned(model, tmp_path, plan=plan)
    with pytest.raises(RuntimeError, match="size mismatch"):  # the dense class on the pruned weights
        MoiraiModule.from_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("encoder.layers.1.self_attn.var_attn_bias.emb.weight")
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="var_attn_bias"):  # a missing tensor is never left at its placeholder
        load_pruned(tmp_path)


FRESH_PROCESS = textwrap.dedent(
    """
    import sys

    import torch
    from safetensors.torch import load_file, save_file

    from hf_tsprune.modeling import load_pruned

    model = load_pruned(sys.argv[1])
    inputs = load_file(sys.argv[2])
    with torch.no_grad():
        out = model(**inputs)["prediction_outputs"]
    save_file({"output": out.contiguous()}, sys.argv[3])
    print(type(model).__name__)
    """
)


def test_fresh_process_reload(tmp_path):
    from safetensors.torch import load_file, save_file

    model, plan, _ = shrunk_with_every_change()
    save_pruned(model, tmp_path / "model", plan=plan)
    inputs = get_spec(model).example_inputs(model, 4, generator=torch.Generator().manual_seed(3))
    save_file(inputs, tmp_path / "inputs.safetensors")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "model"), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "MoiraiForPrediction"
    assert torch.equal(load_file(tmp_path / "out.safetensors")["output"], forecast(model, inputs))
