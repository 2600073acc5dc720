"""Quickstart: prune a small PatchTST on synthetic seasonal series with `PruningCallback`, then shrink it.

    python examples/quickstart.py

Runs offline in well under a minute on 2 CPU cores: a dense warm-up finetune, a prune run (weights frozen, Taylor/EMA
scores, best mask set by validation), an exact physical shrink, and a printed per-layer plan.
"""

import os

import torch
from torch.utils.data import Dataset
from transformers import PatchTSTConfig, PatchTSTForPrediction, Trainer, TrainingArguments

from hf_tsprune import PruningCallback, PruningConfig, install_masks, shrink

CONTEXT, HORIZON = 64, 16


class SeasonalWindows(Dataset):
    """Noisy seasonal windows with random phases and trends: a period of 24 steps plus a half-period harmonic, or
    (`periods`) a period drawn per window from `periods` (the broad data a foundation model is pretrained on)."""

    def __init__(self, n: int, seed: int, periods: tuple[int, ...] = (24,)):
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(CONTEXT + HORIZON).float()
        phase, trend = torch.rand(n, 1, generator=g) * 6.28, torch.randn(n, 1, generator=g) * 0.01
        period = torch.tensor(periods, dtype=torch.float)[torch.randint(len(periods), (n, 1), generator=g)]
        series = torch.sin(2 * torch.pi * t / period + phase) + 0.5 * torch.sin(4 * torch.pi * t / period) + trend * t
        self.series = (series + 0.1 * torch.randn(n, t.numel(), generator=g)).unsqueeze(-1)

    def __len__(self):
        return len(self.series)

    def __getitem__(self, i):
        return {"past_values": self.series[i, :CONTEXT], "future_values": self.series[i, CONTEXT:]}


def main():
    torch.manual_seed(0)
    config = PatchTSTConfig(
        context_length=CONTEXT, prediction_length=HORIZON, num_input_channels=1, patch_length=8, patch_stride=8,
        d_model=64, num_attention_heads=8, num_hidden_layers=3, ffn_dim=256, dropout=0.0, attention_dropout=0.0,
        ff_dropout=0.0, positional_dropout=0.0, path_dropout=0.0, head_dropout=0.0,
    )  # fmt: skip
    model = PatchTSTForPrediction(config)
    pretraining = SeasonalWindows(4096, 2, periods=(6, 9, 12, 16, 24, 32, 48))
    train, validation = SeasonalWindows(2048, 0), SeasonalWindows(256, 1)
    common = dict(per_device_train_batch_size=64, label_names=["future_values"], report_to=[], use_cpu=True,
                  save_strategy="no", logging_steps=16, disable_tqdm=os.environ.get("CI") == "true")  # fmt: skip

    # 1. a dense model pretrained on many periods (stands in for a pretrained TSFM); the task has one
    Trainer(model=model, args=TrainingArguments("runs/quickstart-dense", num_train_epochs=2, learning_rate=3e-3,
                                                **common), train_dataset=pretraining).train()  # fmt: skip

    # 2. prune run: masks on, weights frozen, 40% of the channels go in one epoch; best mask set by validation
    #    (the unpruned model of step 0 included: eval_on_start)
    install_masks(model)
    # min_sparsity: without it validation keeps the unpruned model here (a mask set is judged before any finetuning)
    callback = PruningCallback(PruningConfig(ratio_per_epoch=0.4, ema=0.3, min_sparsity=0.2))
    args = TrainingArguments("runs/quickstart-prune", num_train_epochs=1, eval_strategy="steps", eval_steps=8, eval_on_start=True,
                             max_grad_norm=0.0, **common)  # fmt: skip
    Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation, callbacks=[callback]).train()
    print(
        f"best mask set: step {callback.best_step}, sparsity {callback.best_sparsity:.2f}, eval_loss {callback.best_metric:.4f}"
    )

    # 3. shrink: physically smaller, same outputs as the masked model
    plan = shrink(model)
    print(plan)


if __name__ == "__main__":
    main()
