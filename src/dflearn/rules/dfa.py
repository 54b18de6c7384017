"""Direct Feedback Alignment (Nokland 2016).

The output error ``e = dL/dy`` reaches every tap through a fixed random
matrix: teaching signal ``d_l = e B_l``. Every tap is cut, so no block ever
computes dL/dh. For 4-D taps, ``feedback="dense"`` draws B_l over all of
C x H x W; ``feedback="conv"`` draws a compact ``classes x C x k x k`` kernel
and applies it to the error repeated over space (a transposed convolution).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Rule
from .registry import register_rule


@register_rule("dfa")
class DFA(Rule):
    """A fixed random head (buffer, never trained) at every tap."""

    name = "dfa"

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        seed: int = 0,
        feedback: str = "dense",
        head_kernel: int = 3,
    ) -> None:
        super().__init__(model, num_classes, input_shape=input_shape, seed=seed)
        self.heads = self._make_heads(
            self.tap_shapes, feedback, head_kernel, pool="avg", trainable=False
        )
        self._cut = [True] * len(self._taps)
        self._head_of = list(range(len(self._taps)))
