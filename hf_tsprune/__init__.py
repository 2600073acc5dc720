"""hf_tsprune: make time-series foundation models better at one task by making them smaller.

Prune-then-finetune ("Less is More", arXiv 2505.23195) as a `transformers.TrainerCallback` plus exact model surgery:

1. `install_masks(model)`: a mask per coupled channel set; weights frozen;
2. `Trainer(..., callbacks=[PruningCallback(PruningConfig(...))]).train()`: Taylor/EMA scores, global threshold,
   best mask set by validation;
3. `shrink(model)`: physically smaller model, same outputs; returns a `PruningPlan` (params, FLOPs, per-layer sizes).
"""

from . import families as _families  # noqa: F401  (registers every model family)
from . import models as _models  # noqa: F401  (registers the own Time-MoE / Timer-XL / Sundial implementations)
from .callback import PruningCallback
from .checkpoint_code import EmptyAttention
from .family import Family, families, family_of, get_family, get_spec, register_family, supported_model_classes
from .masks import get_masks, install_masks, masked_groups, remove_masks, set_masks
from .modeling import is_pruned_model, register_auto_classes, save_pruned, to_pruned_model
from .scoring import PruningConfig, TaylorScorer
from .specs import ArchitectureSpec, AttentionGroup, MLPGroup
from .surgery import PruningPlan, count_flops, make_plan, shrink

__version__ = "0.1.0"

register_auto_classes()  # the pruned classes of every available family load with the transformers Auto classes

_PRUNED_CLASS_NAMES = {
    name: family for family in families().values() for name in (family.config_class_name, family.model_class_name)
}


def __getattr__(name: str):
    """The pruned configuration and model classes of every family (`hf_tsprune.PrunedTimesFm2_5Config`, ...); one
    of a family whose package is missing raises the `ImportError` that says how to install it."""
    if name in _PRUNED_CLASS_NAMES:
        from . import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArchitectureSpec",
    "AttentionGroup",
    "EmptyAttention",
    "Family",
    "MLPGroup",
    "PruningCallback",
    "PruningConfig",
    "PruningPlan",
    "TaylorScorer",
    "count_flops",
    "families",
    "family_of",
    "get_family",
    "get_masks",
    "get_spec",
    "install_masks",
    "is_pruned_model",
    "make_plan",
    "masked_groups",
    "register_auto_classes",
    "register_family",
    "remove_masks",
    "save_pruned",
    "set_masks",
    "shrink",
    "supported_model_classes",
    "to_pruned_model",
] + sorted(name for name, family in _PRUNED_CLASS_NAMES.items() if family.available)
