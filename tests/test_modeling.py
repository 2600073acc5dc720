"""Pruned checkpoints: save_pretrained / from_pretrained round trips, Auto classes, remote code, the renaming trap."""

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from models import TINY, build
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_surgery import random_masks
from transformers import AutoConfig, AutoModel, AutoModelForTimeSeriesPrediction, TimesFm2_5ModelForPrediction

import hf_tsprune
from hf_tsprune import (
    EmptyAttention,
    PruningConfig,
    checkpoint_code,
    get_family,
    get_spec,
    install_masks,
    is_pruned_model,
    save_pruned,
    shrink,
    to_pruned_model,
)
from hf_tsprune.modeling import REMOTE_CODE_FILES, kept_units
from hf_tsprune.specs import AttentionGroup

PRUNED_CONFIG_CLASSES = {name: get_family(name).pruned_config_class for name in TINY}
PRUNED_MODEL_CLASSES = {name: get_family(name).pruned_model_class for name in TINY}

OUTPUT = {"timesfm": "mean_predictions", "timesfm2_5": "mean_predictions"}  # others: prediction_outputs


def pruned_model(name: str, seed: int = 0):
    """A shrunk tiny model with every kind of change: removed heads, a smaller value head dimension (TimesFM), an
    attention block with no head left (EmptyAttention) and a zero-width feed-forward block."""
    model = build(name, seed=seed)
    install_masks(model)
    masks = random_masks(model, 0.5, seed=seed + 1)
    attention = [g for g in hf_tsprune.masked_groups(model) if isinstance(g.group, AttentionGroup)]
    mlps = [g for g in hf_tsprune.masked_groups(model) if not isinstance(g.group, AttentionGroup)]
    masks[attention[0].name][:] = False
    masks[mlps[-1].name][:] = False
    per_head = masks[attention[-1].name].view(attention[-1].num_kv_heads, -1)
    per_head[0] = True
    per_head[0, 0] = False  # a kept head losing a value channel
    plan = shrink(model, masks, allow_empty_blocks=True)
    return model.eval(), plan


def example(model):
    spec = get_spec(model)
    inputs = spec.example_inputs(model, 2, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return inputs, spec.forecast(model, inputs)


def assert_clean(info):
    assert {k: list(v) for k, v in info.items()} == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny architecture, pruned and saved with `save_pruned`: name -> (folder, model, plan, inputs, output)."""
    out = {}
    for name in sorted(TINY):
        model, plan = pruned_model(name)
        folder = tmp_path_factory.mktemp(name)
        save_pruned(model, folder, base_model=f"org/{name}-tiny", base_model_revision="0123abc", plan=plan,
                    pruning_config=PruningConfig(ratio_per_epoch=0.4), seed=7)  # fmt: skip
        out[name] = (str(folder), model, plan) + example(model)
    return out


@pytest.mark.parametrize("name", sorted(TINY))
def test_saved_checkpoint_records_every_size(saved, name):
    folder, model, plan, _, _ = saved[name]
    assert sorted(os.listdir(folder)) == sorted(["config.json", *REMOTE_CODE_FILES, "model.safetensors"])
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["model_type"] == f"hf_tsprune_{name}"
    assert config["architectures"] == [PRUNED_MODEL_CLASSES[name].__name__]
    assert config["hf_tsprune_layout"] == plan.layout
    assert config["base_model"] == f"org/{name}-tiny" and config["base_model_revision"] == "0123abc"
    pruning = config["pruning"]
    assert pruning["settings"]["ratio_per_epoch"] == 0.4 and pruning["seed"] == 7
    assert (pruning["params_before"], pruning["params_after"]) == (plan.params_before, plan.params_after)
    assert (pruning["flops_before"], pruning["flops_after"]) == (plan.flops_before, plan.flops_after)
    assert pruning["sparsity"] == pytest.approx(plan.sparsity)
    assert set(pruning["groups"]) == {g.name for g in plan.groups}
    assert config["auto_map"]["AutoModelForTimeSeriesPrediction"].startswith("modeling_hf_tsprune.")
    assert any(v["kind"] == "attention" and v["num_kv_heads"] == 0 for v in plan.layout.values())
    assert any(v["kind"] == "mlp" and v["width"] == 0 for v in plan.layout.values())
    # safetensors holds exactly the model's tensors, under the module names it loads with
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())
    # the remote-code files import torch, transformers, the standard library and each other: nothing of hf_tsprune
    # (and the optional families' own packages chronos and tsfm_public)
    for filename in REMOTE_CODE_FILES:
        tree = ast.parse(open(os.path.join(folder, filename)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in ("math", "re", "torch") for a in node.names), filename
            elif isinstance(node, ast.ImportFrom):
                allowed = node.level == 1 or node.module.split(".")[0] in (
                    "__future__", "collections", "dataclasses", "torch", "transformers", "chronos", "tsfm_public"
                )  # fmt: skip
                assert allowed, (filename, node.module)


@pytest.mark.parametrize("name", sorted(TINY))
def test_from_pretrained_in_process_all_loaders(saved, name):
    folder, model, _, inputs, expected = saved[name]
    spec = get_spec(model)
    loaders = [PRUNED_MODEL_CLASSES[name], AutoModelForTimeSeriesPrediction, AutoModel]
    for loader in loaders:
        loaded, info = loader.from_pretrained(folder, output_loading_info=True)
        assert type(loaded) is PRUNED_MODEL_CLASSES[name] and is_pruned_model(loaded)
        assert_clean(info)
        with torch.no_grad():
            assert torch.equal(spec.forecast(loaded.eval(), inputs), expected)
        assert {k: v.shape for k, v in loaded.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }
    assert type(AutoConfig.from_pretrained(folder)) is PRUNED_CONFIG_CLASSES[name]
    empty = [n for n, m in loaded.named_modules() if isinstance(m, checkpoint_code.EmptyAttention)]
    assert empty == [n for n, m in model.named_modules() if isinstance(m, EmptyAttention)] != []


def test_timesfm2_5_weight_renaming_trap(tmp_path):
    """A base TimesFM 2.5 loaded with from_pretrained carries `model_type="timesfm2_5"` in its config and the
    fc1<->ff0 / fc2<->ff1 renamings it loaded with; a pruned checkpoint saved with either would be written with `ff0`
    keys that the pruned class does not rename back, and its MLPs would silently re-initialise."""
    build("timesfm2_5").save_pretrained(tmp_path / "base")
    with safe_open(tmp_path / "base" / "model.safetensors", "pt") as f:
        assert "model.layers.0.mlp.ff0.weight" in f.keys()  # the base checkpoint format
    model = TimesFm2_5ModelForPrediction.from_pretrained(tmp_path / "base").eval()
    assert model.config.__dict__.get("model_type") == "timesfm2_5" and model._weight_conversions
    install_masks(model)
    shrink(model, random_masks(model, 0.5, seed=3))
    save_pruned(model, tmp_path / "pruned", base_model=str(tmp_path / "base"))
    assert model.config.model_type == "hf_tsprune_timesfm2_5"
    weights = load_file(tmp_path / "pruned" / "model.safetensors")
    assert "model.layers.0.mlp.fc1.weight" in weights and not any(".ff0." in k or ".ff1." in k for k in weights)
    loaded, info = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert_clean(info)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key  # nothing re-initialised
    # A pruned config built from the base config's dict keeps its own model type.
    config = PRUNED_CONFIG_CLASSES["timesfm2_5"](**build("timesfm2_5").config.to_dict())
    assert config.model_type == "hf_tsprune_timesfm2_5" and "model_type" not in config.__dict__
    with pytest.raises(ValueError, match="pruned config class of that architecture"):
        PRUNED_CONFIG_CLASSES["timesfm2_5"](model_type="patchtst")


def test_renaming_trap_is_detected(tmp_path):
    """Control: with the base model type left on the config, the keys are renamed and the load report says so."""
    model, _ = pruned_model("timesfm2_5")
    to_pruned_model(model)
    model.config.__dict__["model_type"] = "timesfm2_5"  # what a naive conversion leaves behind
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "model.layers.1.mlp.ff0.weight" in f.keys()
    with pytest.raises(ValueError, match="missing tensors .*model.layers.1.mlp.fc1.weight"):  # loading is strict
        AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path)
    _, info = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path, output_loading_info=True, strict=False)
    assert "model.layers.1.mlp.fc1.weight" in info["missing_keys"]


def test_conversion_errors_name_the_fix():
    with pytest.raises(ValueError, match="call `hf_tsprune.shrink"):
        to_pruned_model(build("patchtst"))
    model = build("patchtst")
    install_masks(model)
    with pytest.raises(ValueError, match="masks are still installed"):
        to_pruned_model(model)
    with pytest.raises(TypeError, match="pruned checkpoints exist for"):
        to_pruned_model(torch.nn.Linear(2, 2))
    model, _ = pruned_model("patchtst")
    with pytest.raises(ValueError, match="safetensors only"):
        save_pruned(model, "unused", safe_serialization=False)


def test_random_init_from_config_and_further_pruning(saved, tmp_path):
    """`PrunedX(config)` builds the pruned shapes; a loaded pruned model can be pruned again and re-saved."""
    folder, model, _, _, _ = saved["timesfm"]
    fresh = PRUNED_MODEL_CLASSES["timesfm"](AutoConfig.from_pretrained(folder))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    # (the engine cannot re-prune a model with an EmptyAttention block, so this one keeps a head everywhere)
    model = build("timesfm2_5")
    params_base = sum(p.numel() for p in model.parameters())
    install_masks(model)
    shrink(model, random_masks(model, 0.3, seed=4))
    save_pruned(model, tmp_path / "first", base_model="org/base")
    loaded = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "first").eval()
    install_masks(loaded)
    plan = shrink(loaded, random_masks(loaded, 0.3, seed=5))
    assert loaded.model.layers[0].self_attn.v_head_dim == plan.groups[0].head_dim_after
    to_pruned_model(loaded, plan=plan)
    assert loaded.config.base_model == "org/base"  # kept from the first save
    loaded.save_pretrained(tmp_path / "second")
    again, info = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "second", output_loading_info=True)
    assert_clean(info)
    inputs, expected = example(loaded)
    with torch.no_grad():
        assert torch.equal(get_spec(loaded).forecast(again.eval(), inputs), expected)
    assert kept_units(again) == kept_units(loaded, plan) == loaded.config.pruning["groups"]
    pruning = again.config.pruning
    assert pruning["params_before"] == params_base  # still the unpruned base, not the first pruned model
    assert pruning["params_after"] == sum(p.numel() for p in again.parameters()) < plan.params_before
    units_before = {name: g["units_before"] for name, g in pruning["groups"].items()}
    assert units_before == {name: g["units_before"] for name, g in model.config.pruning["groups"].items()}
    assert pruning["sparsity"] > model.config.pruning["sparsity"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_checkpoint_code_has_one_source(saved, name):
    """The load-time code beside the weights is the library's own module, byte for byte, and the block kinds the
    loader reads come from the registered family's spec (nothing kept by hand)."""
    folder, model, _, _, _ = saved[name]
    written = open(os.path.join(folder, "hf_tsprune_checkpoint.py")).read()
    assert written == open(checkpoint_code.__file__).read()
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["hf_tsprune_blocks"] == json.loads(json.dumps(get_spec(model).blocks()))
    # the generated modeling file holds the family's attention forwards verbatim (the library's functions)
    modeling = open(os.path.join(folder, "modeling_hf_tsprune.py")).read()
    for forward in get_spec(model).attention_forwards():
        assert textwrap.dedent(inspect.getsource(forward)) in modeling


LOAD_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    MODE, CASES = sys.argv[1], json.loads(sys.argv[2])
    if MODE == "remote":
        class BlockHfTsprune(importlib.abc.MetaPathFinder):
            def find_spec(self, fullname, path=None, target=None):
                if fullname.split(".")[0] == "hf_tsprune":
                    raise ImportError("hf_tsprune is not installed in this process")

        sys.meta_path.insert(0, BlockHfTsprune())
    else:
        import hf_tsprune  # noqa: F401  (registers the pruned classes)

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForTimeSeriesPrediction

    report = {}
    for case in CASES:
        folder = case["folder"]
        if MODE == "remote":
            try:
                AutoModelForTimeSeriesPrediction.from_pretrained(folder)
                refused = ""
            except Exception as err:  # without trust_remote_code=True the custom code is refused
                refused = str(err)
            model, info = AutoModelForTimeSeriesPrediction.from_pretrained(
                folder, trust_remote_code=True, output_loading_info=True
            )
        else:
            refused = ""
            model, info = AutoModelForTimeSeriesPrediction.from_pretrained(folder, output_loading_info=True)
        inputs = load_file(case["inputs"])
        kwargs = {"past_values": inputs["past_values"]}
        if case["freq"] is not None:
            kwargs["freq"] = case["freq"]
        with torch.no_grad():
            output = getattr(model.eval()(**kwargs), case["output"])
        save_file({"output": output.contiguous()}, case["result"])
        backbone = AutoModel.from_pretrained(folder, trust_remote_code=MODE == "remote")
        report[folder] = {
            "auto_model": [type(backbone).__name__, type(backbone).__module__],
            "info": {k: sorted(map(str, v)) for k, v in info.items()},
            "module": type(model).__module__,
            "refused": refused,
        }
    report["hf_tsprune_imported"] = "hf_tsprune" in sys.modules
    print("REPORT" + json.dumps(report))
    """
)


@pytest.mark.parametrize("mode", ["hf_tsprune", "remote"])
def test_fresh_process_round_trip_every_architecture(saved, tmp_path, mode):
    """Each architecture's checkpoint, loaded in a fresh process: after `import hf_tsprune`, or with transformers
    alone and `trust_remote_code=True` (hf_tsprune made unimportable); outputs bit-identical, empty load report."""
    cases = []
    for name, (folder, _, _, inputs, _) in saved.items():
        save_file({"past_values": inputs["past_values"].contiguous()}, tmp_path / f"{name}-inputs.safetensors")
        cases.append({
            "folder": folder, "inputs": str(tmp_path / f"{name}-inputs.safetensors"), "freq": inputs.get("freq"),
            "output": OUTPUT.get(name, "prediction_outputs"), "result": str(tmp_path / f"{name}-out.safetensors"),
        })  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_SCRIPT, mode, json.dumps(cases)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    assert report.pop("hf_tsprune_imported") is (mode == "hf_tsprune")
    for name, (folder, _, _, _, expected) in saved.items():
        entry = report[folder]
        assert entry["info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        output = load_file(tmp_path / f"{name}-out.safetensors")["output"]
        assert torch.equal(output, expected), name
        assert entry["auto_model"] == [PRUNED_MODEL_CLASSES[name].__name__, entry["module"]]
        if mode == "remote":
            assert entry["module"].startswith("transformers_modules.") and "trust_remote_code=True" in entry["refused"]
        else:
            assert entry["module"] == "hf_tsprune.modeling"
