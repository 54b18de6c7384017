"""LAS with label-trained heads (LTAS, Yang, Lee, Park 2024).

As LAS, but each head learns to classify: cross-entropy of its scores
against the labels instead of MSE to the network output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .las import LAS
from .registry import register_rule


@register_rule("ltas")
class LTAS(LAS):
    """A head per hidden tap, trained on the labels."""

    name = "ltas"

    def head_loss(self, taps: list[Tensor], output: Tensor, target: Tensor) -> Tensor | None:
        """Cross-entropy of each head's scores to the labels."""
        losses = [F.cross_entropy(head(h.detach()), target) for head, h in zip(self.heads, taps)]
        return torch.stack(losses).sum() if losses else None
