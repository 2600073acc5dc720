"""Model families: everything hf_tsprune knows about one family, registered once under one key.

A [`Family`] holds, for one model family (TimesFM, Chronos-Bolt, ...): the architecture spec (its coupled groups,
`hf_tsprune.specs`), the forecast adapter (how it is called for a point forecast, its horizon and context limits,
`hf_tsprune.adapters`), the training-input builder and label names (the forward arguments with which it computes its
own loss, `hf_tsprune.training`), the base configuration and model classes its pruned classes extend, and the
optional package it needs with the install hint. Each family lives in one file of `hf_tsprune/families/`, which
ends with one [`register_family`] call; every lookup (by model, configuration, `model_type` or family name) goes
through [`get_family`].

A family whose package is missing is registered all the same, as unavailable: `import hf_tsprune` works with the core
dependencies alone, [`supported_model_classes`] says which families are usable, and using an unavailable one raises an
`ImportError` that names the package and how to install it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import keyword
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from torch import nn

from .checkpoint_code import MODEL_TYPE_PREFIX
from .specs import ArchitectureSpec

__all__ = [
    "Family",
    "checkpoint_family",
    "families",
    "family_of",
    "get_family",
    "get_spec",
    "register_family",
    "supported_model_classes",
]


def import_object(path: str) -> Any:
    """The object at `"package.module:Name"`."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, eq=False)
class Family:
    """One model family, as [`register_family`] records it.

    Args:
        name (`str`):
            The registry key (e.g. `"timesfm2_5"`): `config.base_model_type` of its pruned checkpoints, whose
            `model_type` is `hf_tsprune_<name>`.
        spec (`ArchitectureSpec`):
            The coupled groups the engine prunes, the example inputs and the forecast used by exactness checks; its
            `model_classes` are the class names that belong to the family (subclasses match through their bases).
        adapter (`ForecastAdapter`):
            How the family forecasts (`hf_tsprune.adapters`); the registry binds it to the family.
        training_inputs (`Callable[[nn.Module, list[dict], int], dict]`):
            Window features (and the TimesFM frequency index) -> the forward arguments with which the model computes
            its own training loss, target included.
        base_config_class (`str`), base_model_class (`str`):
            `"module:Name"` of the configuration and model classes the pruned classes extend.
        model_types (`tuple[str, ...]`):
            The `config.model_type` values of the family's dense checkpoints (e.g. `("tinytimemixer",)`).
        config_matches (`Callable[[PretrainedConfig], bool]`, *optional*):
            For a `model_type` that several families share (Chronos and Chronos-Bolt: `"t5"`): whether a
            configuration is of this family. The family of that `model_type` without it is the default.
        label_names (`tuple[str, ...]`, defaults to `("future_values",)`):
            `TrainingArguments.label_names`: the `training_inputs` key that holds the target.
        trains_native_horizon (`bool`, defaults to `False`):
            Whether the family's loss compares its whole native horizon with the target (TimesFM 1.x), so that
            training windows have `native_horizon` target steps rather than the task's `prediction_length`.
        pruned_config_class_name (`str`, *optional*), pruned_model_class_name (`str`, *optional*):
            Names of the pruned classes; default `Pruned<base class name>`.
        extra_auto_classes (`tuple[str, ...]`):
            Further transformers Auto classes that load a pruned checkpoint (Chronos: `AutoModelForSeq2SeqLM`).
        requires (`str`, *optional*):
            The import name of the optional package the family needs (`"chronos"`, `"tsfm_public"`).
        install_hint (`str`, *optional*):
            How to install it, as the `ImportError` says.
        native_pipeline (`Callable[[nn.Module], Any]`, *optional*):
            Builds the family package's own forecasting pipeline around a model (Chronos: `ChronosPipeline`), for
            `hf_tsprune.evaluation.load_chronos_pipeline`.
        description (`str`, *optional*):
            One line for listings.
        save_pruned (`Callable`, *optional*):
            For a family whose models are not transformers `PreTrainedModel`s (Moirai: `huggingface_hub` mixin
            modules): `save_pruned(model, save_directory, *, base_model, plan, pruning_config, seed, extra)` writes
            its pruned checkpoint and returns the file names, in place of the pruned transformers classes (which such
            a family has none of: `base_config_class` is then only informative). `None` (the default): the pruned
            classes of `hf_tsprune.modeling`.
        load_pruned (`Callable[[str], nn.Module]`, *optional*):
            With `save_pruned`: loads such a checkpoint (folder) into a model with its pruned layout, failing on any
            missing, unexpected or mismatched tensor; [`hf_tsprune.modeling.load_pruned`] calls it. A family with
            `task_settings` also takes them as keyword arguments (`None`: the checkpoint's own).
        task_settings (`tuple[str, ...]`):
            The task settings (`hf_tsprune.pipeline.TaskArguments` field names) that its `load_dense` needs and its
            `load_pruned` takes, because they are part of the model (Moirai: `("prediction_length",
            "context_length", "patch_size")`); `hf_tsprune.evaluation.load_forecaster` passes them on.
        matches_checkpoint (`Callable[[dict], bool]`, *optional*):
            For a family whose dense checkpoints are not transformers ones (no `model_type` in their `config.json`):
            whether a `config.json` (as a dict) is one of them, so that `load_forecaster` recognises its folders and
            Hub ids. Needs `load_dense`.
        load_dense (`Callable[..., nn.Module]`, *optional*):
            With `matches_checkpoint`: `load_dense(name_or_path, *, strict, revision, token, **task_settings)` loads
            such a dense checkpoint (folder or Hub id) into the family's model class, raising a `ValueError` naming
            the flag of a missing or invalid task setting before any weight is read.
        pruning_settings (`Callable[[nn.Module], contextlib.AbstractContextManager]`, *optional*):
            Settings of the model's own loss while it is pruned that finetuning does not share: `with
            family.pruning_settings(model):` holds them and leaving restores the model. The prune stage enters it
            around the prune run and the expert stage around its scoring (`hf_tsprune.pipeline`; see
            [`Family.while_pruning`]). Time-MoE: the routers' auxiliary load-balancing loss off while pruning, on
            again for finetuning, as in the paper. `None`: the loss is the same in every stage.
    """

    name: str
    spec: ArchitectureSpec
    adapter: Any
    training_inputs: Callable[[nn.Module, list[dict], int], dict]
    base_config_class: str
    base_model_class: str
    model_types: tuple[str, ...] = ()
    config_matches: Callable[[Any], bool] | None = None
    label_names: tuple[str, ...] = ("future_values",)
    trains_native_horizon: bool = False
    pruned_config_class_name: str | None = None
    pruned_model_class_name: str | None = None
    extra_auto_classes: tuple[str, ...] = ()
    requires: str | None = None
    install_hint: str | None = None
    native_pipeline: Callable[[nn.Module], Any] | None = None
    description: str = ""
    save_pruned: Callable[..., list[str]] | None = None
    load_pruned: Callable[[str], nn.Module] | None = None
    task_settings: tuple[str, ...] = ()
    matches_checkpoint: Callable[[dict], bool] | None = None
    load_dense: Callable[..., nn.Module] | None = None
    pruning_settings: Callable[[nn.Module], contextlib.AbstractContextManager] | None = None
    _pruned: dict = field(default_factory=dict, repr=False)

    def while_pruning(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """The context a prune run (or an expert scoring pass) of `model` runs in: the family's `pruning_settings`, or
        nothing to change."""
        return self.pruning_settings(model) if self.pruning_settings is not None else contextlib.nullcontext()

    @property
    def model_classes(self) -> tuple[str, ...]:
        return self.spec.model_classes

    @property
    def config_class_name(self) -> str:
        """The pruned configuration class' name."""
        return self.pruned_config_class_name or "Pruned" + self.base_config_class.partition(":")[2]

    @property
    def model_class_name(self) -> str:
        """The pruned model class' name."""
        return self.pruned_model_class_name or "Pruned" + self.base_model_class.partition(":")[2]

    @property
    def pruned_model_type(self) -> str:
        return MODEL_TYPE_PREFIX + self.name

    @cached_property
    def available(self) -> bool:
        """Whether the family's optional package (if any) can be imported."""
        if self.requires is None:
            return True
        try:
            return importlib.util.find_spec(self.requires) is not None
        except (ImportError, ValueError):
            return False

    def require(self) -> None:
        """Imports the family's optional package, or raises an `ImportError` naming it and how to install it."""
        if self.requires is None:
            return
        try:
            importlib.import_module(self.requires)
        except ImportError as error:
            raise ImportError(
                f"The {self.name} family ({', '.join(self.model_classes)}) needs the `{self.requires}` package, which "
                f"is not installed: {self.install_hint or f'pip install {self.requires}'}."
            ) from error

    def base_classes(self) -> tuple[type, type]:
        """The base configuration and model classes (imports the optional package)."""
        self.require()
        return import_object(self.base_config_class), import_object(self.base_model_class)

    @property
    def pruned_config_class(self) -> type:
        """The pruned configuration class (built once, on first use)."""
        return self._pruned_classes()[0]

    @property
    def pruned_model_class(self) -> type:
        """The pruned model class (built once, on first use)."""
        return self._pruned_classes()[1]

    @property
    def has_pruned_classes(self) -> bool:
        """Whether the family's pruned checkpoints are transformers models (no custom `save_pruned`)."""
        return self.save_pruned is None

    def _pruned_classes(self) -> tuple[type, type]:
        if not self.has_pruned_classes:
            raise TypeError(
                f"The {self.name} family's models are not transformers models: its pruned checkpoints are written by "
                "`hf_tsprune.save_pruned` and loaded by `hf_tsprune.modeling.load_pruned`, without pruned classes."
            )
        if not self._pruned:
            from .modeling import build_pruned_classes

            self._pruned["classes"] = build_pruned_classes(self)
        return self._pruned["classes"]


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Registers a model family under `family.name`, so that every hf_tsprune entry point supports it.

    One validated call fills every lookup: the spec, the adapter, the training inputs and the pruned classes are found
    through it from a model, a configuration, a `model_type` or the family name.

    Raises:
        `ValueError`: the name is taken or not an identifier, a model class or `model_type` already belongs to another
            family (without `config_matches` to tell them apart), or the spec's name differs from the family's.
    """
    name = family.name
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"Family name {name!r} must be a Python identifier (it becomes part of a `model_type`).")
    if name in _FAMILIES:
        raise ValueError(f"A model family {name!r} is registered already ({_FAMILIES[name].description or name}).")
    if family.spec.name != name:
        raise ValueError(f"Family {name!r} holds the spec of {family.spec.name!r}: give both the same name.")
    if not family.spec.groups:
        raise ValueError(f"Family {name!r}: its spec names no prunable group.")
    if (family.matches_checkpoint is None) != (family.load_dense is None):
        raise ValueError(f"Family {name!r}: give `matches_checkpoint` and `load_dense` together, or neither.")
    for other in _FAMILIES.values():
        shared = set(other.model_classes) & set(family.model_classes)
        if shared:
            raise ValueError(f"Family {name!r}: the model classes {sorted(shared)} belong to {other.name!r} already.")
        shared_types = set(other.model_types) & set(family.model_types)
        if shared_types and other.config_matches is None and family.config_matches is None:
            raise ValueError(
                f"Family {name!r}: the model types {sorted(shared_types)} belong to {other.name!r} already; give one "
                "of them `config_matches` to tell their configurations apart."
            )
    family.adapter.bind(family)
    _FAMILIES[name] = family
    return family


def checkpoint_family(settings: dict) -> Family | None:
    """The family whose own (non-transformers) checkpoint format a `config.json` dict is in: a pruned one (its
    `base_model_type` names a family with its own `save_pruned`) or a dense one its `matches_checkpoint` recognises;
    `None` for anything else (transformers checkpoints included)."""
    family = _FAMILIES.get(settings.get("base_model_type"))
    if family is not None and not family.has_pruned_classes:
        return family
    if settings.get("model_type") is not None:
        return None
    return next(
        (f for f in _FAMILIES.values() if f.matches_checkpoint is not None and f.matches_checkpoint(settings)), None
    )


def families() -> dict[str, Family]:
    """Every registered family by name (available or not)."""
    return dict(_FAMILIES)


def supported_model_classes() -> dict[str, bool]:
    """Model class name -> whether its family is usable here (its optional package is installed)."""
    return {cls: family.available for family in _FAMILIES.values() for cls in family.model_classes}


def _supported() -> str:
    return ", ".join(
        f"{cls} ({family.name}{'' if family.available else ', needs ' + str(family.requires)})"
        for family in _FAMILIES.values()
        for cls in family.model_classes
    )


def _by_model_type(model_type: str, config: Any = None) -> Family | None:
    candidates = [f for f in _FAMILIES.values() if model_type in f.model_types]
    if config is not None:
        for family in candidates:
            if family.config_matches is not None and family.config_matches(config):
                return family
    return next((f for f in candidates if f.config_matches is None), None)


def _by_config(config: Any) -> Family | None:
    """The family a configuration names (`architectures`) or whose configuration class it is, where only one has it."""
    for architecture in getattr(config, "architectures", None) or ():
        for family in _FAMILIES.values():
            if architecture in family.model_classes:
                return family
    name = type(config).__name__
    owners = [f for f in _FAMILIES.values() if f.base_config_class.partition(":")[2] == name]
    return owners[0] if len(owners) == 1 else None


def family_of(model_or_config: nn.Module | Any | str) -> str | None:
    """The family name of a model, a configuration, a `model_type` string or a family name (`None`: unknown).

    A model is matched by its class (or a base class); a configuration by `base_model_type` (pruned checkpoints), the
    model class it names (`architectures`), a configuration class only one family uses, or `model_type` (Chronos and
    Chronos-Bolt share `"t5"`: a `chronos_config` with `input_patch_size` is Bolt's).
    """
    if isinstance(model_or_config, str):
        name = model_or_config.removeprefix(MODEL_TYPE_PREFIX)  # a pruned checkpoint's `model_type`
        if name in _FAMILIES:
            return name
        family = _by_model_type(model_or_config)
        return family.name if family is not None else None
    if isinstance(model_or_config, nn.Module):
        for cls in type(model_or_config).__mro__:
            for family in _FAMILIES.values():
                if cls.__name__ in family.model_classes:
                    return family.name
        config = getattr(model_or_config, "config", None)
    else:
        config = model_or_config
    base_model_type = getattr(config, "base_model_type", None)
    if base_model_type in _FAMILIES:  # a pruned hf_tsprune checkpoint: its family
        return base_model_type
    family = _by_config(config) if config is not None else None
    if family is not None:
        return family.name
    model_type = getattr(config, "model_type", None)
    family = _by_model_type(model_type, config) if model_type else None
    return family.name if family is not None else None


def get_family(model_or_config: nn.Module | Any | str, require: bool = True) -> Family:
    """The registered family of a model, a configuration, a `model_type` string or a family name.

    Args:
        model_or_config: what to look up (see [`family_of`]).
        require (`bool`, defaults to `True`): raise an `ImportError` when the family's optional package is missing.

    Raises:
        `TypeError`: no registered family; the message lists the supported classes and how to add a family.
        `ImportError`: the family's package is not installed (with `require`); the message says how to install it.
    """
    name = family_of(model_or_config)
    if name is None:
        what = model_or_config if isinstance(model_or_config, str) else type(model_or_config).__name__
        raise TypeError(
            f"hf_tsprune has no model family for {what!r}. Supported: {_supported()}. To add one, write a family file "
            "(its coupled groups as an `ArchitectureSpec` of `AttentionGroup`s and `MLPGroup`s, a forecast adapter and "
            "training inputs) and call `hf_tsprune.register_family(Family(...))`."
        )
    family = _FAMILIES[name]
    if require:
        family.require()
    return family


def get_spec(model: nn.Module) -> ArchitectureSpec:
    """The architecture spec of `model`'s family, matched by its class (or a base class, e.g. a pruned class).

    Raises:
        `TypeError` naming the supported classes and how to register a new family.
    """
    for cls in type(model).__mro__:
        for family in _FAMILIES.values():
            if cls.__name__ in family.model_classes:
                return family.spec
    raise TypeError(
        f"hf_tsprune has no architecture spec for {type(model).__name__}. Supported: {_supported()}. To add one, "
        "describe its coupled groups with `hf_tsprune.ArchitectureSpec` (attention heads: `AttentionGroup`, "
        "feed-forward channels: `MLPGroup`) in a family file and call `hf_tsprune.register_family(Family(...))`."
    )
