"""The shared path of every learning rule.

A rule owns a model with taps. Each tap is either *whole* (autograd carries
dL/dh through it, as in BP) or *cut* (``h.detach()`` goes on, so the block
above never computes dL/dh). A cut tap may own a head; the head's VJP with the
output error ``e = dL/dy`` is the teaching signal injected at that tap. One
``torch.autograd.backward`` call then injects ``e`` at the output and every
teaching signal at its tap, and computes every weight gradient at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from ..alignment import flat_angle, mean_angle
from ..heads import make_head
from ..taps import Tap, capturing, named_taps

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Pass:
    """One forward pass under a rule, and what its backward call needs."""

    loss: Tensor  # the task loss, on a leaf copy of the output
    output: Tensor  # y, still attached to the model's graph
    taps: list[Tensor]  # each tap's input h, in call order
    signals: list[Tensor | None]  # teaching signal per tap (None: whole or none)
    tensors: list[Tensor]  # what the backward call starts from ...
    cotangents: list[Tensor | None]  # ... and the gradients it injects there


class Rule(nn.Module):
    """Base class of the learning rules: a model plus its feedback.

    Subclasses say which taps are cut (``_cut``), which of them own a head
    (``heads`` and ``_head_of``), and how heads learn (``head_loss``).
    """

    needs_taps = True  # BP alone trains models without taps
    schedule = "fused"  # heads (if trained) learn in the same backward call

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.seed = seed
        self._check_taps()
        self.input_shape = _input_shape(model, input_shape)
        self.num_classes = num_classes
        self.tap_names: list[str] = []
        self.tap_shapes: list[torch.Size] = []
        self._taps: list[Tap] = []  # in call order
        self._index: dict[Tap, int] = {}
        self._probe()

        # Default wiring is BP's: every tap whole, no heads.
        self.heads = nn.ModuleList()
        self._cut = [False] * len(self._taps)
        self._head_of: list[int | None] = [None] * len(self._taps)

    # ----------------------------------------------------------------- setup

    def _check_taps(self) -> None:
        if self.needs_taps and not named_taps(self.model):
            raise ValueError(
                f"rule {self.rule_name!r} needs a model with taps: place dflearn.Tap() "
                "after the hidden blocks, or wrap an nn.Sequential with "
                "dflearn.insert_taps(model)"
            )

    @property
    def rule_name(self) -> str:
        return getattr(self, "name", type(self).__name__.lower())

    def _probe(self) -> None:
        """Learn tap order, tap shapes and the class count from one forward."""
        names = {tap: name for name, tap in named_taps(self.model)}
        if not names:
            return
        if self.input_shape is None:
            self._taps = list(names)
            self._index = {tap: i for i, tap in enumerate(self._taps)}
            self.tap_names = list(names.values())
            return

        # Eval mode and no_grad: no running statistic moves, no graph.
        seen: list[tuple[Tap, torch.Size]] = []

        def record(tap: Tap, h: Tensor) -> Tensor:
            seen.append((tap, h.shape[1:]))
            return h

        param = next(self.model.parameters())
        x = torch.zeros(2, *self.input_shape, dtype=param.dtype, device=param.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), capturing(names, record):
                y = self.model(x)
        finally:
            self.model.train(was_training)
        self._set_probe(names, seen, y)

    def _set_probe(self, names: dict[Tap, str], seen: list, y: Tensor) -> None:
        taps = [tap for tap, _ in seen]
        if len(set(taps)) != len(taps):
            raise ValueError("a Tap module ran twice in one forward; give each place its own Tap")
        unused = [names[t] for t in names if t not in taps]
        if unused:
            raise ValueError(f"taps {unused} never ran in the forward; remove them")
        if y.dim() != 2:
            raise ValueError(f"the model must output (batch, classes) scores, got {tuple(y.shape)}")
        if self.num_classes not in (None, y.shape[1]):
            raise ValueError(f"num_classes={self.num_classes} but the model outputs {y.shape[1]}")
        self.num_classes = y.shape[1]
        self._taps = taps
        self._index = {tap: i for i, tap in enumerate(taps)}
        self.tap_names = [names[t] for t in taps]
        self.tap_shapes = [shape for _, shape in seen]

    def _require_shapes(self) -> None:
        if self._taps and not self.tap_shapes:
            raise ValueError(
                f"rule {self.rule_name!r} sizes its feedback from the tap shapes: pass "
                "input_shape=(per-sample shape) to create_rule, or set model.input_shape"
            )

    def _make_heads(
        self,
        shapes: list[torch.Size],
        feedback: str,
        kernel_size: int,
        pool: str,
        trainable: bool,
    ) -> nn.ModuleList:
        """One head per tap shape, on the model's device and dtype."""
        self._require_shapes()

        # Drawn on the CPU so that a seed gives the same feedback on any device.
        generator = torch.Generator().manual_seed(self.seed)
        param = next(self.model.parameters())
        heads = [
            make_head(
                tuple(shape), self.num_classes, feedback=feedback, kernel_size=kernel_size,
                pool=pool, trainable=trainable, generator=generator,
            ).to(device=param.device, dtype=param.dtype)
            for shape in shapes
        ]  # fmt: skip
        return nn.ModuleList(heads)

    # -------------------------------------------------------------- training

    def forward(self, x: Tensor) -> Tensor:
        """Plain inference: the model's own forward, taps are the identity."""
        return self.model(x)

    def step(
        self,
        x: Tensor,
        target: Tensor,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One training step: forward, one backward call, one optimizer step.

        Returns the detached loss and output.
        """
        loss_fn = loss_fn or F.cross_entropy
        optimizer.zero_grad(set_to_none=True)
        run = self._pass(x, target, loss_fn, with_heads=self.schedule == "fused")
        pairs = [(t, g) for t, g in zip(run.tensors, run.cotangents) if t.requires_grad]
        if not pairs:
            raise RuntimeError("nothing to train: no parameter above any tap requires grad")
        tensors, cotangents = zip(*pairs)
        torch.autograd.backward(list(tensors), list(cotangents))
        optimizer.step()
        return run.loss.detach(), run.output.detach()

    def head_loss(self, taps: list[Tensor], output: Tensor, target: Tensor) -> Tensor | None:
        """Loss that trains the heads (None: heads are fixed or absent)."""
        return None

    def _forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Forward with cuts; returns the output and each tap's input."""
        seen: list[Tensor | None] = [None] * len(self._taps)

        def capture(tap: Tap, h: Tensor) -> Tensor:
            i = self._index[tap]
            if seen[i] is not None:
                raise RuntimeError(f"tap {self.tap_names[i]!r} ran twice in one forward")
            seen[i] = h
            return h.detach() if self._cut[i] else h

        with capturing(self._taps, capture):
            y = self.model(x)
        if any(h is None for h in seen):
            raise RuntimeError("a tap did not run in this forward; taps must run every time")
        return y, seen

    def _pass(self, x: Tensor, target: Tensor, loss_fn: LossFn, with_heads: bool) -> Pass:
        y, taps = self._forward(x)

        # e = dL/dy through a leaf copy of y: a backward over the loss alone.
        y_leaf = y.detach().requires_grad_()
        loss = loss_fn(y_leaf, target)
        (e,) = torch.autograd.grad(loss, y_leaf)

        # Teaching signal at each cut tap that owns a head.
        signals: list[Tensor | None] = []
        for h, k in zip(taps, self._head_of):
            signals.append(None if k is None else self.heads[k].vjp(h.detach(), e))

        # One backward call: e at the output, each signal at its tap.
        tensors = [y] + [h for h, s in zip(taps, signals) if s is not None]
        cotangents = [e] + [s for s in signals if s is not None]
        extra = self.head_loss(taps, y, target) if with_heads else None
        if extra is not None:
            tensors.append(extra)
            cotangents.append(None)
        return Pass(loss, y, taps, signals, tensors, cotangents)

    # ------------------------------------------------------------- alignment

    def alignment(
        self,
        x: Tensor,
        target: Tensor,
        loss_fn: LossFn | None = None,
        per_layer: bool = False,
    ) -> dict[str, float]:
        """Angles (degrees) between this rule and BP on one batch.

        Per tap (default): the teaching signal against the true gradient
        dL/dh, per sample, averaged over the batch. With ``per_layer``: each
        trainable layer's gradient (weight and bias together) against BP's.
        Both passes see the same dropout masks; parameters, buffers, grads,
        optimizer and the global RNG are left as they were. NaN marks a
        signal with no direction (e.g. a tap that gets none).
        """
        loss_fn = loss_fn or F.cross_entropy
        layers = _layers(self.model)
        params = [p for _, group in layers for p in group]
        with _preserved(self.model) as replay:
            bp_taps, bp_params = self._bp_grads(x, target, loss_fn, params)
            replay()
            rule_taps, rule_params = self._rule_grads(x, target, loss_fn, params)
        if per_layer:
            return _layer_angles(layers, bp_params, rule_params)
        return {
            name: mean_angle(s, g) if s is not None and g is not None else float("nan")
            for name, s, g in zip(self.tap_names, rule_taps, bp_taps)
        }

    def teaching_signals(
        self, x: Tensor, target: Tensor, loss_fn: LossFn | None = None
    ) -> dict[str, Tensor | None]:
        """The teaching signal this rule sends to each tap for one batch.

        For a cut tap with a head, the head's VJP with e; for a whole tap, the
        gradient that reaches it from above; None where no signal arrives.
        State is left untouched, as in ``alignment``.
        """
        loss_fn = loss_fn or F.cross_entropy
        with _preserved(self.model):
            signals, _ = self._rule_grads(x, target, loss_fn, [])
        return dict(zip(self.tap_names, signals))

    def _bp_grads(self, x, target, loss_fn, params):
        # The reference: every tap whole, plain autograd.
        cut, self._cut = self._cut, [False] * len(self._taps)
        try:
            y, taps = self._forward(x)
        finally:
            self._cut = cut
        loss = loss_fn(y, target)
        return _grads([loss], [None], taps, params)

    def _rule_grads(self, x, target, loss_fn, params):
        run = self._pass(x, target, loss_fn, with_heads=False)
        whole = [
            h if s is None and not c else None for h, s, c in zip(run.taps, run.signals, self._cut)
        ]
        flowing, grads = _grads(run.tensors, run.cotangents, whole, params)
        taps = [s if s is not None else f for s, f in zip(run.signals, flowing)]
        return taps, grads


# ------------------------------------------------------------------ helpers


def _input_shape(model: nn.Module, given: Sequence[int] | None) -> tuple[int, ...] | None:
    shape = given if given is not None else getattr(model, "input_shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def _layers(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Trainable parameters grouped by the module that owns them."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(name.rpartition(".")[0], []).append(p)
    return list(groups.items())


def _grads(tensors, cotangents, taps, params):
    """Gradients at taps (None entries skipped) and params, via autograd.grad."""
    pairs = [(t, c) for t, c in zip(tensors, cotangents) if t.requires_grad]
    wanted = [h for h in taps if h is not None and h.requires_grad] + params
    if not wanted:
        return [None] * len(taps), []
    got = iter(
        torch.autograd.grad([t for t, _ in pairs], wanted, [c for _, c in pairs], allow_unused=True)
    )
    at_taps = [next(got) if h is not None and h.requires_grad else None for h in taps]
    return at_taps, [g if g is not None else torch.zeros_like(p) for g, p in zip(got, params)]


def _layer_angles(layers, bp, rule) -> dict[str, float]:
    out, i = {}, 0
    for name, group in layers:
        n = len(group)
        out[name] = flat_angle(rule[i : i + n], bp[i : i + n])
        i += n
    return out


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Run forwards in train mode without moving BatchNorm running statistics."""
    saved = [
        (
            m,
            {
                k: getattr(m, k).clone()
                for k in ("running_mean", "running_var", "num_batches_tracked")
                if getattr(m, k, None) is not None
            },
        )
        for m in model.modules()
        if isinstance(m, _NormBase) and m.track_running_stats
    ]
    try:
        yield
    finally:
        for module, buffers in saved:
            for k, v in buffers.items():
                getattr(module, k).copy_(v)


@contextmanager
def _preserved(model: nn.Module) -> Iterator[Callable[[], None]]:
    """Freeze running stats and fork the RNG; yields a function that rewinds
    the forked RNG, so a second pass draws the same dropout masks."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    with frozen_running_stats(model), torch.random.fork_rng(devices=devices):
        cpu = torch.get_rng_state()
        cuda = [torch.cuda.get_rng_state(d) for d in devices]

        def replay() -> None:
            torch.set_rng_state(cpu)
            for d, state in zip(devices, cuda):
                torch.cuda.set_rng_state(state, d)

        yield replay
