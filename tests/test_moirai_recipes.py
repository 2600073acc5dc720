"""The three recipes on the Moirai families (offline, CPU): tiny random `uni2ts` modules saved as their own
`save_pretrained` folders (what `MoiraiModule.from_pretrained("Salesforce/moirai-1.0-R-small")` loads), on a tiny
hourly CSV. Zero-shot, prune -> shrink -> finetune and the dense finetune on Moirai 1.x, prune-finetune with expert
removal on Moirai-MoE and on Moirai-2; pruned checkpoints reload (fresh `load_pruned`) with identical forecasts and run
in the recipes again; bad input fails before any work."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_moirai import distribution_output

from hf_tsprune.evaluation import load_forecaster
from hf_tsprune.families.moirai import MoiraiForPrediction
from hf_tsprune.modeling import load_pruned

pytest.importorskip("uni2ts")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import finetune as finetune_recipe  # noqa: E402
import prune_finetune  # noqa: E402
import zero_shot  # noqa: E402

MOIRAI = dict(d_model=128, num_layers=2, patch_sizes=[8, 16], max_seq_len=64, attn_dropout_p=0.0, dropout_p=0.0)
MOIRAI_MOE = dict(
    d_model=128, d_ff=32, num_layers=2, patch_sizes=[8], max_seq_len=64, attn_dropout_p=0.0, dropout_p=0.0
)
MOIRAI_2 = dict(d_model=128, d_ff=64, num_layers=2, patch_size=8, max_seq_len=64, attn_dropout_p=0.0, dropout_p=0.0,
                num_predict_token=2, quantile_levels=[0.1, 0.5, 0.9])  # fmt: skip


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A 2-channel hourly CSV and the tiny dense modules' own folders (plus a tiny TimesFM 2.5)."""
    from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction
    from uni2ts.model.moirai import MoiraiModule
    from uni2ts.model.moirai2 import Moirai2Module
    from uni2ts.model.moirai_moe import MoiraiMoEModule

    folder = tmp_path_factory.mktemp("moirai_task")
    t = np.arange(1200)
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "date": pd.date_range("2020-01-01", periods=len(t), freq="h"),
            "a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(len(t)),
            "b": np.cos(2 * np.pi * t / 24) + 0.002 * t + 0.1 * rng.standard_normal(len(t)),
        }
    ).to_csv(folder / "tiny.csv", index=False)
    torch.manual_seed(0)
    MoiraiModule(distr_output=distribution_output(), **MOIRAI).save_pretrained(folder / "moirai")
    moe = MoiraiMoEModule(distr_output=distribution_output(), **MOIRAI_MOE)
    moe.encoder.centroid.normal_()  # (a buffer that `torch.empty` leaves uninitialised)
    moe.save_pretrained(folder / "moirai_moe")
    Moirai2Module(**MOIRAI_2).save_pretrained(folder / "moirai2")
    config = TimesFm2_5Config(
        patch_length=8, context_length=64, horizon_length=16, num_hidden_layers=1, hidden_size=32,
        intermediate_size=64, head_dim=8, num_attention_heads=4, num_key_value_heads=4, output_quantile_len=16,
        max_position_embeddings=64,
    )  # fmt: skip
    TimesFm2_5ModelForPrediction(config).save_pretrained(folder / "timesfm")
    return folder


def argv(task, model, out, *extra):
    return [
        "--model_name_or_path", str(model), "--dataset", str(task / "tiny.csv"), "--context_length", "32",
        "--prediction_length", "16", "--output_dir", str(out), "--per_device_train_batch_size", "32",
        "--per_device_eval_batch_size", "256", "--disable_tqdm", "true", "--use_cpu", "true", "--eval_steps", "2",
        "--finetune_epochs", "1", *extra,
    ]  # fmt: skip


def finite_figures(saved: dict, stages=("zero_shot", "pruned", "finetuned")) -> None:
    for stage in stages:
        test = saved[stage]["test"]
        assert test["n_windows"] > 0 and np.isfinite(test["mse"]) and np.isfinite(test["mae"]), stage


def capture_saved_model(monkeypatch) -> dict:
    """Records the model the prune recipe saves (the in-memory final model)."""
    captured = {}
    original = prune_finetune.save_outputs

    def save_outputs(args, model, plan, result):
        captured["model"] = model
        return original(args, model, plan, result)

    monkeypatch.setattr(prune_finetune, "save_outputs", save_outputs)
    return captured


def same_forecasts(model, folder) -> bool:
    past = torch.randn(4, 32, 2, generator=torch.Generator().manual_seed(0)) + 3.0
    reloaded = load_pruned(folder)
    with torch.no_grad():
        return torch.equal(
            model.eval()(past_values=past)["prediction_outputs"], reloaded(past_values=past)["prediction_outputs"]
        )


def test_moirai_folders_are_recognised_and_need_their_task_settings(task):
    settings = dict(prediction_length=16, context_length=32, patch_size=16)
    model = load_forecaster(task / "moirai", task_settings=settings)
    assert type(model) is MoiraiForPrediction and model.config.patch_size == 16 and not model.training
    assert type(load_forecaster(task / "moirai_moe", task_settings=settings | {"patch_size": None})).__name__ == (
        "MoiraiMoEForPrediction"  # one patch size: the default
    )
    assert type(load_forecaster(task / "moirai2", task_settings=settings | {"patch_size": None})).__name__ == (
        "Moirai2ForPrediction"
    )
    with pytest.raises(ValueError, match=r"patch sizes \[8, 16\]: pass --patch_size"):
        load_forecaster(task / "moirai", task_settings=settings | {"patch_size": None})
    with pytest.raises(ValueError, match="--patch_size 32 is not a patch size"):
        load_forecaster(task / "moirai", task_settings=settings | {"patch_size": 32})
    with pytest.raises(ValueError, match="--prediction_length and --context_length"):
        load_forecaster(task / "moirai")


def test_moirai_recipes_end_to_end(task, tmp_path, monkeypatch):
    captured = capture_saved_model(monkeypatch)
    run = tmp_path / "prune"
    # --min_sparsity: the pruned checkpoint is under test (validation alone may keep the unpruned model)
    result = prune_finetune.main(
        argv(task, task / "moirai", run, "--patch_size", "8", "--min_sparsity", "0.2")
    ).to_dict()
    saved = json.loads((run / "results.json").read_text())
    finite_figures(saved)
    assert saved["params_after"] < saved["params_before"] and 0.2 <= saved["sparsity"] <= 0.35
    assert saved["finetuned"]["test"]["mse"] == pytest.approx(result["finetuned"]["test"]["mse"])
    assert "experts" not in saved and saved["settings"]["patch_size"] == 8
    folder = run / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["base_model_type"] == "moirai" and config["forecast"]["patch_size"] == 8
    assert not (folder / "kept_units.png").exists()  # no hf_tsprune model card (the mixin writes its own README)
    assert same_forecasts(captured["model"], folder)

    zero = zero_shot.main(
        ["--model_name_or_path", str(folder), "--dataset", str(task / "tiny.csv"), "--context_length", "32",
         "--prediction_length", "16", "--output_dir", str(tmp_path / "zero_pruned"), "--show_progress", "false"]
    )  # fmt: skip
    assert zero["test"]["mse"] == pytest.approx(saved["finetuned"]["test"]["mse"], rel=1e-5)

    dense = zero_shot.main(
        ["--model_name_or_path", str(task / "moirai"), "--dataset", str(task / "tiny.csv"), "--context_length", "32",
         "--prediction_length", "16", "--patch_size", "8", "--output_dir", str(tmp_path / "zero_dense"),
         "--show_progress", "false"]
    )  # fmt: skip
    assert dense["test"]["mse"] == pytest.approx(saved["zero_shot"]["test"]["mse"], rel=1e-5)

    tuned = finetune_recipe.main(argv(task, task / "moirai", tmp_path / "ft", "--patch_size", "8")).to_dict()
    assert tuned["params_after"] == tuned["params_before"] and np.isfinite(tuned["finetuned"]["test"]["mse"])
    settings = dict(prediction_length=16, context_length=32, patch_size=8)
    reloaded = load_forecaster(tmp_path / "ft" / "model", task_settings=settings)  # the module's own folder
    assert type(reloaded) is MoiraiForPrediction

    again = finetune_recipe.main(argv(task, folder, tmp_path / "ft_pruned")).to_dict()  # a pruned checkpoint
    assert again["params_after"] == saved["params_after"] and np.isfinite(again["finetuned"]["test"]["mse"])
    assert load_pruned(tmp_path / "ft_pruned" / "model").config.pruning["sparsity"] == saved["sparsity"]


@pytest.mark.parametrize("score", ["usage", "taylor"])
def test_moirai_moe_prune_finetune_with_expert_removal(task, tmp_path, monkeypatch, score):
    captured = capture_saved_model(monkeypatch)
    run = tmp_path / "moe"
    prune_finetune.main(argv(task, task / "moirai_moe", run, "--expert_threshold", "-1", "--expert_score", score))
    saved = json.loads((run / "results.json").read_text())
    finite_figures(saved)
    experts = saved["experts"]
    assert (experts["score"], experts["threshold"]) == (score, -1.0)
    assert (experts["experts_before"], experts["experts_after"], experts["removed"]) == (64, 4, 60)  # top-2 per layer
    assert all(len(kept) == 2 for kept in experts["kept_experts"].values())
    for name, usage in experts["usage"].items():
        assert len(usage) == 32 and abs(sum(usage) - 1) < 1e-9
        if score == "usage":  # the two most used experts stay
            assert sorted(experts["kept_experts"][name]) == sorted(np.argsort(-np.array(usage), kind="stable")[:2])
    assert ("taylor_scores" in experts) == (score == "taylor")
    assert saved["params_after"] < experts["params_after"] < experts["params_before"] == saved["params_before"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["pruning"]["experts"]["kept_experts"] == experts["kept_experts"]
    layout = config["hf_tsprune_layout"]
    assert [layout[name]["kept_experts"] for name in experts["kept_experts"]] == list(experts["kept_experts"].values())
    assert same_forecasts(captured["model"], run / "model")


def test_moirai2_prune_finetune(task, tmp_path, monkeypatch):
    captured = capture_saved_model(monkeypatch)
    run = tmp_path / "moirai2"
    prune_finetune.main(argv(task, task / "moirai2", run))
    saved = json.loads((run / "results.json").read_text())
    finite_figures(saved)
    assert saved["params_after"] < saved["params_before"]
    assert same_forecasts(captured["model"], run / "model")


def test_bad_input_fails_before_any_work(task, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--patch_size"):
        prune_finetune.main(argv(task, task / "moirai", out))
    with pytest.raises(ValueError, match="--patch_size"):
        finetune_recipe.main(argv(task, task / "moirai", out))
    with pytest.raises(ValueError, match="--expert_threshold"):
        prune_finetune.main(argv(task, task / "timesfm", out, "--context_length", "64", "--expert_threshold", "0"))
    with pytest.raises(ValueError, match="--expert_score"):
        prune_finetune.main(argv(task, task / "moirai_moe", out, "--expert_score", "random"))
    assert not out.exists()
