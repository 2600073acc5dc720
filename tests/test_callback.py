import pytest
import torch
from models import NO_DROPOUT
from torch.utils.data import Dataset
from transformers import PatchTSTConfig, PatchTSTForPrediction, Trainer, TrainerCallback, TrainingArguments

from hf_tsprune import PruningCallback, PruningConfig, install_masks, shrink
from hf_tsprune.masks import get_masks

CONTEXT, HORIZON = 32, 8


class SineWindows(Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(CONTEXT + HORIZON).float()
        series = torch.sin(t / 3 + torch.rand(n, 1, generator=g) * 6.28) + 0.1 * torch.randn(n, t.numel(), generator=g)
        self.x = series.unsqueeze(-1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"past_values": self.x[i, :CONTEXT], "future_values": self.x[i, CONTEXT:]}


class MaskSpy(TrainerCallback):
    """Records the masks in force at every evaluation (runs after PruningCallback)."""

    def __init__(self):
        self.at_eval = {}

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        self.at_eval[state.global_step] = (metrics["eval_loss"], get_masks(model))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = PatchTSTConfig(
        context_length=CONTEXT, prediction_length=HORIZON, num_input_channels=1, patch_length=8, patch_stride=8,
        d_model=16, num_attention_heads=4, num_hidden_layers=2, ffn_dim=32, **NO_DROPOUT,
    )  # fmt: skip
    return PatchTSTForPrediction(config)


def run(tmp_path, config, epochs=1, accumulation=1, batch=8, n_train=400, **overrides):
    model = tiny_model()
    install_masks(model)
    callback, spy = PruningCallback(config), MaskSpy()
    kwargs = dict(
        num_train_epochs=epochs, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        eval_strategy="steps", eval_steps=5, max_grad_norm=0.0, label_names=["future_values"], report_to=[],
        logging_steps=5, save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-2, weight_decay=0.1,
    )  # fmt: skip
    kwargs.update(overrides)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(str(tmp_path), **kwargs),
        train_dataset=SineWindows(n_train, 0),
        eval_dataset=SineWindows(64, 1),
        callbacks=[callback, spy],
    )
    trainer.train()
    return model, callback, spy, trainer


@pytest.mark.parametrize("accumulation", [1, 2])
def test_prunes_on_schedule_and_keeps_best_masks(tmp_path, accumulation):
    model, callback, spy, trainer = run(
        tmp_path, PruningConfig(ratio_per_epoch=0.3, ema=0.5), accumulation=accumulation
    )
    # sparsity reached at the end of the epoch is the target, within 2 points
    final = max(spy.at_eval)
    final_sparsity = next(h["sparsity"] for h in callback.history if h["step"] == final)
    assert abs(final_sparsity - 0.3) <= 0.02
    # the model ends with the mask set of the best evaluation
    losses = {step: loss for step, (loss, _) in spy.at_eval.items()}
    best = min(losses, key=losses.get)
    assert callback.best_step == best and callback.best_metric == pytest.approx(losses[best])
    final_masks = get_masks(model)
    assert all(torch.equal(final_masks[k], spy.at_eval[best][1][k]) for k in final_masks)
    # masks are exactly 0/1: the optimizer (lr 1e-2, weight decay) never moved them
    for name, param in model.named_parameters():
        if name.endswith("hf_tsprune_mask"):
            assert set(param.detach().unique().tolist()) <= {0.0, 1.0}
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("sparsity" in e and "params" in e for e in logged)
    assert logged[-1]["params"] < logged[0]["params"]
    plan = shrink(model)
    assert plan.max_rel_error < 1e-5


def test_frozen_weights_do_not_move(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    install_masks(model)
    callback = PruningCallback(PruningConfig(ratio_per_epoch=0.2))
    args = TrainingArguments(str(tmp_path), num_train_epochs=1, per_device_train_batch_size=16, max_grad_norm=0.0,
                             label_names=["future_values"], report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, learning_rate=0.1)  # fmt: skip
    Trainer(model=model, args=args, train_dataset=SineWindows(64, 0), callbacks=[callback]).train()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_stops_at_max_sparsity(tmp_path):
    config = PruningConfig(ratio_per_epoch=0.5, ema=1.0, max_sparsity=0.2)
    model, callback, spy, trainer = run(tmp_path, config, epochs=3)
    assert callback.finished
    assert trainer.state.global_step < 3 * 50  # stopped early
    assert callback.history[-1]["sparsity"] == pytest.approx(0.2, abs=0.011)


def test_requires_masks(tmp_path):
    model = tiny_model()
    args = TrainingArguments(str(tmp_path), max_steps=1, report_to=[], use_cpu=True, label_names=["future_values"])
    trainer = Trainer(model=model, args=args, train_dataset=SineWindows(8, 0), callbacks=[PruningCallback()])
    with pytest.raises(ValueError, match="install_masks"):
        trainer.train()


def test_resume_mid_run_reaches_the_same_masks(tmp_path):
    config = dict(ratio_per_epoch=0.4, ema=0.3)
    common = dict(save_strategy="steps", save_steps=10, eval_steps=10, n_train=160, epochs=2)
    full_model, full_cb, _, _ = run(tmp_path / "full", PruningConfig(**config), **common)
    # interrupted run: same settings, resumed from the step-10 checkpoint of the full run's twin
    run(tmp_path / "half", PruningConfig(**config), **common)
    checkpoint = tmp_path / "half" / "checkpoint-10"
    assert (checkpoint / "hf_tsprune_pruning_state.pt").is_file()
    model = tiny_model()
    install_masks(model)
    callback = PruningCallback(PruningConfig(**config))
    args = TrainingArguments(
        str(tmp_path / "half"), num_train_epochs=2, per_device_train_batch_size=8, eval_strategy="steps",
        eval_steps=10, max_grad_norm=0.0, label_names=["future_values"], report_to=[], save_strategy="steps",
        save_steps=10, use_cpu=True, disable_tqdm=True, learning_rate=1e-2, weight_decay=0.1,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=SineWindows(160, 0), eval_dataset=SineWindows(64, 1),
                      callbacks=[callback])  # fmt: skip
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert callback.best_step == full_cb.best_step
    resumed, full = get_masks(model), get_masks(full_model)
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    assert [h["step"] for h in callback.history] == [h["step"] for h in full_cb.history]


def test_two_process_ddp_matches_one_process(tmp_path):
    """CPU DDP over gloo: masks agree across ranks and with one process over the same global batch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(here)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    subprocess.run([*launch, str(here / "ddp_prune_worker.py"), str(tmp_path / "ddp"), "8"], env=env, check=True,
                   timeout=300, capture_output=True)  # fmt: skip
    subprocess.run([sys.executable, str(here / "ddp_prune_worker.py"), str(tmp_path / "one"), "16"], env=env,
                   check=True, timeout=300, capture_output=True)  # fmt: skip
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"masks_rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "one" / "masks_rank0.pt")
    assert rank0["world"] == rank1["world"] == 2 and single["world"] == 1
    for name, mask in single["masks"].items():
        assert torch.equal(rank0["masks"][name], rank1["masks"][name])
        assert torch.equal(rank0["masks"][name], mask)
    assert rank0["best_step"] == rank1["best_step"] == single["best_step"]
    assert 0 < sum(int((~m).sum()) for m in single["masks"].values())


def fitted_model(epochs: int = 4) -> PatchTSTForPrediction:
    """The tiny PatchTST trained on the sine windows, so that removing its channels costs validation loss."""
    model = tiny_model()
    args = TrainingArguments("unused", num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=3e-3,
                             label_names=["future_values"], report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True)  # fmt: skip
    Trainer(model=model, args=args, train_dataset=SineWindows(800, 2)).train()
    return model


def test_unpruned_model_is_a_candidate_and_kept_when_every_removal_hurts(tmp_path, caplog):
    model = fitted_model()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    install_masks(model)
    callback, spy = PruningCallback(PruningConfig(ratio_per_epoch=0.5, ema=0.5)), MaskSpy()
    args = TrainingArguments(
        str(tmp_path), num_train_epochs=1, per_device_train_batch_size=8, eval_strategy="steps", eval_steps=10,
        eval_on_start=True, max_grad_norm=0.0, label_names=["future_values"], report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=SineWindows(400, 0), eval_dataset=SineWindows(64, 1),
                      callbacks=[callback, spy])  # fmt: skip
    trainer.train()
    first, *later = callback.history
    assert first["step"] == 0 and first["sparsity"] == 0.0 and len(later) >= 3
    assert all(entry["eval_loss"] > first["eval_loss"] for entry in later)  # the premise: every removal hurts
    assert callback.best_step == 0 and callback.best_sparsity == 0.0
    assert all(bool(mask.all()) for mask in get_masks(model).values())
    plan = shrink(model)
    assert plan.params_after == plan.params_before
    assert all(torch.equal(dense[k], v) for k, v in model.state_dict().items())

    # min_sparsity takes the unpruned model (and every set below it) out of the running
    model = fitted_model()
    install_masks(model)
    callback = PruningCallback(PruningConfig(ratio_per_epoch=0.5, ema=0.5, min_sparsity=0.25))
    Trainer(model=model, args=args, train_dataset=SineWindows(400, 0), eval_dataset=SineWindows(64, 1),
            callbacks=[callback]).train()  # fmt: skip
    assert callback.best_sparsity >= 0.25 and callback.best_step > 0
    candidates = [h for h in callback.history if h["sparsity"] >= 0.25]
    assert callback.best_metric == min(h["eval_loss"] for h in candidates)

    # without eval_on_start the run says what it cannot compare against
    model = tiny_model()
    install_masks(model)
    without = TrainingArguments(str(tmp_path), max_steps=2, eval_strategy="steps", eval_steps=1, max_grad_norm=0.0,
                                label_names=["future_values"], report_to=[], save_strategy="no", use_cpu=True,
                                disable_tqdm=True)  # fmt: skip
    with caplog.at_level("WARNING", logger="hf_tsprune.callback"):
        Trainer(model=model, args=without, train_dataset=SineWindows(32, 0), eval_dataset=SineWindows(16, 1),
                callbacks=[PruningCallback()]).train()  # fmt: skip
    assert any("unpruned model (step 0) is not a candidate" in r.getMessage() for r in caplog.records)


def test_finetune_that_only_hurts_validation_returns_its_starting_weights(tmp_path):
    from hf_tsprune.callback import BestWeightsCallback

    model = fitted_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}

    class FlippedWindows(SineWindows):  # training targets of the opposite sign: every step moves away from validation
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {"past_values": item["past_values"], "future_values": -item["future_values"]}

    best = BestWeightsCallback("eval_loss")
    args = TrainingArguments(
        str(tmp_path), num_train_epochs=1, per_device_train_batch_size=16, eval_strategy="steps", eval_steps=5,
        eval_on_start=True, learning_rate=3e-3, label_names=["future_values"], report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=FlippedWindows(160, 0), eval_dataset=SineWindows(64, 1),
                      callbacks=[best])  # fmt: skip
    trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert evaluations[0]["step"] == 0 and len(evaluations) >= 3
    assert all(e["eval_loss"] > evaluations[0]["eval_loss"] for e in evaluations[1:])  # the premise
    assert best.best_step == 0
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
