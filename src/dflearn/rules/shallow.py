"""Shallow learning: only the output block learns.

The control that DFA papers report. Every tap is cut and gets no teaching
signal, so the blocks below the top tap keep their initial weights. A rule
that does not beat this one has not trained its hidden layers.
"""

from __future__ import annotations

from torch import nn

from .base import Rule
from .registry import register_rule


@register_rule("shallow")
class Shallow(Rule):
    """Cuts every tap; only the block after the top tap gets a gradient."""

    name = "shallow"

    def __init__(self, model: nn.Module, num_classes: int | None = None, **kwargs) -> None:
        super().__init__(model, num_classes, **kwargs)
        self._cut = [True] * len(self._taps)
