"""Architecture specs: one short declarative file per model family, registered on import."""

# importing the spec files registers their specs
from . import chronos, chronos_bolt, patchtsmixer, patchtst, timesfm, timesfm2_5, ttm  # noqa: E402,F401
from .base import (
    ArchitectureSpec,
    AttentionGroup,
    Group,
    MLPGroup,
    get_spec,
    register_architecture,
    supported_model_classes,
)

__all__ = [
    "ArchitectureSpec",
    "AttentionGroup",
    "Group",
    "MLPGroup",
    "get_spec",
    "register_architecture",
    "supported_model_classes",
]
