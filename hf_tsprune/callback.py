"""`PruningCallback`: the glue between `transformers.Trainer` events and the Taylor/EMA pruning rule.

Usage:

```python
from transformers import Trainer, TrainingArguments
from hf_tsprune import PruningCallback, PruningConfig, install_masks, shrink

install_masks(model)  # before the Trainer: masks become parameters, weights are frozen
trainer = Trainer(
    model=model,
    args=TrainingArguments("prune-run", num_train_epochs=2, eval_strategy="steps", eval_steps=50, eval_on_start=True,
                           max_grad_norm=0.0, label_names=["future_values"]),
    train_dataset=train, eval_dataset=validation,
    callbacks=[PruningCallback(PruningConfig(ratio_per_epoch=0.3, ema=0.3))],
)
trainer.train()       # the model ends with the mask set of the best validation loss
plan = shrink(model)  # after train(): physically smaller, same outputs
```
"""

from __future__ import annotations

import math
import os

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .masks import get_masks, masked_groups, set_masks, unwrap
from .scoring import IMPORTANCE, Importance, PruningConfig, TaylorScorer, channels_to_prune_at_step, max_pruned_units
from .surgery import make_plan

logger = logging.get_logger(__name__)

STATE_FILE = "hf_tsprune_pruning_state.pt"


class NonFiniteLossError(FloatingPointError):
    """A training loss, gradient or validation loss became NaN or infinite: the run stops at that step, before the
    optimizer applies it, so nothing non-finite is kept as the best state, saved or pushed."""


def _grads_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every entry of `grads` is finite (one reduction over all of them; the max norm cannot overflow)."""
    grads = [g for g in grads if g is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)).item())


def _non_finite(stage: str, step: int, what: str) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"The {stage} stopped at optimizer step {step}: {what}. Nothing of this run is kept as its best state or "
        "saved. Check the data for values the loader did not mask (the missing-value warning counts NaN and ±inf "
        "per column), lower the learning rate, or train in float32."
    )


def check_finite_gradients(stage: str, step: int, named_grads: dict[str, torch.Tensor]) -> None:
    """Raises a [`NonFiniteLossError`] naming `stage`, `step` and the first parameters whose gradient is NaN or
    infinite.

    Args:
        stage (`str`): The stage, for the message (`"prune run"`, `"finetune"`).
        step (`int`): The optimizer step about to be taken (1-based).
        named_grads (`dict[str, torch.Tensor]`): Gradients by parameter name (`None` entries are skipped).
    """
    if _grads_finite(list(named_grads.values())):
        return
    bad = [name for name, grad in named_grads.items() if grad is not None and not bool(torch.isfinite(grad).all())]
    names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise _non_finite(stage, step, f"the loss or its gradient is not finite (NaN/inf gradient of {names})")


def check_finite_metrics(stage: str, step: int, metrics: dict | None, keys: tuple[str, ...]) -> None:
    """Raises a [`NonFiniteLossError`] when one of the `keys` of logged or evaluation `metrics` is NaN or infinite."""
    for key in keys:
        value = (metrics or {}).get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise _non_finite(stage, step, f"{key} is {value}")


def warn_without_eval_on_start(args, state, consequence: str) -> None:
    """Warns, at the start of a fresh run that evaluates, when `eval_on_start` is off: then `consequence`."""
    evaluates = getattr(args, "eval_strategy", "no") != "no"
    if evaluates and not getattr(args, "eval_on_start", False) and not state.global_step:
        logger.warning(
            f"hf_tsprune: eval_on_start=False, so {consequence}; set TrainingArguments(eval_on_start=True) to judge "
            "the starting point on the same validation loss."
        )


class PruningCallback(TrainerCallback):
    """Scores channels with EMA-smoothed Taylor importance and prunes them on schedule during `Trainer.train()`.

    - `on_pre_optimizer_step` (the last event at which gradients exist): adds this step's scores `-grad(mask) * mask`
      to the EMA, drops the mask gradients (so the optimizer never moves a mask), zeroes the globally lowest-ranked
      channels due at this step and writes the masks;
    - `on_evaluate`: records the evaluation metric of the current mask set and keeps the best set (with
      `eval_on_start=True`, the unpruned model of step 0 is a candidate too, and wins ties);
    - `on_train_end`: restores the best mask set into the model;
    - `on_log`: adds `sparsity`, `pruned_channels` and `params` (the parameter count the current masks shrink to).

    Pruning stops once `max_sparsity` is reached; training then ends after one last evaluation. The model is never
    modified structurally here: call `hf_tsprune.shrink(model)` after `train()` returns.

    A NaN or infinite mask gradient (hence loss), logged loss or validation loss stops the run with a
    [`NonFiniteLossError`] naming the step, before it is scored or kept as the best mask set.

    Args:
        config (`PruningConfig`, *optional*): the prune-run settings; keyword arguments build one if not given.
        resume_from_checkpoint (`str`, *optional*): the checkpoint folder `trainer.train(resume_from_checkpoint=...)`
            resumes from; its saved pruning state (EMA scores, masks, best set) is restored. By default the callback
            looks in `output_dir/checkpoint-<step>` when the Trainer resumes.
        importance (`Callable`, *optional*): a custom channel score, `importance(groups, grads, generator) -> scores`
            ([`hf_tsprune.scoring.Importance`]); by default the one `config.importance` names.
    """

    stage = "prune run"  # named by the error a non-finite loss or gradient raises

    def __init__(
        self,
        config: PruningConfig | None = None,
        resume_from_checkpoint: str | None = None,
        importance: Importance | None = None,
        **kwargs,
    ):
        self.config = config if config is not None else PruningConfig(**kwargs)
        self.resume_from_checkpoint = resume_from_checkpoint
        self.importance = importance if importance is not None else IMPORTANCE[self.config.importance]
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.scorer: TaylorScorer | None = None
        self.steps_per_epoch = 1
        self.epoch_start_alive = 0
        self.pruned_this_epoch = 0
        self.finished = False
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.best_sparsity: float | None = None
        self.best_masks: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []

    # -- events -----------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        groups = masked_groups(model)
        if any(p.requires_grad for n, p in unwrap(model).named_parameters() if not n.endswith("hf_tsprune_mask")):
            logger.warning(
                "Some weights are trainable during the prune run; the paper freezes them (`install_masks`)."
            )
        if args.max_grad_norm:
            logger.warning(
                f"max_grad_norm={args.max_grad_norm} clips the mask gradients before they are scored, which rescales "
                "the Taylor scores between steps; set max_grad_norm=0 for the prune run."
            )
        warn_without_eval_on_start(args, state, "the unpruned model (step 0) is not a candidate mask set")
        folder = self.resume_from_checkpoint or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        resumed = os.path.join(folder, STATE_FILE)
        if state.global_step > 0 and os.path.isfile(resumed):
            self.load_state_dict(torch.load(resumed, weights_only=True), groups)
            logger.info(f"hf_tsprune: resumed the prune run (EMA scores, masks, best set) from {resumed}.")
        elif state.global_step > 0:
            logger.warning(
                f"hf_tsprune: resuming at step {state.global_step} without {resumed}; the EMA scores restart from zero."
            )
        if self.scorer is None:
            self.scorer = TaylorScorer(
                self.config,
                [g.num_units for g in groups],
                [g.unit_cost for g in groups],
                [g.group.kind == "mlp" for g in groups],
            )
        if train_dataloader is not None and not state.global_step:
            self.steps_per_epoch = max(math.ceil(len(train_dataloader) / args.gradient_accumulation_steps), 1)
        elif state.max_steps and args.num_train_epochs:
            self.steps_per_epoch = max(int(state.max_steps // args.num_train_epochs), 1)
        self._write_masks(groups)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        groups = masked_groups(model)
        check_finite_gradients(self.stage, state.global_step + 1, {g.name: g.mask.grad for g in groups})
        if not self.finished:
            used = [g.mask.grad is not None for g in groups]
            grads = [g.mask.grad if g.mask.grad is not None else torch.zeros_like(g.mask) for g in groups]
            self.scorer.update_scores(self.importance(groups, grads, self.generator), used)
        for g in groups:
            g.mask.grad = None  # masks change only by pruning: the optimizer skips parameters without gradient
        if self.finished:
            return
        step_in_epoch = state.global_step % self.steps_per_epoch
        if step_in_epoch == 0:
            self.epoch_start_alive = self.scorer.num_alive
            self.pruned_this_epoch = 0
        total_units = self.scorer.total_units
        num_to_prune = channels_to_prune_at_step(
            ratio_per_epoch=self.config.ratio_per_epoch,
            alive_at_epoch_start=self.epoch_start_alive,
            pruned_this_epoch=self.pruned_this_epoch,
            step_in_epoch=step_in_epoch,
            steps_per_epoch=self.steps_per_epoch,
            total_units=total_units,
            num_alive=self.scorer.num_alive,
            max_sparsity=self.config.max_sparsity,
        )
        self.pruned_this_epoch += self.scorer.prune(num_to_prune, used)
        self._write_masks(groups)
        if total_units - self.scorer.num_alive >= max_pruned_units(total_units, self.config.max_sparsity):
            self.finished = True

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._write_masks(masked_groups(model))
        if self.finished and not control.should_training_stop:
            logger.info(f"hf_tsprune: max_sparsity {self.config.max_sparsity} reached at step {state.global_step}.")
            control.should_training_stop = True
            if args.eval_strategy != "no":
                control.should_evaluate = True
        return control

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        key = self.config.metric_for_best_mask
        check_finite_metrics(self.stage, state.global_step, metrics, (key,))
        if not metrics or key not in metrics:
            logger.warning(f"hf_tsprune: evaluation returned no {key!r}; the mask set of this step is not ranked.")
            return
        value = float(metrics[key])
        entry = {"step": state.global_step, "sparsity": self.scorer.sparsity, key: value}
        self.history.append(entry)
        if self.scorer.sparsity < self.config.min_sparsity - 1e-9:
            return  # below min_sparsity: recorded, not a candidate
        better = self.best_metric is None or (
            value > self.best_metric if self.config.greater_is_better else value < self.best_metric
        )
        if better:
            self.best_metric, self.best_step, self.best_sparsity = value, state.global_step, self.scorer.sparsity
            self.best_masks = {k: v.clone() for k, v in get_masks(model).items()}

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        check_finite_metrics(self.stage, state.global_step, logs, ("loss",))
        if logs is None or self.scorer is None:
            return
        extra = {
            "sparsity": round(self.scorer.sparsity, 6),
            "pruned_channels": self.scorer.total_units - self.scorer.num_alive,
            "params": make_plan(unwrap(model), allow_empty_blocks=True).params_after,
        }
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.scorer is None:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            torch.save(self.state_dict(), os.path.join(folder, STATE_FILE))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.best_masks is None and self.history:
            logger.warning(
                f"hf_tsprune: no evaluated mask set reached min_sparsity={self.config.min_sparsity}; the model keeps "
                f"the last masks (sparsity {self.scorer.sparsity:.3f}). Train more epochs or raise ratio_per_epoch."
            )
        if self.best_masks is not None:
            set_masks(model, self.best_masks)
            for alive, name in zip(self.scorer.alive, [g.name for g in masked_groups(model)]):
                alive.copy_(self.best_masks[name])
            logger.info(
                f"hf_tsprune: kept the mask set of step {self.best_step} (sparsity {self.best_sparsity:.3f}, "
                f"{self.config.metric_for_best_mask}={self.best_metric:.5g})."
            )

    # -- helpers ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _write_masks(self, groups) -> None:
        for g, alive in zip(groups, self.scorer.alive):
            g.mask.copy_(alive.to(device=g.mask.device, dtype=g.mask.dtype))

    def state_dict(self) -> dict:
        """Everything needed to resume the prune run (EMA scores included)."""
        return {
            "scorer": self.scorer.state_dict(),
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_start_alive": self.epoch_start_alive,
            "pruned_this_epoch": self.pruned_this_epoch,
            "finished": self.finished,
            "best": (self.best_metric, self.best_step, self.best_sparsity, self.best_masks),
            "history": self.history,
            "config": self.config.to_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict, groups) -> None:
        self.scorer = TaylorScorer(
            self.config,
            [g.num_units for g in groups],
            [g.unit_cost for g in groups],
            [g.group.kind == "mlp" for g in groups],
        )
        self.scorer.load_state_dict(state["scorer"])
        self.steps_per_epoch = state["steps_per_epoch"]
        self.epoch_start_alive = state["epoch_start_alive"]
        self.pruned_this_epoch = state["pruned_this_epoch"]
        self.finished = state["finished"]
        self.best_metric, self.best_step, self.best_sparsity, self.best_masks = state["best"]
        self.history = list(state["history"])
        if "generator" in state:
            self.generator.set_state(state["generator"])


class BestWeightsCallback(TrainerCallback):
    """Keeps the weights of the best evaluation in memory, restores them at the end, and stops early. With
    `eval_on_start=True` the starting weights are a candidate (kept on ties), so training never returns a model worse
    on validation than the one it was given.

    A checkpoint-free `load_best_model_at_end` + `EarlyStoppingCallback`: reloading saved checkpoints of a shrunk
    model goes through transformers' save-time weight renaming (e.g. timesfm2_5 `fc1`↔`ff0`), which the Trainer's
    best-model reload does not invert, so MLP weights would silently stay at their last values.

    A NaN or infinite gradient (hence loss), logged loss or evaluation metric stops training with a
    [`NonFiniteLossError`] naming `stage` and the step, before the optimizer applies it (the gradient check is
    skipped under fp16 loss scaling, whose overflowing steps are skipped by design).

    Args:
        metric (`str`, defaults to `"eval_loss"`): the evaluation metric (lower is better).
        patience (`int`, *optional*): stop after this many evaluations without improvement (`None`: never).
        stage (`str`, defaults to `"finetune"`): the stage named by the non-finite error.
    """

    def __init__(self, metric: str = "eval_loss", patience: int | None = None, stage: str = "finetune"):
        self.metric = metric
        self.patience = patience
        self.stage = stage
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evaluations = 0

    def on_train_begin(self, args, state, control, **kwargs):
        warn_without_eval_on_start(args, state, "the starting weights are not a candidate for the best weights")

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not args.fp16:
            named = unwrap(model).named_parameters()
            check_finite_gradients(self.stage, state.global_step + 1, {n: p.grad for n, p in named if p.requires_grad})

    def on_log(self, args, state, control, logs=None, **kwargs):
        check_finite_metrics(self.stage, state.global_step, logs, ("loss",))

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        check_finite_metrics(self.stage, state.global_step, metrics, (self.metric,))
        if not metrics or self.metric not in metrics:
            return
        value = float(metrics[self.metric])
        if self.best_metric is None or value < self.best_metric:
            self.best_metric, self.best_step, self.bad_evaluations = value, state.global_step, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}
        else:
            self.bad_evaluations += 1
            if self.patience is not None and self.bad_evaluations >= self.patience:
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.best_state is not None:
            unwrap(model).load_state_dict(self.best_state)
            logger.info(f"Restored the weights of step {self.best_step} ({self.metric}={self.best_metric:.5g}).")
