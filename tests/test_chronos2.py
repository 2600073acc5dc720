"""Chronos-2 (`chronos.chronos2.Chronos2Model`): exact shrink (tiny and released widths), a block with no head kept in
place, the multivariate adapter, prune -> shrink -> finetune with its own quantile loss, pruned checkpoints in
`Chronos2Pipeline` and in a fresh process (with hf_tsprune, and with transformers alone through remote code)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_families import Windows, check_prune_shrink_finetune
from test_surgery import check_exact_random_shrink, masked_vs_shrunk, params, random_masks
from transformers import AutoModelForTimeSeriesPrediction

from hf_tsprune import (
    family_of,
    get_family,
    get_spec,
    install_masks,
    save_pruned,
    shrink,
)
from hf_tsprune.adapters import get_adapter
from hf_tsprune.evaluation import load_chronos_pipeline
from hf_tsprune.masks import get_masks
from hf_tsprune.training import training_label_names

pytest.importorskip("chronos")

QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
HORIZON = 8  # the Windows of test_families

TINY = dict(
    d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, dropout_rate=0.0,
    chronos_config={"context_length": 32, "input_patch_size": 4, "input_patch_stride": 4, "output_patch_size": 4,
                    "quantiles": QUANTILES, "use_reg_token": True, "max_output_patches": 2},
)  # fmt: skip

# Chronos-2 (amazon/chronos-2, 120 M) widths: d_model 768, d_ff 3072, 12 layers of 12 heads of 64, patches of 16,
# 21 quantiles, a [REG] token. Written from the published model card's description (the Hub is not reachable here);
# the context is shortened from 8192 to 512 steps so that the check runs in seconds (it changes no weight shape).
RELEASED = dict(
    d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, dropout_rate=0.1,
    chronos_config={"context_length": 512, "input_patch_size": 16, "input_patch_stride": 16, "output_patch_size": 16,
                    "quantiles": [0.01, 0.05] + [round(0.1 * i, 1) for i in range(1, 10)] + [0.95, 0.99],
                    "use_reg_token": True, "use_arcsinh": True, "max_output_patches": 64},
)  # fmt: skip


def build(settings=TINY, seed: int = 0):
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    torch.manual_seed(seed)
    return Chronos2Model(Chronos2CoreConfig(**json.loads(json.dumps(settings)))).eval()


def forecast(model, inputs):
    with torch.no_grad():
        return get_spec(model).forecast(model, inputs)


def test_family_lookups():
    model = build()
    family = get_family(model)
    assert family.name == family_of(model.config) == "chronos2" and get_adapter(model) is family.adapter
    assert training_label_names(model) == ["future_target"]
    saved = dict(model.config.to_dict(), architectures=["Chronos2Model"])
    from transformers import T5Config

    assert family_of(T5Config.from_dict(saved)) == "chronos2"  # AutoConfig reads a Chronos-2 config.json as t5
    assert family_of(T5Config.from_dict({**saved, "architectures": None})) == "chronos2"  # by its chronos_config


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_exact_shrink_tiny(fraction):
    check_exact_random_shrink(build(), fraction)


@pytest.mark.slow
def test_exact_shrink_released_widths():
    model = build(RELEASED)
    assert params(model) > 100_000_000
    install_masks(model)
    plan, rel, shrunk = masked_vs_shrunk(model, random_masks(model, 0.5), batch_size=2, count_model_flops=False)
    assert rel < 1e-5 and params(model) == plan.params_after < 0.8 * plan.params_before
    assert torch.isfinite(shrunk).all()


def every_change_masks(model) -> dict:
    """The first time attention loses every head, the second group attention one head and a value channel of each
    other head, and one feed-forward block goes entirely."""
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["encoder.block.0.layer.0.self_attention"][:] = False
    heads = masks["encoder.block.1.layer.1.self_attention"].view(4, 4)
    heads[2] = False
    heads[[0, 1, 3], 1] = False
    masks["encoder.block.1.layer.2.mlp"][:] = False
    return masks


def shrunk_with_every_change():
    model = build()
    install_masks(model)
    plan, rel, _ = masked_vs_shrunk(model, every_change_masks(model), allow_empty_blocks=True)
    assert rel < 1e-5
    return model.eval(), plan


def test_a_block_with_no_head_stays_in_place():
    model, plan = shrunk_with_every_change()
    empty = model.get_submodule("encoder.block.0.layer.0.self_attention")
    assert type(empty).__name__ == "MHA" and empty.n_heads == 0 and empty.q.out_features == 0
    cut = model.get_submodule("encoder.block.1.layer.1.self_attention")
    assert cut.n_heads == 3 and cut.inner_dim == 12 and cut.v_head_dim == 3 and cut.o.in_features == 9
    assert model.config.hf_tsprune_layout["encoder.block.0.layer.0.self_attention"]["num_kv_heads"] == 0
    again = install_masks(model)  # a shrunk model prunes again (the emptied block has no unit left)
    assert {g.name: g.num_units for g in again}["encoder.block.0.layer.0.self_attention"] == 0
    plan, rel, _ = masked_vs_shrunk(model, random_masks(model, 0.3, seed=2), allow_empty_blocks=True)
    assert rel < 1e-5 and params(model) == plan.params_after


def test_adapter_forecasts_every_channel_of_a_group():
    model = build()
    adapter = get_adapter(model)
    assert adapter.native_horizon(model) == 8 and adapter.max_context(model) == 32
    past = torch.randn(3, 28, 2) + 5.0  # shorter than the context, two channels forecast jointly
    observed = torch.ones_like(past)
    observed[0, :3] = 0
    dense = adapter.predict(model, past, observed)
    assert dense.mean.shape == (3, 8, 2) and dense.quantiles.shape == (3, 8, 2, 9) and torch.isfinite(dense.mean).all()
    # one group per window: the second channel's forecast depends on the first channel's history
    changed = past.clone()
    changed[:, :, 0] = torch.randn(3, 28, generator=torch.Generator().manual_seed(9))  # (not an affine change:
    # each series is normalised by its own location and scale)
    assert not torch.allclose(adapter.predict(model, changed, observed).mean[..., 1], dense.mean[..., 1])
    install_masks(model)
    shrink(model, random_masks(model, 0.4, seed=1))
    assert adapter.predict(model, past, observed).mean.shape == dense.mean.shape


def test_prune_shrink_finetune_save_and_reload(tmp_path):
    model = build()
    plan = check_prune_shrink_finetune(model, Windows(32, 32, 2, 0), Windows(16, 32, 2, 1), tmp_path)
    model.eval()
    save_pruned(model, tmp_path / "model", base_model="org/chronos2-tiny", plan=plan)
    loaded, info = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert not any(info.values()) and type(loaded) is get_family("chronos2").pruned_model_class
    inputs = get_spec(model).example_inputs(model, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(forecast(loaded.eval(), inputs), forecast(model, inputs))


def test_pruned_checkpoint_in_chronos2_pipeline(tmp_path):
    model, plan = shrunk_with_every_change()
    save_pruned(model, tmp_path, base_model="org/chronos2-tiny", plan=plan)
    context = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))

    def predict(pipeline):
        return torch.stack(pipeline.predict_quantiles(list(context[:, None]), prediction_length=8)[0])

    expected = predict(load_chronos_pipeline(model))
    assert torch.equal(predict(load_chronos_pipeline(tmp_path)), expected)
    assert type(load_chronos_pipeline(tmp_path)).__name__ == "Chronos2Pipeline"


FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.abc, sys

    if sys.argv[1] == "remote":
        class BlockHfTsprune(importlib.abc.MetaPathFinder):
            def find_spec(self, fullname, path=None, target=None):
                if fullname.split(".")[0] == "hf_tsprune":
                    raise ImportError("hf_tsprune is not installed in this process")

        sys.meta_path.insert(0, BlockHfTsprune())
    else:
        import hf_tsprune  # noqa: F401

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForTimeSeriesPrediction

    model, info = AutoModelForTimeSeriesPrediction.from_pretrained(
        sys.argv[2], trust_remote_code=sys.argv[1] == "remote", output_loading_info=True
    )
    assert not any(info.values()), info
    inputs = load_file(sys.argv[3])
    with torch.no_grad():
        out = model.eval()(context=inputs["context"], group_ids=inputs["group_ids"], num_output_patches=2)
    save_file({"output": out.quantile_preds.contiguous()}, sys.argv[4])
    print(type(model).__module__)
    """
)


@pytest.mark.parametrize("mode", ["hf_tsprune", "remote"])
def test_fresh_process_reload(tmp_path, mode):
    from safetensors.torch import load_file, save_file

    model, plan = shrunk_with_every_change()
    save_pruned(model, tmp_path / "model", plan=plan)
    inputs = get_spec(model).example_inputs(model, 4, generator=torch.Generator().manual_seed(3))
    save_file({k: inputs[k] for k in ("context", "group_ids")}, tmp_path / "inputs.safetensors")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", FRESH_PROCESS, mode, str(tmp_path / "model"), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    module = proc.stdout.strip().splitlines()[-1]
    assert module.startswith("transformers_modules.") if mode == "remote" else module == "hf_tsprune.modeling"
    assert torch.equal(load_file(tmp_path / "out.safetensors")["output"], forecast(model, inputs))
