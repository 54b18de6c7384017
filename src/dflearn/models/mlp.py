"""Fully connected networks with a tap after every hidden activation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from dflearn.models._common import MODELS, as_shape, finish
from dflearn.taps import Tap

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    # A deep linear network: the setting where alignment results can be checked exactly.
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name``; unknown names raise ``ValueError``."""
    if name not in ACTIVATIONS:
        valid = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; valid activations: {valid}")
    return ACTIVATIONS[name]()


def _resolve_sizes(
    sizes: Sequence[int] | None,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    hidden: Sequence[int],
) -> tuple[list[int], tuple[int, ...]]:
    """Layer widths ``[in, hidden..., classes]`` and the per-sample input shape."""
    if sizes is None:
        if input_shape is None or num_classes is None:
            raise ValueError("mlp needs either sizes or both input_shape and num_classes")
        shape = as_shape(input_shape)
        return [math.prod(shape), *map(int, hidden), int(num_classes)], shape
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least input and output widths, got {sizes}")
    # A CLI may pass input_shape/num_classes alongside sizes; they must agree.
    shape = (sizes[0],) if input_shape is None else as_shape(input_shape)
    if math.prod(shape) != sizes[0]:
        raise ValueError(f"input_shape {shape} does not flatten to sizes[0]={sizes[0]}")
    if num_classes is not None and int(num_classes) != sizes[-1]:
        raise ValueError(f"num_classes={num_classes} disagrees with sizes[-1]={sizes[-1]}")
    return sizes, shape


@MODELS.register("mlp")
def mlp(
    sizes: Sequence[int] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    hidden: Sequence[int] = (1024, 1024),
    activation: str = "relu",
    bias: bool = True,
) -> nn.Sequential:
    """A multilayer perceptron: ``Flatten, (Linear, act, Tap) * len(hidden), Linear``.

    Give either ``sizes = [input, hidden..., classes]`` or ``input_shape``, ``num_classes``
    and ``hidden``. The layout is fixed because learning rules read the ``Linear`` layers
    between taps to initialise their heads.
    """
    widths, shape = _resolve_sizes(sizes, input_shape, num_classes, hidden)
    make_activation(activation)  # fail early on a bad name, even with no hidden layers
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(n_in, n_out, bias=bias), make_activation(activation), Tap()]
    layers.append(nn.Linear(widths[-2], widths[-1], bias=bias))
    return finish(nn.Sequential(*layers), shape, widths[-1])
