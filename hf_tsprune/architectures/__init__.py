"""Architecture specs: one short declarative file per model family, registered on import."""

from . import patchtsmixer, patchtst, timesfm, timesfm2_5  # noqa: E402,F401  (registers the specs)
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
