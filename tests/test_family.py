"""The family registry: one record per family, found the same way from every key; validated registration; families
whose optional package is missing; checkpoints with an emptied attention block pruned again after reloading."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from models import build
from test_surgery import masked_vs_shrunk, params, random_masks
from transformers import AutoModelForTimeSeriesPrediction

import hf_tsprune
from hf_tsprune import (
    EmptyAttention,
    families,
    family_of,
    get_family,
    get_spec,
    install_masks,
    register_family,
    save_pruned,
    shrink,
    supported_model_classes,
)
from hf_tsprune.masks import get_masks

FAMILIES = ("timesfm", "timesfm2_5", "patchtst", "patchtsmixer", "chronos", "chronos_bolt", "ttm")


def test_every_family_is_registered_once_and_found_from_every_key():
    assert set(FAMILIES) <= set(families())  # (and every file added to hf_tsprune/families/)
    for name, family in families().items():
        assert family.name == family.spec.name == family.adapter.family == name
        assert get_family(name, require=False) is family
        assert get_family(family.pruned_model_type, require=False) is family  # a pruned checkpoint's model_type
        for model_type in family.model_types:
            if family.config_matches is None:  # "t5" alone is Chronos; a config tells Chronos-Bolt apart
                assert family_of(model_type) == name
        assert set(family.model_classes) <= set(supported_model_classes())
    assert family_of("t5") == "chronos" and family_of("tinytimemixer") == "ttm" and family_of("bert") is None


def test_a_model_and_its_pruned_class_and_config_find_the_same_family(tmp_path):
    model = build("timesfm2_5")
    family = get_family(model)
    assert get_spec(model) is family.spec and get_family(model.config) is family
    install_masks(model)
    shrink(model, random_masks(model, 0.4, seed=1))
    save_pruned(model, tmp_path)
    loaded = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path)
    assert type(loaded) is family.pruned_model_class and get_family(loaded) is family
    assert get_family(loaded.config) is family and loaded.config.base_model_type == "timesfm2_5"
    assert hf_tsprune.PrunedTimesFm2_5ModelForPrediction is family.pruned_model_class
    assert "PrunedTinyTimeMixerForPrediction" in hf_tsprune.__all__  # every family's classes, not four of seven


def test_register_family_rejects_duplicates_and_mismatches():
    timesfm = get_family("timesfm")
    with pytest.raises(ValueError, match="'timesfm' is registered already"):
        register_family(timesfm)
    with pytest.raises(ValueError, match="must be a Python identifier"):
        register_family(dataclasses.replace(timesfm, name="my-family"))
    with pytest.raises(ValueError, match="holds the spec of 'timesfm'"):
        register_family(dataclasses.replace(timesfm, name="timesfm_copy"))
    spec = dataclasses.replace(timesfm.spec, name="timesfm_copy")
    with pytest.raises(ValueError, match=r"model classes \['TimesFmModelForPrediction'\] belong to 'timesfm'"):
        register_family(dataclasses.replace(timesfm, name="timesfm_copy", spec=spec))
    spec = dataclasses.replace(spec, model_classes=("MyTimesFm",))
    with pytest.raises(ValueError, match=r"model types \['timesfm'\] belong to 'timesfm' already"):
        register_family(dataclasses.replace(timesfm, name="timesfm_copy", spec=spec))
    assert "timesfm_copy" not in families()  # nothing was half-registered
    with pytest.raises(TypeError, match="no model family for 'Linear'.*register_family"):
        get_family(torch.nn.Linear(2, 2))


BLOCKED_IMPORTS = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("chronos", "tsfm_public"):
                raise ImportError(f"blocked {name}")

    sys.meta_path.insert(0, Block())
    import hf_tsprune
    from hf_tsprune.evaluation import load_forecaster

    report = {"supported": hf_tsprune.supported_model_classes(), "errors": {}}
    for name in ("chronos", "chronos_bolt", "ttm"):
        try:
            hf_tsprune.get_family(name)
        except ImportError as error:
            report["errors"][name] = str(error)
    try:
        load_forecaster(sys.argv[1])
    except ImportError as error:
        report["errors"]["load"] = str(error)
    try:
        hf_tsprune.PrunedTinyTimeMixerForPrediction
    except ImportError as error:
        report["errors"]["class"] = str(error)
    # the core families work as ever
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    model = PatchTSTForPrediction(PatchTSTConfig(context_length=16, prediction_length=4, patch_length=4,
                                                 patch_stride=4, d_model=8, num_attention_heads=2, ffn_dim=8))
    hf_tsprune.install_masks(model)
    report["shrunk"] = hf_tsprune.shrink(model).max_rel_error
    report["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("chronos", "tsfm_public"))
    print("REPORT" + json.dumps(report))
    """
)


def test_import_without_the_optional_family_packages(tmp_path):
    """With `chronos` and `tsfm_public` unimportable, `import hf_tsprune` works, the core families prune, and the
    three optional families are listed as unusable and raise an ImportError that names the package and its install."""
    folder = tmp_path / "ttm-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "hf_tsprune_ttm"}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS, str(folder)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    supported = report["supported"]
    assert supported["TimesFm2_5ModelForPrediction"] and supported["PatchTSTForPrediction"]
    assert not any(supported[c] for c in ("T5ForConditionalGeneration", "ChronosBoltModelForForecasting"))
    assert not supported["TinyTimeMixerForPrediction"]
    errors = report["errors"]
    for name in ("chronos", "chronos_bolt"):
        assert "needs the `chronos` package" in errors[name] and "pip install chronos-forecasting" in errors[name]
        assert "hf_tsprune[families]" in errors[name]
    for key in ("ttm", "load", "class"):
        assert "needs the `tsfm_public` package" in errors[key] and "granite-tsfm" in errors[key]
    assert report["shrunk"] < 1e-5 and report["loaded"] == []


def emptied_checkpoint(tmp_path):
    """A TimesFM checkpoint whose first attention block has no head left (saved as `EmptyAttention`)."""
    model = build("timesfm")
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["decoder.layers.0.self_attn"][:] = False
    plan = shrink(model, masks, allow_empty_blocks=True)
    save_pruned(model, tmp_path, plan=plan)
    return model


@pytest.mark.parametrize("remote_code", [False, True])
def test_a_reloaded_checkpoint_with_an_emptied_block_can_be_pruned_again(tmp_path, remote_code):
    """The reloaded `EmptyAttention` (the library's class, or the one of the remote-code files written beside the
    weights) carries the marker that keeps it out of the next pruning; pruning again is exact and saves and reloads."""
    emptied_checkpoint(tmp_path / "first")
    loader = AutoModelForTimeSeriesPrediction
    if remote_code:  # the classes `trust_remote_code=True` loads where hf_tsprune is not installed
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        config = json.loads((tmp_path / "first" / "config.json").read_text())
        loader = get_class_from_dynamic_module(
            config["auto_map"]["AutoModelForTimeSeriesPrediction"], tmp_path / "first"
        )
        assert loader.__module__.startswith("transformers_modules.")
    loaded = loader.from_pretrained(tmp_path / "first")
    empty = loaded.get_submodule("decoder.layers.0.self_attn")
    assert type(empty).__name__ == "EmptyAttention" and empty.hf_tsprune_empty
    assert (type(empty) is EmptyAttention) is not remote_code  # the remote copy is another module object
    groups = install_masks(loaded.eval())
    assert "decoder.layers.0.self_attn" not in {g.name for g in groups}
    plan, rel, _ = masked_vs_shrunk(loaded, random_masks(loaded, 0.4, seed=3), allow_empty_blocks=True)
    assert rel < 1e-5 and params(loaded) == plan.params_after
    save_pruned(loaded, tmp_path / "second", plan=plan)
    again, info = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "second", output_loading_info=True)
    assert not any(info.values())
    inputs = get_spec(loaded).example_inputs(loaded, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(get_spec(again).forecast(again.eval(), inputs), get_spec(loaded).forecast(loaded, inputs))
