"""Pruned checkpoints that load with `from_pretrained`: pruned config/model classes, Auto registration, saving.

A shrunk model has layers of different widths, which no transformers configuration describes. hf_tsprune gives each
registered family a pruned configuration (the base configuration plus `hf_tsprune_layout`, the per-layer sizes,
`hf_tsprune_blocks`, the family's block kinds, and `base_model`, `base_model_revision`, `pruning`) with its own
`model_type` (`hf_tsprune_<family>`), and a pruned model class that builds the base model and then gives the listed
blocks their pruned sizes. So:

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

The load-time code is `hf_tsprune/checkpoint_code.py` (imports: torch only); every save writes it unchanged beside the
weights as `hf_tsprune_checkpoint.py`, with two small files generated from the registered family
(`configuration_hf_tsprune.py`, `modeling_hf_tsprune.py`: the family's base-class imports, the source of its attention
forwards, and the same two class-factory calls [`build_pruned_classes`] makes here), and records them in
`config.json`'s `auto_map`, which is what `trust_remote_code=True` loads. A family whose base classes are hf_tsprune's
own model implementations (`hf_tsprune.models`, e.g. Timer-XL: torch and transformers only) also gets that model
module's file copied unchanged beside them (`timer_xl.py`), which the generated files import relatively. After `to_pruned_model`, the model is an
instance of its pruned class, so everything that saves through `save_pretrained` (a `Trainer` finetuning it,
`push_to_hub`, peft's `merge_and_unload()` then save) writes a pruned checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import re
import shutil
import sys
import textwrap
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from . import checkpoint_code
from .checkpoint_code import (
    BLOCKS_ATTR,
    CHECKPOINT_MODULE,
    CONFIG_MODULE,
    LAYOUT_ATTR,
    MODEL_MODULE,
    PrunedConfigMixin,
    PrunedModelMixin,
    make_pruned_config_class,
    make_pruned_model_class,
)
from .family import Family, families, family_of, get_family
from .masks import _STATE_ATTR, describe_groups, unwrap
from .surgery import PruningPlan

REMOTE_CODE_FILES = (f"{CONFIG_MODULE}.py", f"{MODEL_MODULE}.py", f"{CHECKPOINT_MODULE}.py")
"""The files `save_pretrained` writes beside the weights of a pruned model (for `trust_remote_code=True`); a family
whose base classes live in `hf_tsprune.models` also gets its model module's file ([`own_model_modules`])."""

OWN_MODELS = "hf_tsprune.models"
"""The package of hf_tsprune's own model implementations: each module imports only torch, transformers and the
standard library, so that pruned checkpoints carry it verbatim as remote code."""

PAPER = (
    "Less is More: Unlocking Specialization of Time Series Foundation Models via Structured Pruning (arXiv 2505.23195)"
)

__all__ = [
    "REMOTE_CODE_FILES",
    "build_pruned_classes",
    "is_pruned_model",
    "kept_units",
    "load_pruned",
    "own_model_modules",
    "register_auto_classes",
    "save_pruned",
    "to_pruned_model",
    "write_remote_code",
]


# -- pruned classes ---------------------------------------------------------------------------------------------------


def build_pruned_classes(family: Family) -> tuple[type, type]:
    """The pruned configuration and model classes of a family, built from its base classes with the factories of
    `hf_tsprune.checkpoint_code` (the calls the generated remote code makes too). They are reported in, and
    importable from, `hf_tsprune.modeling`.

    Raises:
        `ImportError`: the family's optional package is missing.
    """
    base_config, base_model = family.base_classes()
    module = __name__
    config_class = make_pruned_config_class(
        base_config, family.config_class_name, family=family.name, model_class_name=family.model_class_name,
        extra_auto_classes=family.extra_auto_classes, module=module,
    )  # fmt: skip
    config_class._hf_tsprune_save_hook = staticmethod(write_remote_code)
    model_class = make_pruned_model_class(
        base_model, config_class, family.model_class_name, forwards=family.spec.attention_forwards(), module=module
    )
    this = sys.modules[__name__]
    setattr(this, config_class.__name__, config_class)  # importable by name (pickle, `from hf_tsprune.modeling ...`)
    setattr(this, model_class.__name__, model_class)
    return config_class, model_class


def register_auto_classes() -> None:
    """Registers the pruned configuration of every available family with `AutoConfig`, its pruned model with
    `AutoModel`, `AutoModelForTimeSeriesPrediction` and the family's `extra_auto_classes` (Chronos:
    `AutoModelForSeq2SeqLM`, which `chronos.ChronosPipeline` loads through); idempotent, `import hf_tsprune` calls it.
    Families whose optional package is missing are skipped."""
    for family in families().values():
        if not family.available or not family.has_pruned_classes:
            continue
        config_class, model_class = family.pruned_config_class, family.pruned_model_class
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class in ("AutoModel", "AutoModelForTimeSeriesPrediction", *family.extra_auto_classes):
            getattr(transformers, auto_class).register(config_class, model_class, exist_ok=True)


def __getattr__(name: str):
    """`hf_tsprune.modeling.Pruned<...>` of a family not built yet (its package missing: the `ImportError` says so)."""
    for family in families().values():
        if family.has_pruned_classes and name in (family.config_class_name, family.model_class_name):
            config_class, model_class = family._pruned_classes()
            return config_class if name == family.config_class_name else model_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_pruned_model(model: nn.Module) -> bool:
    """Whether `model` is an instance of a pruned model class (built by `from_pretrained` or `to_pruned_model`)."""
    return isinstance(unwrap(model), PrunedModelMixin)


def is_pruned_config(config: Any) -> bool:
    """Whether `config` is a pruned configuration (of hf_tsprune's classes, or loaded with remote code)."""
    return isinstance(config, PrunedConfigMixin) or (
        getattr(config, BLOCKS_ATTR, None) is not None and getattr(config, "base_model_type", None) in families()
    )


# -- remote code ------------------------------------------------------------------------------------------------------

_HEADER = """\
# Generated by hf_tsprune {version} for a pruned {family} checkpoint; loaded by `trust_remote_code=True`.
# {what}; the pruning code itself is `{checkpoint}.py` beside it. Nothing here prunes anything.
from __future__ import annotations
"""


def _import_line(name: str, value: Any) -> str:
    """The import statement that binds `name` to `value` (a module, or an object defined in a module)."""
    if isinstance(value, types.ModuleType):
        parent, _, leaf = value.__name__.rpartition(".")
        statement = f"from {parent} import {leaf}" if parent else f"import {leaf}"
        return statement + (f" as {name}" if leaf != name else "")
    module = getattr(value, "__module__", None) or type(value).__module__
    for source_name in (getattr(value, "__qualname__", None), name):
        if source_name and getattr(sys.modules.get(module), source_name, None) is value:
            return f"from {module} import {source_name}" + (f" as {name}" if source_name != name else "")
    raise TypeError(f"Checkpoint code cannot import {name!r} ({value!r}): it is not a module-level name of {module}.")


def _relative_module(module: str) -> str:
    """The module name a checkpoint's remote code imports `module` by: a module of hf_tsprune's own models
    (`hf_tsprune.models.timer_xl`) is copied beside it and imported relatively (`.timer_xl`); others unchanged."""
    if module.startswith(OWN_MODELS + "."):
        return "." + module[len(OWN_MODELS) + 1 :]
    return module


def own_model_modules(family: Family) -> list[types.ModuleType]:
    """The modules of `hf_tsprune.models` a family's pruned checkpoints need beside their remote code: those of its
    base configuration and model classes and of what its attention forwards use, each once.

    Raises:
        `ValueError`: such a module is a package or imports hf_tsprune (a checkpoint loaded with transformers alone
            could not import it).
    """
    names = [family.base_config_class.partition(":")[0], family.base_model_class.partition(":")[0]]
    for function in family.spec.attention_forwards():
        names.append(function.__module__)
        for name in _global_names(function.__code__):
            value = function.__globals__.get(name)
            module = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            names.append(module or "")
    modules = []
    for name in dict.fromkeys(n for n in names if n.startswith(OWN_MODELS + ".")):
        module = importlib.import_module(name)
        source = Path(module.__file__).read_text()
        if Path(module.__file__).name == "__init__.py" or re.search(r"^\s*(from|import)\s+hf_tsprune", source, re.M):
            raise ValueError(
                f"{name} cannot travel with a checkpoint as remote code: own model modules are single files that "
                "import only the standard library, torch and transformers."
            )
        modules.append(module)
    return modules


def _global_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return names


def checkpoint_source(functions: tuple[Callable, ...]) -> str:
    """The source of `functions` as a self-contained module body: the imports of the names they use, their helper
    functions of the same module, simple constants, then their definitions.

    Raises:
        `TypeError`: a function uses something of hf_tsprune itself, which a checkpoint loaded with transformers
            alone cannot import (the checkpoint code of a family may only use torch, transformers, the family's own
            package and the standard library).
    """
    imports, constants, definitions = {}, {}, {}

    def visit(function: Callable) -> None:
        if function.__name__ in definitions:
            return
        definitions[function.__name__] = None  # placeholder: helpers come first
        for name in dict.fromkeys(_global_names(function.__code__)):
            if name not in function.__globals__:
                continue  # an attribute name, a local or a builtin
            value = function.__globals__[name]
            if inspect.isfunction(value) and value.__module__ == function.__module__:
                visit(value)
            elif isinstance(value, str | int | float | bool | type(None)):
                constants[name] = f"{name} = {value!r}"
            else:
                line = _import_line(name, value)
                module = line.split()[1]
                if module.startswith(OWN_MODELS + "."):  # copied beside the checkpoint code: a relative import
                    line = line.replace(f" {module} ", f" {_relative_module(module)} ", 1)
                elif module.split(".")[0] == "hf_tsprune":
                    raise TypeError(
                        f"{function.__qualname__} uses {name!r} of hf_tsprune ({line!r}); checkpoint code may only "
                        "use torch, transformers, the family's own package and the standard library."
                    )
                imports[line] = None
        del definitions[function.__name__]
        definitions[function.__name__] = textwrap.dedent(inspect.getsource(function))

    for function in functions:
        visit(function)
    parts = ["\n".join(sorted(imports))] if imports else []
    if constants:
        parts.append("\n".join(constants.values()))
    return "\n\n".join(parts + list(definitions.values()))


def remote_code_sources(family: Family) -> dict[str, str]:
    """File name -> text of the remote-code files of a family's pruned checkpoints."""
    from . import __version__

    config_module, config_name = family.base_config_class.split(":")
    model_module, model_name = family.base_model_class.split(":")
    header = dict(version=__version__, family=family.name, checkpoint=CHECKPOINT_MODULE)
    config_source = _HEADER.format(what="Its configuration class", **header) + textwrap.dedent(
        f"""
        from {_relative_module(config_module)} import {config_name}

        from .{CHECKPOINT_MODULE} import make_pruned_config_class

        {family.config_class_name} = make_pruned_config_class(
            {config_name},
            {family.config_class_name!r},
            family={family.name!r},
            model_class_name={family.model_class_name!r},
            extra_auto_classes={tuple(family.extra_auto_classes)!r},
            module=__name__,
        )
        """
    )
    forwards = family.spec.attention_forwards()
    forward_names = "".join(f"{f.__name__}, " for f in forwards)
    model_source = _HEADER.format(what="Its model class", **header)
    model_source += f"\nfrom {_relative_module(model_module)} import {model_name}\n\n"
    model_source += f"from .{CONFIG_MODULE} import {family.config_class_name}\n"
    model_source += f"from .{CHECKPOINT_MODULE} import make_pruned_model_class\n"
    if forwards:
        model_source += "\n" + checkpoint_source(forwards) + "\n"
    model_source += textwrap.dedent(
        f"""
        {family.model_class_name} = make_pruned_model_class(
            {model_name},
            {family.config_class_name},
            {family.model_class_name!r},
            forwards=({forward_names}),
            module=__name__,
        )
        """
    )
    return {f"{CONFIG_MODULE}.py": config_source, f"{MODEL_MODULE}.py": model_source}


def write_remote_code(config: Any, save_directory: str | os.PathLike) -> list[str]:
    """Writes the remote-code files of a pruned configuration's family into `save_directory` (created if needed):
    the generated configuration and modeling files, `hf_tsprune_checkpoint.py`, a copy of
    `hf_tsprune.checkpoint_code`, and copies of the family's own model modules ([`own_model_modules`]). Called by
    every `save_pretrained` of a pruned configuration (hence of a model).

    Returns:
        The file names written.
    """
    family = get_family(config.base_model_type)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    for filename, text in remote_code_sources(family).items():
        (folder / filename).write_text(text)
    shutil.copyfile(checkpoint_code.__file__, folder / f"{CHECKPOINT_MODULE}.py")
    written = list(REMOTE_CODE_FILES)
    for module in own_model_modules(family):
        filename = Path(module.__file__).name
        shutil.copyfile(module.__file__, folder / filename)
        written.append(filename)
    return written


# -- recorded figures -------------------------------------------------------------------------------------------------


def _meta_base_model(config, family: Family) -> nn.Module:
    """The unpruned model of `config`'s architecture, built on the `meta` device (no memory, no weights)."""
    fields = {k: v for k, v in config.to_dict().items() if k not in ("auto_map", "architectures", "model_type")}
    base_config_class, base_model_class = family.base_classes()
    base_config = base_config_class.from_dict(copy.deepcopy(fields))
    with torch.device("meta"):
        return base_model_class(base_config)


def _units_before(config, family: Family) -> dict[str, dict[str, Any]]:
    """Per prunable block of the unpruned architecture: its kind, units and (attention) key/value heads; rotary
    query/key pairs (kind `"rotary"`) also name their attention block (`owner`). Optional groups (Sundial's flow
    head) are listed too, pruned or not."""
    return {
        g.name: {"kind": g.kind, "units": g.num_units, "heads": g.num_kv_heads, "owner": g.owner}
        for g in describe_groups(_meta_base_model(config, family), family.spec.with_optional_groups())
    }


def kept_units(model_or_config: nn.Module | Any, plan: PruningPlan | None = None) -> dict[str, dict[str, Any]]:
    """Per prunable block, what the pruning kept of the unpruned architecture: `{name: {"kind", "units_before",
    "units_after", "heads_before", "heads_after"}}` (heads for attention blocks only; units are attention value
    channels, rotary query/key pairs (kind `"rotary"`, named `<attention block>.<q>`) or feed-forward channels; `*_before` always count the unpruned architecture, also after repeated pruning).

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
    family = get_family(config)
    layout = getattr(config, LAYOUT_ATTR, None) or {}
    planned = {g.name: g for g in plan.groups} if plan is not None else {}
    out = {}
    for name, before in _units_before(config, family).items():
        entry = {"kind": before["kind"], "units_before": before["units"], "units_after": before["units"]}
        if before["kind"] == "attention":
            entry.update(heads_before=before["heads"], heads_after=before["heads"])
        sizes, group = layout.get(before["owner"] or name), planned.get(name)
        if before["kind"] == "rotary" and group is None:  # from the layout: the pairs of the kept heads
            if sizes is not None and sizes["kind"] == "attention":
                pairs = sizes.get("rotary_pairs")
                entry["units_after"] = sum(map(len, pairs)) if pairs is not None else (
                    sizes["num_kv_heads"] * before["units"] // max(before["heads"], 1)
                )  # fmt: skip
        elif group is not None:
            entry["units_after"] = group.units_after
            if group.kind == "attention":
                entry["heads_after"] = group.heads_after
        elif sizes is not None and sizes["kind"] == "attention":
            entry.update(units_after=sizes["num_kv_heads"] * sizes["v_head_dim"], heads_after=sizes["num_kv_heads"])
        elif sizes is not None:
            entry["units_after"] = sizes["width"]
        out[name] = entry
    return out


def _model_family(model: nn.Module) -> Family:
    """The family of a forecasting model whose class (or a base class) the family lists; else a `TypeError`."""
    name = family_of(model)
    family = families().get(name) if name else None
    if family is None or not any(cls.__name__ in family.model_classes for cls in type(model).__mro__):
        supported = ", ".join(cls for f in families().values() for cls in f.model_classes)
        raise TypeError(
            f"hf_tsprune cannot save a pruned {type(model).__name__}: pruned checkpoints exist for {supported}. Pass "
            "the forecasting model itself (not a wrapper or a backbone)."
        )
    family.require()
    return family


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
    family = _model_family(model)
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
    config_class = family.pruned_config_class
    if not is_pruned_config(config):
        default_base = config.name_or_path or None
        config.__class__ = config_class
        config.base_model = default_base
        config.base_model_revision = None
        config.pruning = None
    config.__class__ = config_class  # also a configuration loaded with remote code: the library's class from now on
    setattr(config, BLOCKS_ATTR, family.spec.blocks())  # what the loader needs to resize the blocks of the layout
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
    model.__class__ = family.pruned_model_class

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
    pruning["params_before"] = _num_params(_meta_base_model(config, family))
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


def load_pruned(path: str | os.PathLike, **kwargs) -> nn.Module:
    """Loads a pruned checkpoint folder of any family: a transformers one with
    `AutoModelForTimeSeriesPrediction.from_pretrained` (`kwargs` passed on), one of a family with its own checkpoint
    format (Moirai) with that family's `load_pruned`.

    Raises:
        `ValueError`: the folder holds no pruned hf_tsprune checkpoint.
    """
    config_file = Path(path) / "config.json"
    settings = json.loads(config_file.read_text()) if config_file.is_file() else {}
    name = settings.get("base_model_type") or family_of(str(settings.get("model_type", "")))
    if name is None or settings.get(BLOCKS_ATTR) is None:
        raise ValueError(f"{path} holds no pruned hf_tsprune checkpoint (no `{BLOCKS_ATTR}` in its config.json).")
    family = get_family(name)
    if not family.has_pruned_classes:
        return family.load_pruned(str(path))
    return transformers.AutoModelForTimeSeriesPrediction.from_pretrained(path, **kwargs)


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

    Writes `model.safetensors`, `config.json` (base fields, per-layer sizes, block kinds, base model and revision,
    pruning settings, `auto_map`) and the remote-code files `configuration_hf_tsprune.py`, `modeling_hf_tsprune.py`
    and `hf_tsprune_checkpoint.py`.

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
    name = family_of(unwrap(model))
    family = families().get(name) if name else None
    if family is not None and not family.has_pruned_classes:  # not a transformers model (Moirai): its own format
        return family.save_pruned(
            unwrap(model), save_directory, base_model=base_model, base_model_revision=base_model_revision,
            pruning_config=pruning_config, plan=plan, seed=seed, extra=extra,
        )  # fmt: skip
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
