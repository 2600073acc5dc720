"""Pruned checkpoints that load with `from_pretrained`: pruned config/model classes, Auto registration, saving.

A shrunk model has layers of different widths, which no transformers configuration describes. hf_tsprune gives each
supported architecture a pruned configuration (the base configuration plus `hf_tsprune_layout`, the per-layer sizes,
and `base_model`, `base_model_revision`, `pruning`) with its own `model_type` (`hf_tsprune_<base model_type>`), and a
pruned model class that builds the base model and then gives the listed blocks their pruned sizes. So:

```python
plan = shrink(model)
to_pruned_model(model, base_model="google/timesfm-2.0-500m-pytorch", pruning_config=config, plan=plan)
model.save_pretrained("pruned")  # safetensors + config.json + self-contained remote-code files
# or, in one call: save_pruned(model, "pruned", base_model=..., pruning_config=config, plan=plan)

import hf_tsprune  # registers the classes with AutoConfig, AutoModel and AutoModelForTimeSeriesPrediction
model = AutoModelForTimeSeriesPrediction.from_pretrained("pruned")
# with transformers alone (no hf_tsprune installed):
model = AutoModelForTimeSeriesPrediction.from_pretrained("pruned", trust_remote_code=True)
```

The classes live in `hf_tsprune/remote_code/` (imports: torch and transformers only); `save_pretrained` copies those
two files beside the weights and records them in `config.json`'s `auto_map`, which is what `trust_remote_code=True`
loads. After `to_pruned_model`, the model is an instance of its pruned class, so everything that saves through
`save_pretrained` (a `Trainer` finetuning it, `push_to_hub`, peft's `merge_and_unload()` then save) writes a pruned
checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForTimeSeriesPrediction, PreTrainedModel

from .masks import _STATE_ATTR, describe_groups, unwrap
from .remote_code.configuration_hf_tsprune import (
    PRUNED_CONFIG_CLASSES,
    PrunedPatchTSMixerConfig,
    PrunedPatchTSTConfig,
    PrunedTimesFm2_5Config,
    PrunedTimesFmConfig,
)
from .remote_code.modeling_hf_tsprune import (
    PRUNED_MODEL_CLASSES,
    PrunedPatchTSMixerForPrediction,
    PrunedPatchTSTForPrediction,
    PrunedTimesFm2_5ModelForPrediction,
    PrunedTimesFmModelForPrediction,
    apply_pruned_layout,
)
from .surgery import LAYOUT_ATTR, PruningPlan

BASE_PACKAGES = ("transformers.", "chronos.", "tsfm_public.")
"""Packages whose model/config classes a pruned class extends."""

REMOTE_CODE_FILES = ("configuration_hf_tsprune.py", "modeling_hf_tsprune.py")
"""The files `save_pretrained` writes beside the weights of a pruned model (for `trust_remote_code=True`)."""

PAPER = (
    "Less is More: Unlocking Specialization of Time Series Foundation Models via Structured Pruning (arXiv 2505.23195)"
)

__all__ = [
    "PRUNED_CONFIG_CLASSES",
    "PRUNED_MODEL_CLASSES",
    "PrunedPatchTSMixerConfig",
    "PrunedPatchTSMixerForPrediction",
    "PrunedPatchTSTConfig",
    "PrunedPatchTSTForPrediction",
    "PrunedTimesFm2_5Config",
    "PrunedTimesFm2_5ModelForPrediction",
    "PrunedTimesFmConfig",
    "PrunedTimesFmModelForPrediction",
    "apply_pruned_layout",
    "is_pruned_model",
    "kept_units",
    "register_auto_classes",
    "save_pruned",
    "to_pruned_model",
]


def register_auto_classes() -> None:
    """Registers the pruned configurations with `AutoConfig` and the pruned models with `AutoModel`,
    `AutoModelForTimeSeriesPrediction` and the configuration's `extra_auto_classes` (Chronos: `AutoModelForSeq2SeqLM`,
    which `chronos.ChronosPipeline` loads through); idempotent, `import hf_tsprune` calls it."""
    for base_model_type, config_class in PRUNED_CONFIG_CLASSES.items():
        model_class = PRUNED_MODEL_CLASSES[base_model_type]
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForTimeSeriesPrediction.register(config_class, model_class, exist_ok=True)
        for auto_class in config_class.extra_auto_classes:
            getattr(transformers, auto_class).register(config_class, model_class, exist_ok=True)


def _base_class(pruned_class: type) -> type:
    """The transformers class a pruned model class extends (e.g. `TimesFmModelForPrediction`)."""
    return next(c for c in pruned_class.__mro__[1:] if c.__module__.startswith(BASE_PACKAGES))


def _family(model: nn.Module) -> str:
    for base_model_type, pruned_class in PRUNED_MODEL_CLASSES.items():
        if isinstance(model, _base_class(pruned_class)):
            return base_model_type
    supported = ", ".join(_base_class(c).__name__ for c in PRUNED_MODEL_CLASSES.values())
    raise TypeError(
        f"hf_tsprune cannot save a pruned {type(model).__name__}: pruned checkpoints exist for {supported}. Pass the "
        "forecasting model itself (not a wrapper or a backbone)."
    )


def is_pruned_model(model: nn.Module) -> bool:
    """Whether `model` is an instance of a pruned model class (built by `from_pretrained` or `to_pruned_model`)."""
    return isinstance(unwrap(model), tuple(PRUNED_MODEL_CLASSES.values()))


def _base_config_class(config_class: type) -> type:
    """The transformers configuration class a pruned configuration class extends (e.g. `TimesFmConfig`)."""
    return next(c for c in config_class.__mro__[1:] if c.__module__.startswith(BASE_PACKAGES))


def _meta_base_model(config, base_model_type: str) -> nn.Module:
    """The unpruned model of `config`'s architecture, built on the `meta` device (no memory, no weights)."""
    fields = {k: v for k, v in config.to_dict().items() if k not in ("auto_map", "architectures", "model_type")}
    base_config = _base_config_class(PRUNED_CONFIG_CLASSES[base_model_type]).from_dict(copy.deepcopy(fields))
    with torch.device("meta"):
        return _base_class(PRUNED_MODEL_CLASSES[base_model_type])(base_config)


def _units_before(config, base_model_type: str) -> dict[str, dict[str, Any]]:
    """Per prunable block of the unpruned architecture: its kind, units and (attention) key/value heads."""
    return {
        g.name: {"kind": g.group.kind, "units": g.num_units, "heads": g.num_kv_heads}
        for g in describe_groups(_meta_base_model(config, base_model_type))
    }


def kept_units(model_or_config: nn.Module | Any, plan: PruningPlan | None = None) -> dict[str, dict[str, Any]]:
    """Per prunable block, what the pruning kept of the unpruned architecture: `{name: {"kind", "units_before",
    "units_after", "heads_before", "heads_after"}}` (heads for attention blocks only; units are attention value
    channels or feed-forward channels; `*_before` always count the unpruned architecture, also after repeated pruning).

    Args:
        model_or_config: a pruned (or shrunk) model of a supported architecture, or its config.
        plan (`PruningPlan`, *optional*): the plan of the latest `shrink`; its kept counts exclude channels kept only
            for `round_to`. Without it, the figures recorded in `config.pruning` are returned when present, else the
            physical sizes of the layout.
    """
    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    pruning = getattr(config, "pruning", None) or {}
    if plan is None and pruning.get("groups"):
        return copy.deepcopy(pruning["groups"])
    return _kept_units(config, plan)


def _kept_units(config, plan: PruningPlan | None) -> dict[str, dict[str, Any]]:
    base_model_type = getattr(config, "base_model_type", None) or config.model_type
    if base_model_type not in PRUNED_CONFIG_CLASSES:
        raise TypeError(f"No pruned architecture for model type {config.model_type!r}.")
    layout = getattr(config, LAYOUT_ATTR, None) or {}
    planned = {g.name: g for g in plan.groups} if plan is not None else {}
    out = {}
    for name, before in _units_before(config, base_model_type).items():
        entry = {"kind": before["kind"], "units_before": before["units"], "units_after": before["units"]}
        if before["kind"] == "attention":
            entry.update(heads_before=before["heads"], heads_after=before["heads"])
        sizes, group = layout.get(name), planned.get(name)
        if group is not None:
            entry["units_after"] = group.units_after
            if group.kind == "attention":
                entry["heads_after"] = group.heads_after
        elif sizes is not None and sizes["kind"] == "attention":
            entry.update(units_after=sizes["num_kv_heads"] * sizes["v_head_dim"], heads_after=sizes["num_kv_heads"])
        elif sizes is not None:
            entry["units_after"] = sizes["width"]
        out[name] = entry
    return out


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _plain(value: Any) -> Any:
    """JSON-able copy of a settings object (dataclass, object with `to_dict`, mapping); other values become strings,
    credentials are left out."""
    if value is None:
        return None
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif not isinstance(value, Mapping):
        raise TypeError(f"Pruning settings must be a PruningConfig, a dict or None; got {type(value).__name__}.")
    return _without_secrets(json.loads(json.dumps(dict(value), default=str)))


_SECRET = re.compile(r"token|password|secret|api_key", re.IGNORECASE)


def _without_secrets(value: Any) -> Any:
    """Drops entries whose key names a credential (e.g. `hub_token` in training arguments): settings end up in
    `config.json` and the model card."""
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if not _SECRET.search(k)}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def to_pruned_model(
    model: nn.Module,
    *,
    base_model: str | None = None,
    base_model_revision: str | None = None,
    pruning_config: Any = None,
    plan: PruningPlan | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> PreTrainedModel:
    """Turns a shrunk model into an instance of its pruned class, in place, so that `save_pretrained` writes a
    checkpoint that `from_pretrained` loads (with `import hf_tsprune`, or with `trust_remote_code=True` alone).

    The parameters and modules stay as they are (same object, same outputs); the model's class becomes e.g.
    `PrunedTimesFmModelForPrediction` and its config's class `PrunedTimesFmConfig`, holding the per-layer sizes
    `shrink` recorded plus the base model and pruning settings given here. Calling it again (e.g. after a further
    `shrink`) updates the recorded figures; arguments left `None` keep their recorded values.

    Args:
        model (`PreTrainedModel`):
            A model of a supported class after `shrink` (masks removed). DDP/accelerate wrappers are unwrapped; a peft
            model must be merged first (`merge_and_unload()`).
        base_model (`str`, *optional*):
            Hub id (or path) of the checkpoint that was pruned. Defaults to `model.config.name_or_path`.
        base_model_revision (`str`, *optional*):
            Revision (commit sha, branch or tag) of `base_model`.
        pruning_config (`PruningConfig` or `dict`, *optional*):
            The pruning settings, recorded as `config.pruning["settings"]`.
        plan (`PruningPlan`, *optional*):
            The plan `shrink` returned: records FLOPs before/after, the measured masked-vs-shrunk error and the
            per-block kept units. (Parameters before/after and sparsity are recorded with or without it; they always
            compare with the unpruned base architecture.)
        seed (`int`, *optional*):
            The seed of the prune run.
        extra (`Mapping`, *optional*):
            Further JSON-able entries for `config.pruning` (e.g. the finetuning recipe).

    Returns:
        The same model object, now of its pruned class.
    """
    if hasattr(model, "peft_config") and hasattr(model, "merge_and_unload"):
        raise TypeError(
            "This is a peft model: merge the adapters into the pruned model first "
            "(`model = model.merge_and_unload()`) and pass the result, or save the adapters alone with "
            "`model.save_pretrained(...)`."
        )
    model = unwrap(model)
    base_model_type = _family(model)
    if getattr(model, _STATE_ATTR, None):
        raise ValueError(
            "Pruning masks are still installed on this model: call `hf_tsprune.shrink(model)` to remove the pruned "
            "channels (or `remove_masks(model)` to discard them) before saving it."
        )
    config = model.config
    layout = getattr(config, LAYOUT_ATTR, None)
    if layout is None:
        raise ValueError(
            f"{type(model).__name__} has no pruned layout (`config.{LAYOUT_ATTR}`): call `hf_tsprune.shrink(model)` "
            "first; an unpruned model saves with plain `save_pretrained`."
        )
    config_class = PRUNED_CONFIG_CLASSES[base_model_type]
    if not isinstance(config, config_class):
        default_base = config.name_or_path or None
        config.__class__ = config_class
        config.base_model = default_base
        config.base_model_revision = None
        config.pruning = None
    # A base config loaded with from_pretrained carries its model type as an instance attribute, which would shadow
    # the pruned class' own (and bring back the base model's checkpoint weight renamings): drop it.
    config.__dict__.pop("model_type", None)
    config.auto_map = config_class.default_auto_map()
    # A model loaded with from_pretrained remembers the checkpoint-format renamings it loaded with, and save_pretrained
    # reverts them (timesfm2_5: fc1 -> ff0). A pruned checkpoint is written with the module names it loads with.
    model.__dict__.pop("_weight_conversions", None)
    if base_model is not None:
        config.base_model = str(base_model)
    if base_model_revision is not None:
        config.base_model_revision = str(base_model_revision)
    model.__class__ = PRUNED_MODEL_CLASSES[base_model_type]

    from . import __version__

    pruning = dict(config.pruning or {})
    pruning.update(method="hf_tsprune structured pruning (Taylor/EMA channel scores)", paper=PAPER)
    pruning["hf_tsprune_version"] = __version__
    if pruning_config is not None:
        pruning["settings"] = _plain(pruning_config)
    if seed is not None:
        pruning["seed"] = int(seed)
    layout_digest = hashlib.sha1(json.dumps(layout, sort_keys=True).encode()).hexdigest()
    unchanged = plan is None and pruning.get("groups") and pruning.get("layout_sha1") == layout_digest
    groups = pruning["groups"] if unchanged else _kept_units(config, plan)
    units_before = sum(g["units_before"] for g in groups.values())
    pruning["sparsity"] = 1.0 - sum(g["units_after"] for g in groups.values()) / max(units_before, 1)
    # Figures before pruning describe the unpruned base model, also when an already pruned model is pruned again.
    pruning["params_before"] = _num_params(_meta_base_model(config, base_model_type))
    pruning["params_after"] = _num_params(model)
    if plan is not None:
        pruning.setdefault("flops_before", plan.flops_before)
        pruning.update(flops_after=plan.flops_after, max_rel_error=plan.max_rel_error)
    elif not unchanged:  # pruned again without a plan: the recorded figures are stale
        for key in ("flops_after", "max_rel_error"):
            pruning.pop(key, None)
    pruning["groups"] = groups
    pruning["layout_sha1"] = layout_digest
    if extra:
        pruning.update(_plain(extra))
    config.pruning = pruning
    return model


def save_pruned(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    base_model: str | None = None,
    base_model_revision: str | None = None,
    pruning_config: Any = None,
    plan: PruningPlan | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
    **save_pretrained_kwargs,
) -> list[str]:
    """Saves a shrunk model as a pruned checkpoint: `to_pruned_model` then `save_pretrained`.

    Writes `model.safetensors`, `config.json` (base fields, per-layer sizes, base model and revision, pruning
    settings, `auto_map`) and the remote-code files `configuration_hf_tsprune.py` and `modeling_hf_tsprune.py`.

    Args:
        model, base_model, base_model_revision, pruning_config, plan, seed, extra:
            As in [`to_pruned_model`] (the model is converted in place).
        save_directory (`str` or `os.PathLike`):
            Folder to write to (created if needed).
        save_pretrained_kwargs:
            Passed to `save_pretrained` (e.g. `max_shard_size`); `safe_serialization=False` is refused.

    Returns:
        The sorted names of the files in `save_directory`.
    """
    if save_pretrained_kwargs.get("safe_serialization") is False:
        raise ValueError("Pruned checkpoints are written as safetensors only; drop `safe_serialization=False`.")
    save_pretrained_kwargs.pop("safe_serialization", None)
    model = to_pruned_model(
        model,
        base_model=base_model,
        base_model_revision=base_model_revision,
        pruning_config=pruning_config,
        plan=plan,
        seed=seed,
        extra=extra,
    )
    model.save_pretrained(save_directory, **save_pretrained_kwargs)
    missing = [f for f in REMOTE_CODE_FILES if not os.path.isfile(os.path.join(save_directory, f))]
    if missing:
        raise RuntimeError(f"Internal error: save_pretrained did not write {missing} to {save_directory}.")
    return sorted(os.listdir(save_directory))


register_auto_classes()
