"""The fault matrix: what bad data, broken checkpoints, bad settings and failed pushes get (issue 12).

One test per fault, over the public API and the recipes: each asserts the error type, the key words of its message
(the argument or file at fault and what to do), and that no output file was written or changed. The `row_` tests are
the faults that used to pass silently; the `handled_` ones were handled already and must stay so. Tiny TimesFM 2.5 /
PatchTST models and tiny CSVs, offline; the Hub is the fake of `tests/test_hub.py`.
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled
from models import build
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from test_hub import hub, pruned_patchtst  # noqa: F401  (`hub`: the fake-Hub fixture)
from transformers import (
    AutoModelForTimeSeriesPrediction,
    TimesFm2_5Config,
    TimesFm2_5ModelForPrediction,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module

import hf_tsprune.hub as hub_module
import hf_tsprune.pipeline as pipeline
from hf_tsprune import (
    PruningCallback,
    PruningConfig,
    install_masks,
    is_pruned_model,
    masked_groups,
    save_pruned,
    set_masks,
    shrink,
)
from hf_tsprune.callback import STATE_FILE, NonFiniteLossError
from hf_tsprune.data import load_forecasting_dataset, load_time_series
from hf_tsprune.evaluation import evaluate_forecaster, load_forecaster
from hf_tsprune.hub import HubPushError, HubUnreachableError, push_folder_to_hub, push_pruned_to_hub
from hf_tsprune.results import RunResult
from hf_tsprune.training import ForecastCollator, training_label_names

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import finetune as finetune_recipe  # noqa: E402
import prune_finetune  # noqa: E402

# -- the task: a tiny hourly CSV and a tiny TimesFM 2.5 (context 64), as in test_recipes ------------------------------


def hourly_frame(length: int = 1200) -> pd.DataFrame:
    t = np.arange(length)
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "date": pd.date_range("2020-01-01", periods=length, freq="h"),
            "a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(length),
            "b": np.cos(2 * np.pi * t / 24) + 0.002 * t + 0.1 * rng.standard_normal(length),
        }
    )


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    hourly_frame().to_csv(folder / "tiny.csv", index=False)
    torch.manual_seed(0)
    config = TimesFm2_5Config(
        patch_length=8, context_length=64, horizon_length=16, num_hidden_layers=2, hidden_size=32,
        intermediate_size=64, head_dim=8, num_attention_heads=4, num_key_value_heads=4, output_quantile_len=16,
        max_position_embeddings=64,
    )  # fmt: skip
    TimesFm2_5ModelForPrediction(config).save_pretrained(folder / "model")
    return folder


def argv(task: Path, out: Path, *extra: str, dataset: Path | None = None) -> list[str]:
    return [
        "--model_name_or_path", str(task / "model"), "--dataset", str(dataset or task / "tiny.csv"),
        "--context_length", "64", "--prediction_length", "16", "--output_dir", str(out),
        "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--disable_tqdm", "true",
        "--use_cpu", "true", "--eval_steps", "10", "--finetune_epochs", "1", *extra,
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: relative path -> (size, mtime in ns); `{}` for a missing folder."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def fails(main, args: list[str], error: type, *words: str) -> BaseException:
    """Runs a recipe's `main`, which must raise `error` with every regex of `words` in its message."""
    with pytest.raises(error) as raised:
        main(args)
    for word in words:
        assert re.search(word, str(raised.value)), (word, str(raised.value))
    return raised.value


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def saved_pruned_patchtst(folder: Path) -> Path:
    model, plan = pruned_patchtst(convert=False)
    save_pruned(model, folder, base_model="org/base", plan=plan)
    return folder


# -- the table's rows: faults that passed silently --------------------------------------------------------------------


def test_row_inf_in_a_training_column_is_masked_and_the_run_stays_finite(task, tmp_path, caplog):
    frame = hourly_frame()
    frame.loc[100, "a"] = np.inf
    data = write_csv(frame, tmp_path / "inf_train.csv")
    # the missing-value policy "raise" refuses it before any work, naming the file, the column and the count
    fails(
        prune_finetune.main, argv(task, tmp_path / "refused", "--missing_values", "raise", dataset=data), ValueError,
        "inf_train.csv", "column 'a': 1 ±inf", "missing_values",
    )  # fmt: skip
    assert snapshot(tmp_path / "refused") == {}
    # the default policy masks it (counted in the missing-value warning) and the run stays finite
    with caplog.at_level(logging.WARNING):
        result = prune_finetune.main(argv(task, tmp_path / "run", dataset=data)).to_dict()
    assert "1 missing (NaN) or non-finite (±inf) values" in caplog.text and "column 'a': 1 ±inf" in caplog.text
    for stage in ("zero_shot", "pruned", "finetuned"):
        assert np.isfinite(result[stage]["test"]["mse"]) and np.isfinite(result[stage]["test"]["mae"]), stage
    assert np.isfinite(result["finetuned"]["validation_loss"])
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_row_inf_only_in_the_test_rows_is_masked_with_a_warning(tmp_path, caplog):
    frame = hourly_frame(400)
    frame.loc[[350, 351], "b"] = [np.inf, -np.inf]
    path = write_csv(frame, tmp_path / "inf_test.csv")
    before = snapshot(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = load_forecasting_dataset(path, context_length=32, prediction_length=8, channel_independent=False)
    assert "2 missing (NaN) or non-finite (±inf)" in caplog.text and "column 'b': 2 ±inf" in caplog.text
    for split in ("train", "validation", "test"):
        windows = data[split][:]
        for key in ("past_values", "future_values"):
            assert torch.isfinite(windows[key]).all(), (split, key)  # no non-finite value reaches a model
    test = data["test"][:]
    assert (test["past_observed_mask"][..., 1] == 0).any() and (test["future_observed_mask"][..., 1] == 0).any()
    with pytest.raises(ValueError, match="inf_test.csv.*column 'b': 2 ±inf"):
        load_forecasting_dataset(path, context_length=32, prediction_length=8, missing_values="raise")
    assert snapshot(tmp_path) == before


def test_row_tensor_deleted_from_a_pruned_checkpoint_refuses_to_load(tmp_path):
    folder = saved_pruned_patchtst(tmp_path / "pruned")
    # the class `trust_remote_code=True` loads with transformers alone: the checkpoint's own copy of the code
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    remote_class = get_class_from_dynamic_module(auto_map["AutoModelForTimeSeriesPrediction"], str(folder))
    assert remote_class.__module__.startswith("transformers_modules.")
    assert remote_class.from_pretrained(folder) is not None  # the intact checkpoint loads
    weights = load_file(folder / "model.safetensors")
    deleted = "model.encoder.layers.0.ff.3.weight"
    weights.pop(deleted)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    before = snapshot(folder)
    pruned_class = type(pruned_patchtst()[0])
    loaders = {
        "hf_tsprune class": lambda: pruned_class.from_pretrained(folder),
        "AutoModelForTimeSeriesPrediction": lambda: AutoModelForTimeSeriesPrediction.from_pretrained(folder),
        "load_forecaster": lambda: load_forecaster(folder),
        "trust_remote_code": lambda: remote_class.from_pretrained(folder),
    }
    for load in loaders.values():
        with pytest.raises(ValueError, match=f"missing tensors {deleted}.*freshly initialised.*strict=False"):
            load()
    assert snapshot(folder) == before
    # an extra tensor, and the dense checkpoints the recipes load, too
    weights[deleted] = torch.zeros(1)
    weights["extra.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # a tensor of another shape
        load_forecaster(folder)
    build("patchtst").save_pretrained(tmp_path / "dense")
    weights = load_file(tmp_path / "dense" / "model.safetensors")
    weights["extra.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "dense" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected tensors extra.weight"):
        load_forecaster(tmp_path / "dense")
    with pytest.raises(ValueError, match="missing tensors"):
        pipeline.load_model(str(_without_tensor(tmp_path / "dense", tmp_path / "dense2")))
    assert load_forecaster(tmp_path / "dense", strict=False) is not None  # opting out, explicitly
    # non-finite weights: every forecast would be non-finite
    weights.pop("extra.weight")
    embedding = "model.encoder.embedder.input_embedding.weight"
    weights[embedding] = torch.full_like(weights[embedding], float("nan"))
    save_file(weights, tmp_path / "dense" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="NaN or infinite weights"):
        load_forecaster(tmp_path / "dense")


def _without_tensor(folder: Path, copy: Path) -> Path:
    shutil.copytree(folder, copy)
    weights = load_file(copy / "model.safetensors")
    weights.pop(next(key for key in sorted(weights) if key.startswith("model.")))
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


@pytest.mark.parametrize("case", ["offline", "no token", "invalid repo id", "unreachable", "rejected token"])
def test_row_push_to_hub_is_checked_before_any_work(hub, task, tmp_path, monkeypatch, case):  # noqa: F811
    fake = hub(unreachable=case == "unreachable", reject_token=case == "rejected token")
    repo = "me/bad repo!" if case == "invalid repo id" else "me/tiny-pruned"
    args = argv(task, tmp_path / "out", "--push_to_hub", "true", "--hub_model_id", repo)
    if case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    error, words = {
        "offline": (OfflineModeIsEnabled, ("offline mode is enabled", "HF_HUB_OFFLINE")),
        "no token": (LocalTokenNotFoundError, ("no Hugging Face token", "HF_TOKEN", "hf auth login")),
        "invalid repo id": (ValueError, ("not a valid Hub repository id", "--hub_model_id")),
        "unreachable": (HubUnreachableError, ("Could not reach the Hugging Face Hub", "nothing was uploaded")),
        "rejected token": (PermissionError, ("rejects the token", "HF_TOKEN")),
    }[case]
    start = time.perf_counter()
    fails(prune_finetune.main, args, error, *words)
    assert time.perf_counter() - start < 10  # before the model and the data are even loaded
    assert snapshot(tmp_path / "out") == {} and fake.commits == [] and fake.created == []
    assert all(r.method == "GET" for r in fake.requests)
    if case == "offline":  # the finetune recipe checks the same
        fails(finetune_recipe.main, args, error, *words)
        assert snapshot(tmp_path / "out") == {}


def test_row_failed_push_keeps_the_run_outputs_and_says_how_to_retry(hub, task, tmp_path):  # noqa: F811
    fake = hub(fail_commit=True)
    out = tmp_path / "out"
    error = fails(
        prune_finetune.main, argv(task, out, "--push_to_hub", "true", "--hub_model_id", "me/tiny-pruned"),
        HubPushError, "push_folder_to_hub", "outputs are complete", re.escape(str(out / "model")), "422",
    )  # fmt: skip
    assert error.__cause__ is not None
    # the local outputs were complete before the push started
    result = RunResult.load(out / "results.json")
    assert result.saved_to == str(out / "model") and np.isfinite(result.finetuned.test.mse)
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(out / "model"))
    assert load_forecaster(out / "model") is not None
    assert fake.commits == [] and [d["name"] for d in fake.deleted] == ["tiny-pruned"]  # no partial repository


def test_row_push_pruned_to_hub_checks_the_hub_before_rendering(hub, tmp_path, monkeypatch):  # noqa: F811
    fake = hub(unreachable=True)
    model, plan = pruned_patchtst(convert=False)

    def rendered(*args, **kwargs):
        raise AssertionError("saved or rendered before the Hub was reached")

    for name in ("save_pruned", "save_model_card", "plot_kept_units", "make_model_card"):
        monkeypatch.setattr(hub_module, name, rendered)
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="Could not reach the Hugging Face Hub.*nothing was uploaded"):
        push_pruned_to_hub(model, "me/unreachable", plan=plan)
    assert time.perf_counter() - start < 5
    assert fake.created == [] and os.listdir(tmp_path / "tmp") == []
    assert not is_pruned_model(model)  # the model was not converted either


@pytest.mark.parametrize("case", ["longer than the model", "too short for a split"])
def test_row_context_length_is_checked_against_the_model_and_the_data(task, tmp_path, case):
    if case == "longer than the model":
        args = argv(task, tmp_path / "out")
        args[args.index("--context_length") + 1] = "128"
        words = ("--context_length 128 is longer than", "64 steps", "--context_length 64 or less")
    else:
        args = argv(task, tmp_path / "out", dataset=write_csv(hourly_frame(120), tmp_path / "short.csv"))
        words = ("validation split of .*short.csv has no window", "--context_length", "--prediction_length")
    fails(prune_finetune.main, args, ValueError, *words)
    assert snapshot(tmp_path / "out") == {}


@pytest.mark.parametrize(
    "name, words",
    [
        (
            "someone/no-such-model",
            ("not a local folder", "--model_name_or_path", "Check the spelling", "Offline mode is on"),
        ),
        ("./no/such/folder", ("No model folder", "--model_name_or_path", "Check the path")),
        ("empty-folder", ("holds no config.json", "--model_name_or_path", "save_pretrained")),
        ("tiny.csv", ("is a file", "--model_name_or_path")),
    ],
)
def test_row_unknown_model_name_or_path(task, tmp_path, monkeypatch, name, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty-folder").mkdir()
    shutil.copy(task / "tiny.csv", tmp_path / "tiny.csv")
    args = argv(task, tmp_path / "out")
    args[args.index("--model_name_or_path") + 1] = name
    fails(prune_finetune.main, args, ValueError, *words)
    assert snapshot(tmp_path / "out") == {}


def test_row_grid_value_that_is_not_a_number(task, tmp_path):
    fails(
        prune_finetune.main, argv(task, tmp_path / "out", "--grid", "ratio_per_epoch=a,b"), ValueError,
        "Bad --grid entry 'ratio_per_epoch=a,b'", "'a' is not a number",
    )  # fmt: skip
    fails(
        prune_finetune.main, argv(task, tmp_path / "out", "--grid", "ratio_per_epoch=0.2,1.5"), ValueError,
        "--grid point .*1.5", "ratio_per_epoch",
    )  # fmt: skip
    fails(
        finetune_recipe.main, argv(task, tmp_path / "out", "--grid", "learning_rate=1e-4,fast"), ValueError,
        "Bad --grid", "'fast' is not a number",
    )  # fmt: skip
    assert snapshot(tmp_path / "out") == {}


@pytest.mark.parametrize(
    "content, words", [("", ("empty.csv is empty", "header row")), ("date,a,b\n", ("no data rows",))]
)
def test_row_empty_csv_names_the_file(task, tmp_path, content, words):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    fails(prune_finetune.main, argv(task, tmp_path / "out", dataset=path), ValueError, re.escape(str(path)), *words)
    assert snapshot(tmp_path / "out") == {} and path.read_text() == content


def test_row_set_masks_refuses_fractional_values():
    model = build("patchtst")
    install_masks(model)
    group = masked_groups(model)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"given mask of {group.name} holds values other than 0 and 1.*0.4"):
        set_masks(model, {group.name: torch.full((group.num_units,), 0.4)})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing written
    with torch.no_grad():
        group.mask[0] = 0.4  # written into the parameter directly
    with pytest.raises(ValueError, match=f"installed mask of {group.name} holds values other than 0 and 1"):
        shrink(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}


def test_row_pruning_callback_without_masks_names_install_masks(tmp_path):
    model = build("patchtst")
    data = load_forecasting_dataset(
        write_csv(hourly_frame(200), tmp_path / "d.csv"), context_length=32, prediction_length=8,
        channel_independent=False,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            str(tmp_path / "out"), max_steps=2, report_to=[], use_cpu=True, remove_unused_columns=False,
            label_names=training_label_names(model),
        ),
        train_dataset=data["train"], data_collator=ForecastCollator(model), callbacks=[PruningCallback()],
    )  # fmt: skip
    with pytest.raises(ValueError, match="No pruning masks on this model: call `hf_tsprune.install_masks") as raised:
        trainer.train()
    assert "prepare_for_pruning" not in str(raised.value)
    assert snapshot(tmp_path / "out") == {}


def test_row_overwrite_output_dir_removes_the_previous_run(task, tmp_path):
    out = tmp_path / "out"
    for relative in ("results.json", "model/config.json", "prune_run/checkpoint-99/" + STATE_FILE, "grid-3/x"):
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_text("{}")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    fails(
        prune_finetune.main, argv(task, out), ValueError, "already holds a run", "grid-3/", "model/", "prune_run/",
        "results.json", "--overwrite_output_dir",
    )  # fmt: skip
    crashed = tmp_path / "crashed"  # a run that never reached results.json still holds checkpoints
    (crashed / "prune_run" / "checkpoint-5").mkdir(parents=True)
    fails(prune_finetune.main, argv(task, crashed), ValueError, "already holds a run .*prune_run/")
    # a fault found after the folder check leaves the previous run as it was
    bad = argv(task, out, "--overwrite_output_dir", "true")
    bad[bad.index("--context_length") + 1] = "128"
    fails(prune_finetune.main, bad, ValueError, "--context_length 128")
    assert snapshot(out) == before
    prune_finetune.main(argv(task, out, "--overwrite_output_dir", "true"))
    assert not (out / "prune_run" / "checkpoint-99").exists() and not (out / "grid-3").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not a run artefact: left alone
    assert RunResult.load(out / "results.json").finetuned is not None


def test_row_evaluating_a_pruned_checkpoint_gives_no_family_warning(tmp_path, caplog):
    folder = saved_pruned_patchtst(tmp_path / "pruned")
    data = load_forecasting_dataset(
        write_csv(hourly_frame(200), tmp_path / "d.csv"), context_length=32, prediction_length=8,
        channel_independent=False,
    )  # fmt: skip
    before = snapshot(folder)
    with caplog.at_level(logging.WARNING):
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        remote = get_class_from_dynamic_module(auto_map["AutoModelForTimeSeriesPrediction"], str(folder))
        for model in (load_forecaster(folder), remote.from_pretrained(folder)):
            result = evaluate_forecaster(model, data["test"], metrics=("mse",), show_progress=False)
            assert np.isfinite(result["mse"])
    assert "forecasting it as one" not in caplog.text and " is not a " not in caplog.text
    assert snapshot(folder) == before


def test_row_recipe_docstring_names_the_saved_folders():
    doc = prune_finetune.__doc__
    assert "pruned_model" not in doc and "<output_dir>/model" in doc
    assert "<output_dir>/prune_run/checkpoint-N" in doc and "`--eval_steps`" in doc and "no `--save_steps`" in doc
    help_text = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(prune_finetune.PruneFinetuneArguments)}
    assert "checkpoint" in help_text["eval_steps"] and "--save_steps" in help_text["eval_steps"]
    assert "<output_dir>/model" in help_text["output_dir"]


# -- Build: a non-finite loss or gradient stops the run ---------------------------------------------------------------


@dataclasses.dataclass
class NaNTargets(ForecastCollator):
    """Training batches whose targets are NaN (what an unmasked bad value would give)."""

    def __call__(self, features):
        batch = super().__call__(features)
        batch["future_values"] = torch.full_like(batch["future_values"], float("nan"))
        return batch


@pytest.mark.parametrize("recipe, stage", [(prune_finetune, "prune run"), (finetune_recipe, "finetune")])
def test_non_finite_loss_stops_the_run_naming_the_stage_and_step(task, tmp_path, monkeypatch, recipe, stage):
    monkeypatch.setattr(pipeline, "ForecastCollator", NaNTargets)
    out = tmp_path / "out"
    # the stages evaluate before their first step (eval_on_start), so the NaN validation loss stops them at step 0
    fails(
        recipe.main,
        argv(task, out),
        NonFiniteLossError,
        f"The {stage} stopped at optimizer step 0",
        "eval_loss is nan",
    )
    assert not any(p.is_file() for p in out.rglob("*"))  # nothing saved as best, nothing saved at all


# -- already handled: they stay so ------------------------------------------------------------------------------------


def test_handled_nan_cells_are_masked_or_refused(tmp_path, caplog):
    frame = hourly_frame(200)
    frame.loc[[5, 150], "a"] = np.nan
    path = write_csv(frame, tmp_path / "nan.csv")
    before = snapshot(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = load_forecasting_dataset(path, context_length=32, prediction_length=8, channel_independent=False)
    assert "2 missing (NaN)" in caplog.text and "column 'a': 2 NaN" in caplog.text
    assert data["train"][0]["past_observed_mask"][5, 0] == 0 and torch.isfinite(data["train"][:]["past_values"]).all()
    with pytest.raises(ValueError, match="nan.csv: series .* 2 missing \\(NaN\\).*column 'a': 2 NaN"):
        load_forecasting_dataset(path, context_length=32, prediction_length=8, missing_values="raise")
    assert snapshot(tmp_path) == before


def test_handled_unsorted_and_duplicated_timestamps(tmp_path, caplog):
    frame = hourly_frame(100)
    shuffled = write_csv(frame.sample(frac=1.0, random_state=0), tmp_path / "unsorted.csv")
    duplicated = write_csv(pd.concat([frame, frame.iloc[[10]]]), tmp_path / "duplicated.csv")
    before = snapshot(tmp_path)
    with caplog.at_level(logging.WARNING):
        load_time_series(shuffled)
        load_time_series(duplicated)
    assert "not sorted" in caplog.text and "duplicated timestamps" in caplog.text
    with pytest.raises(ValueError, match="1 duplicated timestamps.*duplicate_timestamps='drop'"):
        load_time_series(duplicated, duplicate_timestamps="raise")
    assert snapshot(tmp_path) == before


def test_handled_short_series(task, tmp_path):
    short = write_csv(hourly_frame(60), tmp_path / "short.csv")
    fails(
        prune_finetune.main, argv(task, tmp_path / "out", dataset=short), ValueError,
        "shorter than context_length \\+ prediction_length", "Lower `context_length` or `prediction_length`",
    )  # fmt: skip
    assert snapshot(tmp_path / "out") == {}


def test_handled_unknown_dataset_name(task, tmp_path):
    args = argv(task, tmp_path / "out")
    args[args.index("--dataset") + 1] = "ETTx9"
    fails(prune_finetune.main, args, ValueError, "Unknown dataset 'ETTx9'", "Known benchmarks: ETTh1")
    assert snapshot(tmp_path / "out") == {}


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--ratio_per_epoch", "1.5", "ratio_per_epoch=1.5"),
        ("--ema", "0", "ema=0"),
        ("--max_sparsity", "1", "max_spar"),
    ],
)
def test_handled_out_of_range_ratios(task, tmp_path, flag, value, words):
    fails(prune_finetune.main, argv(task, tmp_path / "out", flag, value), ValueError, words)
    assert snapshot(tmp_path / "out") == {}


def test_handled_truncated_safetensors(task, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(task / "model", folder)
    content = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(content[: len(content) // 2])
    before = snapshot(folder)
    args = argv(task, tmp_path / "out")
    args[args.index("--model_name_or_path") + 1] = str(folder)
    fails(prune_finetune.main, args, SafetensorError, "incomplete metadata")
    assert snapshot(tmp_path / "out") == {} and snapshot(folder) == before


def test_handled_size_mismatched_config(tmp_path):
    folder = saved_pruned_patchtst(tmp_path / "pruned")
    config = json.loads((folder / "config.json").read_text())
    block = next(name for name, sizes in config["hf_tsprune_layout"].items() if sizes["kind"] == "mlp")
    config["hf_tsprune_layout"][block]["width"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    before = snapshot(folder)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        load_forecaster(folder)
    assert snapshot(folder) == before


class _Planted:
    """A pickled object that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_handled_pickle_files(tmp_path):
    marker = tmp_path / "code-was-run"
    folder = tmp_path / "dense"
    build("patchtst").save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weight": _Planted(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="Weights only load failed") as raised:
        load_forecaster(folder)
    assert type(raised.value).__name__ == "UnpicklingError" and not marker.exists()
    # the prune run's resume state is read the same way
    model = build("patchtst")
    install_masks(model)
    checkpoint = tmp_path / "run" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    torch.save({"scorer": _Planted(marker)}, checkpoint / STATE_FILE)
    state = TrainerState()
    state.global_step = 5
    args = SimpleNamespace(max_grad_norm=0.0, output_dir=str(tmp_path / "run"), gradient_accumulation_steps=1,
                           num_train_epochs=1)  # fmt: skip
    with pytest.raises(Exception, match="Weights only load failed"):
        PruningCallback(PruningConfig()).on_train_begin(args, state, TrainerControl(), model=model)
    assert not marker.exists()


def test_handled_offline_push(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, plan = pruned_patchtst(convert=False)
    with pytest.raises(OfflineModeIsEnabled, match="offline mode is enabled \\(HF_HUB_OFFLINE=1\\).*save_pruned"):
        push_pruned_to_hub(model, "me/offline", plan=plan)
    folder = saved_pruned_patchtst(tmp_path / "saved")
    before = snapshot(tmp_path)
    with pytest.raises(OfflineModeIsEnabled, match="Unset HF_HUB_OFFLINE"):
        push_folder_to_hub(folder, "me/offline")
    assert snapshot(tmp_path) == before and not is_pruned_model(model)


def test_handled_kill_and_resume(task, tmp_path):
    out = tmp_path / "out"
    common = ["--eval_steps", "5", "--train_stride", "2", "--ratio_per_epoch", "0.4"]
    script = str(ROOT / "recipes" / "prune_finetune.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, script, *argv(task, out, *common)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    state_file = out / "prune_run" / "checkpoint-5" / STATE_FILE
    deadline = time.monotonic() + 300
    while not state_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # kill -9 in the middle of the prune run
    process.wait(timeout=60)
    assert state_file.exists() and process.returncode == -signal.SIGKILL
    # prune-run checkpoints follow --eval_steps (the recipe docstring says so)
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "prune_run").glob("checkpoint-*"))
    assert steps and all(step % 5 == 0 for step in steps)
    assert not (out / "results.json").exists() and not (out / "model").exists()  # nothing half-done
    resumed = prune_finetune.main(argv(task, out, *common, "--resume_from_checkpoint", str(state_file.parent)))
    assert RunResult.load(out / "results.json").to_dict() == json.loads(json.dumps(resumed.to_dict(), default=str))
    assert resumed.best_mask_set.step is not None and np.isfinite(resumed.finetuned.test.mse)
