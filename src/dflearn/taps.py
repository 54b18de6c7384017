"""Taps: the places in a model where a learning rule delivers a teaching signal.

A ``Tap`` is the identity in plain use. While a rule trains or measures, it lends
each tap a *capture* function for one forward pass: the capture sees the block's
output ``h`` and returns either ``h`` itself (the graph stays whole) or
``h.detach()`` (a cut: the block above learns without computing dL/dh).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

Capture = Callable[["Tap", Tensor], Tensor]

# Modules after which `insert_taps` places a tap by default.
ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Mish,
    nn.ReLU6,
)


class Tap(nn.Module):
    """Marks a hidden layer output that receives a teaching signal."""

    def __init__(self) -> None:
        super().__init__()
        self._capture: Capture | None = None

    def forward(self, h: Tensor) -> Tensor:
        if self._capture is None:
            return h
        return self._capture(self, h)


def named_taps(model: nn.Module) -> list[tuple[str, Tap]]:
    """The taps of ``model`` with their module paths, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Tap)]


@contextmanager
def capturing(taps: Iterable[Tap], capture: Capture) -> Iterator[None]:
    """Lend ``capture`` to every tap for the duration of the block."""
    taps = list(taps)
    for tap in taps:
        tap._capture = capture
    try:
        yield
    finally:
        for tap in taps:
            tap._capture = None


def insert_taps(
    model: nn.Sequential,
    after: tuple[type[nn.Module], ...] | Iterable[int] = ACTIVATIONS,
) -> nn.Sequential:
    """A new ``nn.Sequential`` with a ``Tap`` after chosen modules.

    ``after`` is a tuple of module types (default: common activations) or an
    iterable of indices into ``model``. Modules are shared, not copied. A module
    at the very end gets no tap: the output is not a hidden layer.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            "insert_taps works on nn.Sequential; for other models place "
            "dflearn.Tap() modules in the forward yourself"
        )
    mods = list(model)
    if isinstance(after, tuple) and all(isinstance(t, type) for t in after):
        chosen = {i for i, m in enumerate(mods) if isinstance(m, after)}
    else:
        chosen = {int(i) % len(mods) for i in after}
    layers: list[nn.Module] = []
    for i, module in enumerate(mods):
        layers.append(module)
        if i in chosen and i < len(mods) - 1:
            layers.append(Tap())
    return nn.Sequential(*layers)
