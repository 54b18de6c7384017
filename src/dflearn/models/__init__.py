"""Model families for dflearn, built by name: ``create("mlp", input_shape=..., ...)``.

Every factory accepts ``input_shape`` (per-sample) and ``num_classes``; every built model
carries them as ``model.input_shape`` and ``model.num_classes``.
"""

from __future__ import annotations

from torch import nn

# Imported for their registrations.
from dflearn.models import convnet, mlp, resnet  # noqa: F401
from dflearn.models._common import MODELS

__all__ = ["MODELS", "create", "list_models"]


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def create(name: str, **kwargs) -> nn.Module:
    """Build model ``name``; an unknown name raises an error listing the valid ones."""
    return MODELS.create(name, **kwargs)
