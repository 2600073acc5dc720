"""Prune-run worker for the multi-process test: `accelerate launch --multi_gpu --num_processes 2 ... OUT BATCH`.

Each rank saves the final masks it holds to OUT/masks_rank{RANK}.pt so the test can compare ranks and runs.
"""

import os
import sys
from pathlib import Path

import torch
from test_callback import SineWindows, tiny_model
from transformers import Trainer, TrainingArguments

from hf_tsprune import PruningCallback, PruningConfig, install_masks
from hf_tsprune.masks import get_masks


def main(out: str, per_device_batch: int) -> None:
    model = tiny_model()
    install_masks(model)
    args = TrainingArguments(
        out, num_train_epochs=1, per_device_train_batch_size=per_device_batch, per_device_eval_batch_size=16,
        eval_strategy="steps", eval_steps=5, max_grad_norm=0.0, label_names=["future_values"], report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, train_sampling_strategy="sequential",
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None, ddp_timeout=120,
    )  # fmt: skip
    callback = PruningCallback(PruningConfig(ratio_per_epoch=0.3, ema=0.5))
    trainer = Trainer(model=model, args=args, train_dataset=SineWindows(320, 0), eval_dataset=SineWindows(64, 1),
                      callbacks=[callback])  # fmt: skip
    trainer.train()
    rank = trainer.args.process_index
    torch.save({"masks": get_masks(model), "world": trainer.args.world_size, "best_step": callback.best_step},
               Path(out) / f"masks_rank{rank}.pt")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
