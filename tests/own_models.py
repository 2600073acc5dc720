"""Test helpers shared by the tests of hf_tsprune's own transformers-5 models (`hf_tsprune.models`: Time-MoE,
Timer-XL, Sundial) and their families.

Oracle tests (`test_timer_xl.py`, `test_sundial.py`, `test_time_moe.py`): importing an upstream oracle from
`../shared/oracles` (skipping when it is absent), the max relative error, clean loading reports, the released
`auto_map`, checkpoints loaded both ways, rotary tables after `from_pretrained` and the model file's imports.

Family tests (`test_timer_xl_family.py`, `test_sundial_family.py`, `test_time_moe_family.py`): random models, the
layout round trip, the fresh-process reload of a pruned checkpoint (after `import hf_tsprune`, and with transformers
alone through remote code), the three recipes on a folder of the model and the `benchmarks/speed.py` row.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_surgery import masked_vs_shrunk, params
from transformers import AutoModelForCausalLM

from hf_tsprune import get_spec
from hf_tsprune.surgery import apply_layout

ROOT = Path(__file__).resolve().parents[1]
ORACLES = ROOT / ".." / "shared" / "oracles"
CLEAN_INFO = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


# -- oracles ----------------------------------------------------------------------------------------------------------


def oracle_modules(package: str, *modules: str, name: str) -> list[ModuleType]:
    """The modules `package.<module>` of an upstream oracle in `../shared/oracles` (put on `sys.path`); skips the test
    when the package's first module is absent.

    Args:
        package (`str`): The oracle's folder in `../shared/oracles` (e.g. `"timer_xl"`).
        modules (`str`): Module names in it (e.g. `"configuration_timer"`, `"modeling_timer"`).
        name (`str`): The model's name, for the skip reason.
    """
    if not (ORACLES / package / f"{modules[-1]}.py").is_file():
        pytest.skip(f"{name} oracle not found at {(ORACLES / package).resolve()}")
    if str(ORACLES) not in sys.path:
        sys.path.insert(0, str(ORACLES))
    return [importlib.import_module(f"{package}.{module}") for module in modules]


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 1e-12) -> float:
    """Max absolute difference relative to the largest reference magnitude (at least `floor`)."""
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(floor))


@torch.no_grad()
def randomize(model: torch.nn.Module, norm_names: tuple[str, ...] = ("norm",)) -> None:
    """Weights of unit-gain scale (N(0, 1/fan_in)), biases and norm parameters off their init, so that attention is
    far from uniform and every parameter matters (the 0.02-std init makes the attention nearly an average).

    Args:
        model (`torch.nn.Module`): The model, changed in place.
        norm_names (`tuple[str, ...]`, *optional*, defaults to `("norm",)`): Name parts of the norm layers whose
            `weight` is drawn around 1.
    """
    for name, param in model.named_parameters():
        if param.dim() == 2:
            param.normal_(0.0, param.shape[1] ** -0.5)
        elif any(part in name for part in norm_names) and name.endswith("weight"):
            param.copy_(1 + 0.1 * torch.randn_like(param))
        else:
            param.normal_(0.0, 0.1)


def oracle_pair(
    oracle_classes: tuple[type, type],
    own_classes: tuple[type, type],
    kwargs: dict,
    seed: int = 0,
    randomize: Callable[[torch.nn.Module], None] = randomize,
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """An oracle model with random weights (`randomize`, after seeding with `seed`) and ours with its state dict
    loaded strictly, both in eval mode.

    Args:
        oracle_classes (`tuple[type, type]`), own_classes (`tuple[type, type]`): Configuration and model classes.
        kwargs (`dict`): The configuration of both.
    """
    oracle_config, oracle_model = oracle_classes
    own_config, own_model = own_classes
    torch.manual_seed(seed)
    oracle = oracle_model(oracle_config(**kwargs)).eval()
    randomize(oracle)
    ours = own_model(own_config(**kwargs)).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours


def kept_rows(linear: torch.nn.Linear, rows: torch.Tensor) -> torch.nn.Linear:
    """A Linear (with bias) of the given output `rows` of `linear` (call under `no_grad`)."""
    new = torch.nn.Linear(linear.in_features, len(rows), bias=True)
    new.weight.copy_(linear.weight[rows])
    new.bias.copy_(linear.bias[rows])
    return new


def assert_clean_loading(info: dict) -> None:
    """No missing, unexpected or mismatched key in a `from_pretrained(..., output_loading_info=True)` report."""
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[kind], f"{kind}: {info[kind]}"


def name_remote_code(folder: Path, config_class: str, model_class: str) -> None:
    """Write the released checkpoint's `auto_map` (its remote code, absent here) into a saved folder's config.json.

    Args:
        folder (`Path`): The saved folder.
        config_class (`str`), model_class (`str`): `module.Class` of the released configuration and model.
    """
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["auto_map"] = {"AutoConfig": config_class, "AutoModelForCausalLM": model_class}
    config_file.write_text(json.dumps(config))


def check_checkpoints_both_ways(
    oracle: torch.nn.Module,
    ours: torch.nn.Module,
    oracle_class: type,
    auto_map: tuple[str, str],
    rollout: Callable[[torch.nn.Module], torch.Tensor],
    tmp_path: Path,
) -> None:
    """The oracle's `save_pretrained` folder loads into our class (also through `AutoModelForCausalLM` with the
    released `auto_map`, without remote code) with a clean report and rolls out as the oracle; ours saved loads into
    the oracle's class, cleanly, and rolls out the same.

    Args:
        oracle, ours (`torch.nn.Module`): The two models, with one state dict.
        oracle_class (`type`): The oracle's model class.
        auto_map (`tuple[str, str]`): The released `auto_map`'s configuration and model (`module.Class`).
        rollout (`Callable`): The forecast compared, `rollout(model) -> torch.Tensor` (under `no_grad`).
        tmp_path (`Path`): A scratch folder.
    """
    own_class = type(ours)
    assert set(ours.state_dict()) == set(oracle.state_dict())
    assert not any("rotary" in k or "inv_freq" in k for k in ours.state_dict())
    with torch.no_grad():
        expected = rollout(oracle)

    oracle.save_pretrained(tmp_path / "oracle")
    loaded, info = own_class.from_pretrained(tmp_path / "oracle", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    # the released config.json names its remote code in `auto_map`: the registered own class is used instead,
    # without trust_remote_code (and the remote code, absent here, is never looked for)
    name_remote_code(tmp_path / "oracle", *auto_map)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "oracle")
    assert type(auto) is own_class
    for model in (loaded.eval(), auto.eval()):
        with torch.no_grad():
            got = rollout(model)
        assert torch.isfinite(got).all()
        assert max_rel_error(got, expected) < 1e-5

    ours.save_pretrained(tmp_path / "ours")
    back, info = oracle_class.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        got = rollout(back.eval())
    assert max_rel_error(got, expected) < 1e-5


def check_rotary_tables_after_loading(
    model: torch.nn.Module, rollout: Callable[[torch.nn.Module], torch.Tensor], tmp_path: Path
) -> None:
    """The v5 trap: `from_pretrained` leaves non-persistent buffers uninitialised unless `_init_weights` resets them.
    Every layer's rotary tables of the reloaded model equal the saved one's, and its rollout is finite and equal.

    Args:
        model (`torch.nn.Module`): A model whose layers hold `self_attn.rotary_emb`.
        rollout (`Callable`): The forecast compared, `rollout(model) -> torch.Tensor`.
        tmp_path (`Path`): A scratch folder.
    """
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    for mine, theirs in zip(model.model.layers, loaded.model.layers):
        for name in ("inv_freq", "cos_cached", "sin_cached"):
            assert torch.equal(getattr(mine.self_attn.rotary_emb, name), getattr(theirs.self_attn.rotary_emb, name))
    with torch.no_grad():
        got = rollout(loaded)
        assert torch.isfinite(got).all()
        assert torch.equal(got, rollout(model))


def import_roots(module: ModuleType) -> set[str]:
    """The top-level packages a module file imports (asserting that it has no relative import)."""
    roots = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            roots.add(node.module.split(".")[0])
    return roots


# -- families: models and layouts -------------------------------------------------------------------------------------


def random_model(model_class: type, config_class: type, settings: dict, seed: int, std: float | None):
    """A model of `config_class(**settings)` seeded with `seed`, its parameters drawn from N(0, std) (`None`: as
    initialised), in eval mode."""
    torch.manual_seed(seed)
    model = model_class(config_class(**settings)).eval()
    if std is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, std)
    return model


def forecast(model, inputs):
    """The spec's forecast of `inputs`, without gradients."""
    with torch.no_grad():
        return get_spec(model).forecast(model, inputs)


def round_trip(model, fresh_model: torch.nn.Module) -> None:
    """A fresh model given the layout (as stored in config.json) loads the shrunk state dict strictly (its buffers
    included) and forecasts the same.

    Args:
        model (`torch.nn.Module`): The shrunk model.
        fresh_model (`torch.nn.Module`): An unpruned model of the same configuration.
    """
    layout = json.loads(json.dumps(model.config.hf_tsprune_layout))
    fresh = apply_layout(fresh_model, layout)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    fresh.load_state_dict(model.state_dict(), strict=True)
    inputs = get_spec(model).example_inputs(model, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(forecast(model, inputs), forecast(fresh.eval(), inputs))


def check_exact_rotary_shrink(model: torch.nn.Module, masks: dict, full_head_dim: int, num_rotary: int = 2):
    """Masked vs shrunk within 1e-5 (forecast and the plan's own check), the parameter count the plan's, fewer
    parameters and FLOPs, and the rotary pairs of each of the `num_rotary` layers cut: every attention's query/key
    head dimension twice its kept pairs, its softmax scale that of `full_head_dim`, its `rotary_pairs` buffer one row
    of kept pairs per key/value head.

    Returns:
        The plan ([`hf_tsprune.PruningPlan`]).
    """
    plan, rel, shrunk = masked_vs_shrunk(model, masks)
    assert rel < 1e-5 and plan.max_rel_error < 1e-5 and torch.isfinite(shrunk).all()
    assert params(model) == plan.params_after < plan.params_before
    assert plan.flops_after < plan.flops_before
    rotary = [g for g in plan.groups if g.kind == "rotary"]
    assert len(rotary) == num_rotary and all(g.units_after < g.units_before for g in rotary)
    for layer, group in zip(model.model.layers, rotary):
        attention = layer.self_attn
        assert attention.head_dim == 2 * group.pairs_after and attention.scaling == full_head_dim**-0.5
        if getattr(attention, "rotary_pairs", None) is not None:
            assert attention.rotary_pairs.shape == (attention.num_key_value_heads, group.pairs_after)
    return plan


def check_module_travels(files, folder: Path, module_file: str) -> None:
    """The own model module travels with a pruned checkpoint (`save_pruned`'s `files`), verbatim."""
    assert module_file in files
    assert (folder / module_file).read_bytes() == (ROOT / "hf_tsprune" / "models" / module_file).read_bytes()


# -- families: the fresh-process reload -------------------------------------------------------------------------------

LOAD_SCRIPT = """
import importlib.abc, json, sys

mode, folder, inputs, result = sys.argv[1:5]
if mode == "remote":
    class BlockHfTsprune(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] == "hf_tsprune":
                raise ImportError("hf_tsprune is not installed in this process")

    sys.meta_path.insert(0, BlockHfTsprune())
else:
    import hf_tsprune  # noqa: F401

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForTimeSeriesPrediction

model, info = AutoModelForTimeSeriesPrediction.from_pretrained(
    folder, trust_remote_code=mode == "remote", output_loading_info=True
)
causal_lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=mode == "remote")  # as released
inputs = load_file(inputs)
{run}
save_file({{key: value.contiguous() for key, value in outputs.items()}}, result)
report = {{"info": {{k: sorted(map(str, v)) for k, v in info.items()}}, "module": type(model).__module__,
          "hf_tsprune_imported": "hf_tsprune" in sys.modules,
          "causal_lm": type(causal_lm).__qualname__ == type(model).__qualname__}}
{report}
print("REPORT" + json.dumps(report))
"""


def load_in_fresh_process(
    folder: Path, inputs: dict, mode: str, tmp_path: Path, run: str, report: str = ""
) -> tuple[dict, dict]:
    """Load a pruned checkpoint in a fresh interpreter (`mode`: `"hf_tsprune"` after `import hf_tsprune`, `"remote"`
    with transformers alone and `trust_remote_code`, hf_tsprune's import blocked) and run it.

    Args:
        folder (`Path`): The checkpoint.
        inputs (`dict`): Tensors the script reads as `inputs`.
        mode (`str`): `"hf_tsprune"` or `"remote"`.
        tmp_path (`Path`): A scratch folder.
        run (`str`): Script lines that set `outputs`, a dict of tensors, from `model` and `inputs`.
        report (`str`, *optional*): Script lines that add entries to `report`, a dict.

    Returns:
        `tuple[dict, dict]`: the outputs and the report (loading info, the model's module, whether hf_tsprune was
        imported, whether `AutoModelForCausalLM` gave the same class, and the entries `report` added).
    """
    save_file(inputs, tmp_path / "inputs.safetensors")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    env["HF_MODULES_CACHE"] = str(tmp_path / f"modules-{mode}")
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the thread count of the expected outputs
    script = LOAD_SCRIPT.format(run=textwrap.dedent(run).strip(), report=textwrap.dedent(report).strip())
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script, mode, str(folder), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / f"out-{mode}.safetensors")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(tmp_path / f"out-{mode}.safetensors"), json.loads(proc.stdout.split("REPORT", 1)[1])


def check_fresh_process_reloads(
    folder: Path,
    inputs: dict,
    expected: dict[str, torch.Tensor],
    tmp_path: Path,
    run: str,
    report: str = "",
    expected_report: dict | None = None,
) -> None:
    """A pruned checkpoint loads in a fresh process, after `import hf_tsprune` (through `hf_tsprune.modeling`) and
    with transformers alone (through the remote code), with a clean report, through `AutoModelForCausalLM` too, and
    gives exactly the `expected` outputs.

    Args:
        folder (`Path`), inputs (`dict`), tmp_path (`Path`), run (`str`), report (`str`): As
            [`load_in_fresh_process`].
        expected (`dict[str, torch.Tensor]`): The outputs `run` must give, bit for bit.
        expected_report (`dict`, *optional*): Entries the report must hold.
    """
    for mode in ("hf_tsprune", "remote"):
        outputs, got = load_in_fresh_process(folder, inputs, mode, tmp_path, run, report)
        assert got["info"] == CLEAN_INFO
        assert got["hf_tsprune_imported"] is (mode == "hf_tsprune") and got["causal_lm"]
        assert got["module"].startswith("transformers_modules." if mode == "remote" else "hf_tsprune.modeling")
        for key, value in (expected_report or {}).items():
            assert got[key] == value, (mode, key)
        for key, value in expected.items():
            assert torch.equal(outputs[key], value), (mode, key)


# -- families: recipes and the speed row ------------------------------------------------------------------------------


def make_task(folder: Path, model: torch.nn.Module) -> Path:
    """A recipe task in `folder`: `tiny.csv` (900 hourly steps of a noisy daily sine) and `model/` (`model` saved)."""
    t = np.arange(900)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2020-01-01", periods=len(t), freq="h"),
            "a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(len(t)),
        }
    )
    frame.to_csv(folder / "tiny.csv", index=False)
    model.save_pretrained(folder / "model")
    return folder


def data_flags(task: Path) -> list[str]:
    """The recipes' data arguments for a task of [`make_task`] (context 32, horizon 8)."""
    return ["--dataset", str(task / "tiny.csv"), "--context_length", "32", "--prediction_length", "8"]


def training_flags(task: Path) -> list[str]:
    """The recipes' training arguments (one finetune epoch on the CPU) and data arguments."""
    return ["--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--finetune_epochs", "1",
            "--disable_tqdm", "true", "--use_cpu", "true", *data_flags(task)]  # fmt: skip


def recipe(name: str, prefix: str) -> ModuleType:
    """A recipe module, imported from `recipes/` (run in-process: no interpreter start per recipe) as
    `<prefix>_recipe_<name>`."""
    spec = importlib.util.spec_from_file_location(f"{prefix}_recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def check_recipes(
    task: Path,
    tmp_path: Path,
    prefix: str,
    module_file: str,
    prune: tuple[str, ...] = (),
    zero_shot: tuple[str, ...] = (),
) -> dict:
    """The three recipes on a folder of the model: `prune_finetune` (its zero-shot, pruned and finetuned test MSEs
    finite, fewer parameters after, the model module beside the pruned checkpoint), `zero_shot` of the pruned folder
    (the finetuned test MSE again, rel 1e-4) and `finetune` of the original (finite).

    Args:
        task (`Path`): A task of [`make_task`].
        tmp_path (`Path`): Where the runs write (`p`, `z`, `f`).
        prefix (`str`): Prefix of the recipe modules' names.
        module_file (`str`): The own model module's file name (e.g. `"timer_xl.py"`).
        prune (`tuple[str, ...]`, *optional*): More `prune_finetune` arguments.
        zero_shot (`tuple[str, ...]`, *optional*): More `zero_shot` arguments.

    Returns:
        `dict`: the `prune_finetune` results (`.to_dict()`); the pruned checkpoint is `tmp_path / "p" / "model"`.
    """
    model = str(task / "model")
    # --min_sparsity: a pruned checkpoint is what is under test (validation alone may keep the unpruned model)
    run = [
        "--model_name_or_path",
        model,
        "--output_dir",
        str(tmp_path / "p"),
        "--eval_steps",
        "5",
        "--min_sparsity",
        "0.1",
    ]
    results = recipe("prune_finetune", prefix).main([*run, *prune, *training_flags(task)]).to_dict()
    for stage in ("zero_shot", "pruned", "finetuned"):
        assert results[stage]["test"]["n_windows"] > 0 and np.isfinite(results[stage]["test"]["mse"])
    assert results["params_after"] < results["params_before"]
    pruned = tmp_path / "p" / "model"
    assert (pruned / module_file).is_file()
    evaluation = ["--model_name_or_path", str(pruned), "--output_dir", str(tmp_path / "z"), "--show_progress", "false"]
    scores = recipe("zero_shot", prefix).main([*evaluation, *zero_shot, *data_flags(task)])
    assert scores["test"]["mse"] == pytest.approx(results["finetuned"]["test"]["mse"], rel=1e-4)
    baseline = ["--model_name_or_path", model, "--output_dir", str(tmp_path / "f")]
    finetuned = recipe("finetune", prefix).main([*baseline, *training_flags(task)])
    assert np.isfinite(finetuned.to_dict()["finetuned"]["test"]["mse"])
    return results


def speed_module(prefix: str) -> ModuleType:
    """`benchmarks/speed.py`, imported as `<prefix>_benchmark_speed`."""
    spec = importlib.util.spec_from_file_location(f"{prefix}_benchmark_speed", ROOT / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed


def released_row_model(speed: ModuleType, row: str) -> torch.nn.Module:
    """The model a speed row builds (the released layout), on the meta device."""
    with torch.device("meta"):
        return speed.BUILDERS[row]()


def check_speed_row(speed, monkeypatch, row: str, family: str, build: Callable, max_params_ratio: float) -> None:
    """A speed row runs on a tiny model (`build`): the exact shrink with half the heads, pairs and channels (below
    `max_params_ratio` of the parameters), the interleaved timing and a prune and a finetune step."""
    monkeypatch.setitem(speed.BUILDERS, row, build)
    result = speed.benchmark(row, batch_sizes=(2,), timing={"min_pairs": 2, "max_pairs": 2}, step_batch=0)
    assert result["family"] == family and result["max_rel_error"] < 1e-5
    assert result["params_after"] < max_params_ratio * result["params_before"] and result["pairs_b2"] == 2
    for kind in ("prune", "finetune"):
        step = speed.step_worker(row, kind, batch_size=2, repeats=1, accumulate=1)
        assert step["seconds"] > 0
