"""Heads: direct paths from a tap to the class scores.

A head maps a tap's output ``h`` to ``(N, classes)``. Its vector-Jacobian
product with the output error ``e`` is the teaching signal at that tap. DFA
uses fixed random heads (weights are buffers); LAS trains them (parameters).
For a linear head ``o = h W^T`` the product is ``e W``, which is DFA's ``e B``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> Tensor:
    # The bound of nn.Linear's default init, drawn from a seeded generator.
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


class Head(nn.Module):
    """Base class: ``forward`` gives scores, ``vjp`` the teaching signal."""

    def __init__(self, weight: Tensor, trainable: bool) -> None:
        super().__init__()
        if trainable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    def vjp(self, h: Tensor, e: Tensor) -> Tensor:
        """Teaching signal ``e . d head(h) / dh`` (generic, through autograd)."""
        with torch.enable_grad():
            h = h.detach().requires_grad_()
            (signal,) = torch.autograd.grad(self(h), h, e)
        return signal


class LinearHead(Head):
    """Bias-free linear map from a flattened tap to the classes."""

    def __init__(
        self,
        tap_shape: tuple[int, ...],
        num_classes: int,
        trainable: bool,
        generator: torch.Generator,
    ) -> None:
        features = math.prod(tap_shape)
        weight = _uniform((num_classes, features), features, generator)
        super().__init__(weight, trainable)

    def forward(self, h: Tensor) -> Tensor:
        return h.flatten(1) @ self.weight.T

    def vjp(self, h: Tensor, e: Tensor) -> Tensor:
        # (N, classes) @ (classes, features): DFA's e B_l
        return (e @ self.weight).view_as(h)


class ConvHead(Head):
    """A k x k convolution to the classes, then global pooling.

    With average pooling the teaching signal is a transposed convolution of
    the error spread evenly over space, so a fixed random ``ConvHead`` is the
    compact conv feedback of DFA for 4-D taps.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        kernel_size: int,
        pool: str,
        trainable: bool,
        generator: torch.Generator,
    ) -> None:
        if kernel_size % 2 == 0:
            raise ValueError(
                f"head kernel size must be odd to keep the map size, got {kernel_size}"
            )
        if pool not in ("avg", "max"):
            raise ValueError(f"head pool must be 'avg' or 'max', got {pool!r}")
        fan_in = in_channels * kernel_size**2
        shape = (num_classes, in_channels, kernel_size, kernel_size)
        super().__init__(_uniform(shape, fan_in, generator), trainable)
        self.pool = pool

    def forward(self, h: Tensor) -> Tensor:
        maps = F.conv2d(h, self.weight, padding=self.weight.shape[-1] // 2)
        if self.pool == "max":
            return maps.amax(dim=(2, 3))
        return maps.mean(dim=(2, 3))

    def vjp(self, h: Tensor, e: Tensor) -> Tensor:
        if self.pool == "max":
            return super().vjp(h, e)

        # d mean / d map is 1/(H W) everywhere: spread e over the map, then
        # run the convolution backwards (conv_transpose2d with the same kernel).
        n, _, height, width = h.shape
        spread = (e / (height * width))[:, :, None, None]
        spread = spread.expand(n, e.shape[1], height, width)
        pad = self.weight.shape[-1] // 2
        return F.conv_transpose2d(spread, self.weight, padding=pad)


FEEDBACK = ("dense", "conv")  # how a head reads a 4-D (C, H, W) tap


def make_head(
    tap_shape: tuple[int, ...],
    num_classes: int,
    *,
    feedback: str,
    kernel_size: int,
    pool: str,
    trainable: bool,
    generator: torch.Generator,
) -> Head:
    """A head for one tap: linear for flat taps; dense or conv for 4-D taps."""
    if feedback not in FEEDBACK:
        raise ValueError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")
    if feedback == "conv" and len(tap_shape) == 3:
        return ConvHead(tap_shape[0], num_classes, kernel_size, pool, trainable, generator)
    return LinearHead(tuple(tap_shape), num_classes, trainable, generator)
