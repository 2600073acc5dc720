"""Moirai-2 (`uni2ts`'s `Moirai2Module` in `Moirai2ForPrediction`): exact shrink (tiny and released widths) of heads
with their variate bias, value channels, SwiGLU and residual-block channels; the quantile adapter; prune -> shrink ->
finetune on its quantile loss; pruned checkpoints reloaded in a fresh process with identical forecasts.

Released layout (for `benchmarks/speed.py`, issue 16; the Hub `config.json` values as published, written out here
because the Hub is not reachable in tests: check them against the Hub file when it is):

- `Salesforce/moirai-2.0-R-small`: d_model 384, d_ff 1024, 6 layers, patch size 16, max_seq_len 1024, no dropout,
  scaling, 4 predicted tokens per position, quantile levels 0.1..0.9 (about 11 M parameters).
"""

import os
import subprocess
import sys

import pytest
import torch
from test_families import HORIZON, Windows
from test_moirai import FRESH_PROCESS
from test_surgery import check_exact_random_shrink, masked_vs_shrunk, params, random_masks
from transformers import Trainer, TrainingArguments

from hf_tsprune import PruningCallback, PruningConfig, get_family, get_spec, install_masks, save_pruned, shrink
from hf_tsprune.adapters import get_adapter
from hf_tsprune.modeling import load_pruned
from hf_tsprune.training import ForecastCollator, training_label_names

pytest.importorskip("uni2ts")

QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
MOIRAI_2_0_R_SMALL = dict(
    d_model=384, d_ff=1024, num_layers=6, patch_size=16, max_seq_len=1024, attn_dropout_p=0.0, dropout_p=0.0,
    scaling=True, num_predict_token=4, quantile_levels=QUANTILES,
)  # fmt: skip
"""The released Moirai-2.0-R small layout (see the module docstring)."""

TINY = dict(d_model=128, d_ff=64, num_layers=2, patch_size=8, max_seq_len=64, attn_dropout_p=0.0, dropout_p=0.0,
            num_predict_token=2, quantile_levels=QUANTILES)  # fmt: skip
FORECAST = dict(prediction_length=HORIZON, context_length=32)


def build(settings=TINY, seed: int = 0, forecast=FORECAST):
    from uni2ts.model.moirai2 import Moirai2Module

    from hf_tsprune.families.moirai2 import Moirai2ForPrediction

    torch.manual_seed(seed)
    return Moirai2ForPrediction(Moirai2Module(**settings), **forecast).eval()


def test_family_and_horizon_limit():
    model = build()
    assert get_family(model).name == "moirai2" and training_label_names(model) == ["future_values"]
    names = {g.name for g in install_masks(model)}
    assert {"model.in_proj", "model.out_proj", "model.encoder.layers.1.self_attn"} <= names
    with pytest.raises(ValueError, match="prediction_length must be <= 16"):
        build(forecast=dict(prediction_length=24, context_length=32))


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_exact_shrink_tiny(fraction):
    check_exact_random_shrink(build(), fraction, allow_empty_blocks=True)


@pytest.mark.slow
def test_exact_shrink_released_small_widths():
    model = build(MOIRAI_2_0_R_SMALL, forecast=dict(prediction_length=64, context_length=512))
    install_masks(model)
    plan, rel, shrunk = masked_vs_shrunk(model, random_masks(model, 0.5), batch_size=2, count_model_flops=False)
    assert rel < 1e-5 and params(model) == plan.params_after < 0.8 * plan.params_before
    assert torch.isfinite(shrunk).all()


def test_adapter_quantiles_and_median():
    model = build()
    adapter = get_adapter(model)
    past = torch.randn(3, 32, 2) + 5.0
    forecast = adapter.predict(model, past)
    assert forecast.mean.shape == (3, HORIZON, 2) and forecast.quantiles.shape == (3, HORIZON, 2, 9)
    assert torch.equal(forecast.mean, forecast.quantiles[..., 4])
    install_masks(model)
    shrink(model, random_masks(model, 0.4, seed=1))
    assert adapter.predict(model, past).mean.shape == forecast.mean.shape


def test_prune_shrink_finetune_save_and_reload_in_a_fresh_process(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build()
    install_masks(model)
    train, validation = Windows(32, 32, 1, 0), Windows(16, 32, 1, 1)
    common = dict(per_device_train_batch_size=8, label_names=training_label_names(model), report_to=[],
                  save_strategy="no", use_cpu=True, disable_tqdm=True, remove_unused_columns=False)  # fmt: skip
    callback = PruningCallback(PruningConfig(ratio_per_epoch=0.3, ema=0.5, min_sparsity=0.25))  # a pruned set
    prune_args = TrainingArguments(str(tmp_path / "prune"), num_train_epochs=1, eval_strategy="steps", eval_steps=2,
                                   max_grad_norm=0.0, learning_rate=1e-2, **common)  # fmt: skip
    Trainer(model=model, args=prune_args, train_dataset=train, eval_dataset=validation,
            data_collator=ForecastCollator(model), callbacks=[callback]).train()  # fmt: skip
    assert 0.2 < callback.scorer.sparsity <= 0.32
    plan = shrink(model)
    assert plan.max_rel_error < 1e-5 and params(model) == plan.params_after < plan.params_before
    finetune = Trainer(model=model.train(), train_dataset=train, data_collator=ForecastCollator(model),
                       args=TrainingArguments(str(tmp_path / "finetune"), max_steps=2, learning_rate=1e-3, **common))  # fmt: skip
    assert torch.isfinite(torch.tensor(finetune.train().training_loss))
    model.eval()
    save_pruned(model, tmp_path / "model", plan=plan)
    inputs = get_spec(model).example_inputs(model, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(**inputs)["prediction_outputs"]
    assert torch.equal(load_pruned(tmp_path / "model")(**inputs)["prediction_outputs"], expected)
    save_file(inputs, tmp_path / "inputs.safetensors")
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "model"), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "Moirai2ForPrediction"
    assert torch.equal(load_file(tmp_path / "out.safetensors")["output"], expected)
