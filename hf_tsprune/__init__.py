"""hf_tsprune: make time-series foundation models better at one task by making them smaller.

Prune-then-finetune ("Less is More", arXiv 2505.23195) as a `transformers.TrainerCallback` plus exact model surgery:

1. `install_masks(model)`: a mask per coupled channel set; weights frozen;
2. `Trainer(..., callbacks=[PruningCallback(PruningConfig(...))]).train()`: Taylor/EMA scores, global threshold,
   best mask set by validation;
3. `shrink(model)`: physically smaller model, same outputs; returns a `PruningPlan` (params, FLOPs, per-layer sizes).
"""

from .architectures import (
    ArchitectureSpec,
    AttentionGroup,
    MLPGroup,
    get_spec,
    register_architecture,
    supported_model_classes,
)
from .callback import PruningCallback
from .masks import get_masks, install_masks, masked_groups, remove_masks, set_masks
from .modeling import (  # importing registers the pruned classes with the transformers Auto classes
    PrunedPatchTSMixerConfig,
    PrunedPatchTSMixerForPrediction,
    PrunedPatchTSTConfig,
    PrunedPatchTSTForPrediction,
    PrunedTimesFm2_5Config,
    PrunedTimesFm2_5ModelForPrediction,
    PrunedTimesFmConfig,
    PrunedTimesFmModelForPrediction,
    is_pruned_model,
    save_pruned,
    to_pruned_model,
)
from .scoring import PruningConfig, TaylorScorer
from .surgery import EmptyAttention, PruningPlan, count_flops, make_plan, shrink

__version__ = "0.1.0"

__all__ = [
    "ArchitectureSpec",
    "AttentionGroup",
    "EmptyAttention",
    "MLPGroup",
    "PruningCallback",
    "PruningConfig",
    "PruningPlan",
    "PrunedPatchTSMixerConfig",
    "PrunedPatchTSMixerForPrediction",
    "PrunedPatchTSTConfig",
    "PrunedPatchTSTForPrediction",
    "PrunedTimesFm2_5Config",
    "PrunedTimesFm2_5ModelForPrediction",
    "PrunedTimesFmConfig",
    "PrunedTimesFmModelForPrediction",
    "TaylorScorer",
    "count_flops",
    "get_masks",
    "get_spec",
    "install_masks",
    "is_pruned_model",
    "make_plan",
    "masked_groups",
    "register_architecture",
    "remove_masks",
    "save_pruned",
    "set_masks",
    "shrink",
    "supported_model_classes",
    "to_pruned_model",
]
