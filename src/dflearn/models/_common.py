"""Shared pieces of the model families: the registry and input-shape helpers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dflearn.registry import Registry

# Lives here rather than in ``__init__`` so family modules can import it without a cycle.
MODELS: Registry[nn.Module] = Registry("model")


def as_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints; anything else raises ``ValueError``."""
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"input_shape must be non-empty positive sizes, got {input_shape!r}")
    return shape


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``input_shape`` checked to be a per-sample image shape ``(C, H, W)``."""
    shape = as_shape(input_shape)
    if len(shape) != 3:
        raise ValueError(f"expected input_shape (C, H, W), got {input_shape!r}")
    return shape  # type: ignore[return-value]


def finish(model: nn.Module, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Attach ``input_shape`` and ``num_classes`` so callers can build inputs generically."""
    model.input_shape = as_shape(input_shape)
    model.num_classes = int(num_classes)
    return model
