"""The outcome of a recipe run as typed dataclasses: [`RunResult`] and its parts.

The recipes (`recipes/prune_finetune.py`, `recipes/finetune.py`) fill one [`RunResult`]; `hf_tsprune.pipeline`'s
`save_outputs` and `print_summary` and the Hub card writer (`hf_tsprune.hub.write_model_card`) read it, and
`results.json` is its serialisation ([`RunResult.to_dict`], [`RunResult.from_dict`]):

```json
{"model": ..., "dataset": "ETTh1", "prediction_length": 96, "context_length": 512,
 "zero_shot": {"test": {"mse": ..., "mae": ..., "n_windows": 2785}}, "pruned": {"test": {...}},
 "finetuned": {"test": {...}, "validation_loss": ...}, "params_before": ..., "params_after": ..., "flops_before": ...,
 "flops_after": ..., "sparsity": ..., "best_mask_set": {"step": ..., "eval_loss": ..., "sparsity": ...},
 "selected_grid_point": {}, "grid": null, "plan": {...}, "timings_seconds": {...}, "settings": {...}, "seed": 42,
 "world_size": 1, "saved_to": "runs/prune_finetune/model"}
```

A field left at `None` is not written, except the ones marked as written as `null` (`grid`, the finetuned stage's
`validation_loss` and the fields of `best_mask_set`): those keys are always there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_WRITTEN_AS_NULL = "written_as_null"


def _written_as_null(**kwargs: Any) -> Any:
    """A field whose key is written even when its value is `None` (as JSON `null`)."""
    return field(metadata={_WRITTEN_AS_NULL: True}, **kwargs)


def _serialise(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _serialise(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None or f.metadata.get(_WRITTEN_AS_NULL)
        }
    if isinstance(value, Mapping):
        return {key: _serialise(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_serialise(item) for item in value]
    return value


def _check_keys(cls: type, values: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}.")


@dataclass
class SplitMetrics:
    """Point-forecast errors of one model on one split, with the LTSF protocol (scaled values).

    Args:
        mse (`float`): Mean squared error.
        mae (`float`): Mean absolute error.
        n_windows (`int`): Time windows scored (every channel of each).
    """

    mse: float
    mae: float
    n_windows: int


@dataclass
class StageResult:
    """The figures of one stage of a run (the zero-shot model, the pruned model before finetuning, ...).

    Args:
        test ([`SplitMetrics`]): Test-split errors of the stage's model.
    """

    test: SplitMetrics

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StageResult:
        _check_keys(cls, values, cls.__name__)
        return cls(**{**values, "test": SplitMetrics(**values["test"])})


@dataclass
class FinetunedResult(StageResult):
    """The figures of the finetuned model.

    Args:
        test ([`SplitMetrics`]): Test-split errors.
        validation_loss (`float`, *optional*): Best validation loss of the finetune (it picks the kept weights and the
            grid point); written as `null` when there was no evaluation.
        learning_rate (`float`, *optional*): The selected learning rate (`recipes/finetune.py` records it).
    """

    validation_loss: float | None = _written_as_null(default=None)
    learning_rate: float | None = None


@dataclass
class MaskSetResult:
    """The prune run's best-validation mask set, the one that is shrunk and finetuned.

    Args:
        step (`int`, *optional*): Optimizer step at which it was evaluated.
        eval_loss (`float`, *optional*): Its validation loss.
        sparsity (`float`, *optional*): Fraction of channels it removes.
    """

    step: int | None = _written_as_null(default=None)
    eval_loss: float | None = _written_as_null(default=None)
    sparsity: float | None = _written_as_null(default=None)


_STAGE_TYPES = {"zero_shot": StageResult, "pruned": StageResult, "finetuned": FinetunedResult}


@dataclass(kw_only=True)
class RunResult:
    """What a recipe run found; `results.json` is [`RunResult.to_dict`].

    Args:
        model (`str`, *optional*): The base model (Hub id or folder).
        dataset (`str`): The dataset (benchmark name, file or Hub id).
        prediction_length (`int`): The task's forecast horizon (test windows' target length).
        context_length (`int`): Context length of every window.
        zero_shot ([`StageResult`], *optional*): The base model before any training.
        pruned ([`StageResult`], *optional*): The shrunk model before finetuning (prune recipes only).
        finetuned ([`FinetunedResult`], *optional*): The finetuned (pruned or dense) model.
        params_before, params_after (`int`, *optional*): Parameters of the base and the final model (masks excluded).
        flops_before, flops_after (`int`, *optional*): FLOPs of one batch-1 forward of the base and the final model.
        sparsity (`float`, *optional*): Fraction of the prunable channels removed (prune recipes only).
        best_mask_set ([`MaskSetResult`], *optional*): The prune run's selected mask set (prune recipes only).
        selected_grid_point (`dict`, *optional*): The grid settings of the selected run (`{}` without a grid).
        grid (`list[dict]`, *optional*): Per grid point its settings and validation loss; `null` without a grid.
        plan (`dict`, *optional*): The shrink plan (`PruningPlan.to_dict()`): kept units per group.
        timings_seconds (`dict[str, float]`): Wall-clock seconds per stage.
        settings (`dict`): Every argument of the run.
        seed (`int`, *optional*): The run's seed.
        world_size (`int`, *optional*): Processes of the run.
        saved_to (`str`, *optional*): Folder of the saved checkpoint (set by the main process after saving).
        dataset_id (`str`, *optional*): Hub id of the dataset, for the model card's metadata.
        full_finetune ([`StageResult`], *optional*): A dense full finetune to compare with, for the model card.
        latency (`dict`, *optional*): `{row: {column: milliseconds}}` latency table for the model card.
        experts (`dict`, *optional*): Expert removal (`--expert_threshold`; `pipeline.ExpertRemovalResult.to_dict`):
            score, threshold, experts before/after, kept experts and usage per block.
    """

    model: str | None = None
    dataset: str
    prediction_length: int
    context_length: int
    zero_shot: StageResult | None = None
    pruned: StageResult | None = None
    finetuned: FinetunedResult | None = None
    params_before: int | None = None
    params_after: int | None = None
    flops_before: int | None = None
    flops_after: int | None = None
    sparsity: float | None = None
    best_mask_set: MaskSetResult | None = None
    selected_grid_point: dict[str, float] | None = None
    grid: list[dict[str, Any]] | None = _written_as_null(default=None)
    plan: dict[str, Any] | None = None
    timings_seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    world_size: int | None = None
    saved_to: str | None = None
    dataset_id: str | None = None
    full_finetune: StageResult | None = None
    latency: dict[str, dict[str, float]] | None = None
    experts: dict[str, Any] | None = None

    def stages(self) -> dict[str, StageResult]:
        """The stages present, by their `results.json` key: `zero_shot`, `pruned`, `finetuned`, `full_finetune`."""
        named = {
            "zero_shot": self.zero_shot,
            "pruned": self.pruned,
            "finetuned": self.finetuned,
            "full_finetune": self.full_finetune,
        }
        return {name: stage for name, stage in named.items() if stage is not None}

    def to_dict(self) -> dict[str, Any]:
        """The `results.json` content (plain JSON types apart from what `settings` holds)."""
        return _serialise(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunResult:
        """Reads a `results.json` content (or any dict with `dataset`, `prediction_length`, `context_length` and some
        of the other keys).

        Raises:
            `ValueError`: a key that is not a [`RunResult`] field.
        """
        _check_keys(cls, values, "RunResult")
        parsed = dict(values)
        for name, stage_type in {**_STAGE_TYPES, "full_finetune": StageResult}.items():
            if parsed.get(name) is not None:
                parsed[name] = stage_type.from_dict(parsed[name])
        if parsed.get("best_mask_set") is not None:
            parsed["best_mask_set"] = MaskSetResult(**parsed["best_mask_set"])
        return cls(**parsed)

    def save(self, path: str | os.PathLike) -> None:
        """Writes [`RunResult.to_dict`] as indented JSON (values JSON cannot hold are written as strings)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunResult:
        """Reads a `results.json` written by [`RunResult.save`]."""
        return cls.from_dict(json.loads(Path(path).read_text()))
