"""DFA with Local Alignment Support (Yang, Lee, Park, IEEE Access 12, 2024).

Each hidden tap but the top one owns a small trained head ``h_l -> y``: a
bias-free linear layer for flat taps, a k x k conv to the classes plus global
pooling for 4-D taps. Heads learn to mimic the network output (MSE to the
detached y), so the head's VJP with e approximates dy/dh_l . e, the BP
gradient, where DFA has a random B_l. The top tap is left whole: the output
block itself is its exact head.

Schedules. ``two-pass`` is the paper's order: heads learn on a no-grad pass,
then the DFA pass uses the updated heads. ``fused`` trains heads and model in
one forward, one backward call and one optimizer step; the signal then comes
from the heads before this step's update (a one-step lag).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..taps import ACTIVATIONS, Tap
from .base import LossFn, Rule, frozen_running_stats
from .registry import register_rule

SCHEDULES = ("fused", "two-pass")
HEAD_INITS = ("product", "random")

# Modules a product-initialised head may look through: they hold no weights.
_PASSIVE = (Tap, nn.Identity, nn.Dropout, *ACTIVATIONS)


@register_rule("las")
class LAS(Rule):
    """A trained head at each hidden tap; the top tap is exact."""

    name = "las"

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        seed: int = 0,
        schedule: str = "fused",
        feedback: str = "conv",
        head_kernel: int = 3,
        head_pool: str = "avg",
        head_init: str | None = None,
    ) -> None:
        super().__init__(model, num_classes, input_shape=input_shape, seed=seed)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        hidden = len(self._taps) - 1
        self.heads = self._make_heads(
            self.tap_shapes[:hidden], feedback, head_kernel, head_pool, trainable=True
        )
        self.head_init = self._init_heads(head_init)
        self._cut = [True] * hidden + [False]
        self._head_of = [*range(hidden), None]

    def _init_heads(self, head_init: str | None) -> str:
        # "product" (the paper's choice for plain MLPs) where the model allows it.
        products = [_product_weight(self.model, tap) for tap in self._taps[:-1]]
        possible = all(w is not None for w in products)
        head_init = head_init or ("product" if possible and products else "random")
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
        if head_init == "product" and not possible:
            raise ValueError(
                "head_init='product' needs an nn.Sequential MLP whose modules above "
                "each tap are nn.Linear layers and activations; use head_init='random'"
            )
        if head_init == "product":
            with torch.no_grad():
                for head, weight in zip(self.heads, products):
                    head.weight.copy_(weight.reshape(head.weight.shape))
        return head_init

    def head_loss(self, taps: list[Tensor], output: Tensor, target: Tensor) -> Tensor | None:
        """MSE of each head's scores to the detached network output."""
        losses = [
            F.mse_loss(head(h.detach()), output.detach()) for head, h in zip(self.heads, taps)
        ]
        return torch.stack(losses).sum() if losses else None

    def step(
        self,
        x: Tensor,
        target: Tensor,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One training step; see the module docstring for the schedules."""
        if self.schedule == "two-pass":
            self._update_heads(x, target, optimizer)
        return super().step(x, target, optimizer, loss_fn)

    def _update_heads(self, x: Tensor, target: Tensor, optimizer) -> None:
        # First pass of the paper's order: running statistics must move only
        # once per step, in the DFA pass, so they are frozen here.
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad(), frozen_running_stats(self.model):
            y, taps = self._forward(x)
        loss = self.head_loss(taps, y, target)
        if loss is not None:
            loss.backward()
            optimizer.step()


def _product_weight(model: nn.Module, tap: Tap) -> Tensor | None:
    """W_L ... W_{l+1}: the forward weights above ``tap``, multiplied out.

    None unless ``model`` is an ``nn.Sequential`` whose modules above the tap
    are linear layers and weightless ones (activations, taps, dropout).
    """
    if not isinstance(model, nn.Sequential):
        return None
    mods = list(model)
    if tap not in mods:
        return None
    # Folded from the output down: (classes x n) @ (n x m) stays thin, where
    # bottom-up would multiply the wide hidden matrices with each other.
    weight = None
    for module in reversed(mods[mods.index(tap) + 1 :]):
        if isinstance(module, nn.Linear):
            w = module.weight.detach()
            weight = w if weight is None else weight @ w
        elif not isinstance(module, _PASSIVE):
            return None
    return None if weight is None else weight.clone()
