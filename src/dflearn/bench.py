"""Step-time benchmark of the learning rules (the ``dflearn bench`` subcommand).

One *step* is ``rule.step(x, y, adam)``: forward, the rule's backward call(s) and the
optimizer step. The machines this runs on are shared and noisy (one timing can be off by
40 %), so the method is built to compare rules rather than to time them in isolation:

* every variant of a model is built once, from the same seed (same weights);
* each variant is warmed up, then the rules are timed in *rounds*: every round times every
  variant once, in a freshly shuffled (seeded) order, on the same batch;
* a variant's ratio to BP is taken *per round* (its time / BP's time in the same round),
  so a slow spell of the machine hits both sides; the report gives the median of those
  ratios and their interquartile range.

:func:`benchmark` does the work and only logs; :func:`run` is the command line front end.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from . import models as model_zoo
from .io import atomic_write_json
from .registry import UnknownNameError
from .rules import Rule, create_rule

log = logging.getLogger(__name__)

MB = 2**20
CIFAR = (3, 32, 32)

# Benchmark models: (model family, options). "scale" (tests, smoke runs) shrinks them.
MODEL_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp-784": ("mlp", {"input_shape": (1, 28, 28), "num_classes": 10, "hidden": (1024, 1024)}),
    "mlp-3072": ("mlp", {"input_shape": CIFAR, "num_classes": 10, "hidden": (4096,) * 3}),
    "convnet": ("convnet", {"input_shape": CIFAR, "num_classes": 10}),
    "convnet-bn": ("convnet-bn", {"input_shape": CIFAR, "num_classes": 10}),
    "resnet18": ("resnet18", {"input_shape": CIFAR, "num_classes": 10, "stem": "cifar"}),
}

# Benchmark variants: (registered rule, options).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "bp": ("bp", {}),
    "dfa": ("dfa", {}),
    "las": ("las", {"schedule": "fused"}),
    "las-two-pass": ("las", {"schedule": "two-pass"}),
    "ltas": ("ltas", {"schedule": "fused"}),
}

BASELINE = "bp"
# Extra per-round ratios: variant -> the variant it is compared with.
PAIRS = {"las": "las-two-pass", "ltas": "las-two-pass"}

# Targets the lead checks by hand: (models, variant, reference, largest ratio allowed).
TARGETS = (
    (("mlp-784", "mlp-3072"), "dfa", "bp", 0.85),
    (("mlp-784", "mlp-3072"), "las", "bp", 0.85),
    (("mlp-784", "mlp-3072"), "las", "las-two-pass", 0.85),
    (("convnet", "convnet-bn", "resnet18"), "las", "bp", 1.10),
)

# How Adam runs: "default" is what torch.optim.Adam(params) picks (the trainer's choice);
# on CPU that is a per-tensor loop whose temporaries cost ~40 % of an MLP step.
ADAM_IMPLS = ("default", "foreach", "fused")

BATCHES = 4  # distinct random batches cycled through, so no batch is learnt by heart
MIN_ROUNDS = 3  # a time budget never cuts a model below this many rounds

TIMING_METHOD = {
    "cuda": "torch.cuda.Event elapsed time, device synchronised before each timing",
    "cpu": "time.perf_counter around the step(s)",
}
MEMORY_METHOD = {
    "cuda": (
        "peak_mb: torch.cuda.max_memory_allocated during one step minus what was allocated "
        "before it (grads of this variant freed first), plus this variant's parameters, "
        "buffers and Adam state"
    ),
    "cpu": (
        "peak_mb (estimate): parameters + buffers + grads + Adam state + the peak of "
        "distinct storages held live for backward during one step (saved_tensors_hooks); "
        "omits transient workspace and intermediates autograd does not save"
    ),
}


@dataclass
class _Variant:
    """One rule under test, with its optimizer."""

    name: str
    rule: Rule
    optimizer: torch.optim.Optimizer


# ---------------------------------------------------------------------------- library


def benchmark(
    models: Sequence[str] = tuple(MODEL_SPECS),
    rules: Sequence[str] = tuple(VARIANTS),
    repeats: int = 20,
    warmup: int = 3,
    batch_size: int = 128,
    device: str = "auto",
    *,
    threads: int | None = None,
    seed: int = 0,
    steps_per_round: int = 1,
    max_seconds: float | None = None,
    scale: float = 1.0,
    adam: str = "default",
) -> dict[str, Any]:
    """Time full training steps of ``rules`` on ``models``; never prints.

    ``repeats`` rounds per model (each times every variant once, shuffled), after
    ``warmup`` untimed rounds. ``steps_per_round`` steps make one timing. ``max_seconds``
    caps each model's timed rounds (at least 3 are run). ``threads`` sets
    ``torch.set_num_threads`` for the run. ``scale`` < 1 shrinks the models (hidden
    widths, image side) for tests. ``adam`` is "default", "foreach" or "fused" (the
    implementation torch.optim.Adam uses). Returns ``{model: {variant: stats}, "meta": {...}}``.
    """
    models, rules = check_names(models, rules)
    _check_settings(repeats, warmup, batch_size, steps_per_round, scale, adam)
    dev = resolve_device(device)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    results: dict[str, Any] = {}
    with _threads(threads), torch.random.fork_rng(devices=_cuda_indices(dev)):
        load_before = _warn_if_busy(dev)
        for name in models:
            results[name] = _bench_model(
                name, rules, dev, repeats=repeats, warmup=warmup, batch_size=batch_size,
                seed=seed, steps=steps_per_round, max_seconds=max_seconds, scale=scale, adam=adam,
            )  # fmt: skip
        meta = _meta(dev, models, rules, adam)
    meta.update(
        repeats=repeats, warmup=warmup, batch_size=batch_size, steps_per_round=steps_per_round,
        max_seconds=max_seconds, seed=seed, scale=scale, started=started.isoformat(),
        elapsed_s=time.perf_counter() - clock, load_before=load_before, load_after=_load(),
    )  # fmt: skip
    meta["targets"] = check_targets(results)
    results["meta"] = meta
    return results


def check_names(models: Sequence[str], rules: Sequence[str]) -> tuple[list[str], list[str]]:
    """Deduplicated model and variant names; an unknown or missing one raises
    ``UnknownNameError`` (a ``ValueError``) listing the valid names."""
    checked = []
    for kind, names, valid in (("model", models, MODEL_SPECS), ("rule", rules, VARIANTS)):
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in valid]
        if unknown or not names:
            what = ", ".join(map(repr, unknown)) or "none given"
            raise UnknownNameError(
                f"unknown benchmark {kind} {what}; valid {kind}s: {', '.join(valid)}"
            )
        checked.append(names)
    return checked[0], checked[1]


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``; CUDA must be available."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    return dev


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed targets that the results cover, each with its measured ratio."""
    out = []
    for target_models, variant, ref, limit in TARGETS:
        for model in target_models:
            entry = results.get(model, {}).get(variant)
            ratio = None if entry is None else entry.get(_ratio_key(ref))
            if ratio is not None:
                out.append({
                    "model": model, "variant": variant, "reference": ref, "limit": limit,
                    "ratio": ratio, "met": ratio <= limit,
                })  # fmt: skip
    return out


# -------------------------------------------------------------------------- per model


def _bench_model(name: str, rules: list[str], dev: torch.device, **opts: Any) -> dict[str, Any]:
    """Build every variant of ``name``, warm up, time interleaved rounds, summarise."""
    log.info("%s: building %s", name, ", ".join(rules))
    variants = [_build(name, rule, dev, opts) for rule in rules]
    shape = variants[0].rule.input_shape
    batches = _batches(shape, variants[0].rule.num_classes, opts["batch_size"], dev, opts["seed"])
    order = random.Random(opts["seed"])
    for r in range(opts["warmup"]):
        _round(variants, batches[r % len(batches)], order, dev, opts["steps"])
    memory = {v.name: _memory(v, batches[0], dev) for v in variants}
    times = _timed_rounds(name, variants, batches, order, dev, opts)
    stats = {v.name: _summary(times, v.name, memory[v.name]) for v in variants}
    del variants  # free this model's variants before the next model is built
    gc.collect()
    return stats


def _build(model: str, variant: str, dev: torch.device, opts: dict[str, Any]) -> _Variant:
    """One variant: the model from the seed (same weights for every variant), its rule."""
    family, options = _scaled(MODEL_SPECS[model], opts["scale"])
    rule_name, rule_options = VARIANTS[variant]
    torch.manual_seed(opts["seed"])
    net = model_zoo.create(family, **options).to(dev)
    rule = create_rule(rule_name, net, seed=opts["seed"], **rule_options)
    rule.train()
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[opts["adam"]]
    return _Variant(variant, rule, torch.optim.Adam(rule.parameters(), **impl))


def _scaled(spec: tuple[str, dict[str, Any]], scale: float) -> tuple[str, dict[str, Any]]:
    """The model spec with hidden widths (MLPs) or image side (conv nets) scaled."""
    family, options = spec
    options = dict(options)
    if scale == 1.0:
        return family, options
    if "hidden" in options:
        options["hidden"] = tuple(max(1, round(w * scale)) for w in options["hidden"])
    else:
        # 16 pixels: the smallest side the conv net's three pooling stages accept.
        c, h, w = options["input_shape"]
        options["input_shape"] = (c, max(16, round(h * scale)), max(16, round(w * scale)))
    return family, options


def _batches(
    shape: Sequence[int], classes: int, batch_size: int, dev: torch.device, seed: int
) -> list[tuple[Tensor, Tensor]]:
    """A few seeded random batches, made up front so the timings exclude data loading."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, *shape, generator=gen).to(dev),
            torch.randint(0, classes, (batch_size,), generator=gen).to(dev),
        )
        for _ in range(BATCHES)
    ]


def _timed_rounds(name, variants, batches, order, dev, opts) -> dict[str, list[float]]:
    """Seconds per step of every variant, one entry per round."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    clock = time.perf_counter()
    for r in range(opts["repeats"]):
        took = _round(variants, batches[r % len(batches)], order, dev, opts["steps"])
        for key, seconds in took.items():
            times[key].append(seconds)
        log.info(
            "%s: round %d/%d  %s", name, r + 1, opts["repeats"],
            "  ".join(f"{k} {1e3 * s:.1f}ms" for k, s in took.items()),
        )  # fmt: skip
        spent = time.perf_counter() - clock
        budget = opts["max_seconds"]
        if budget is not None and spent >= budget and r + 1 >= MIN_ROUNDS:
            log.info("%s: time budget of %.0fs spent after %d rounds", name, budget, r + 1)
            break
    return times


def _round(
    variants: list[_Variant],
    batch: tuple[Tensor, Tensor],
    order: random.Random,
    dev: torch.device,
    steps: int,
) -> dict[str, float]:
    """Time every variant once, in a shuffled order; seconds per step by variant."""
    # Collect garbage between rounds, not inside a timing.
    gc.collect()
    shuffled = list(variants)
    order.shuffle(shuffled)
    x, y = batch
    took = {}
    for v in shuffled:
        took[v.name] = _time(lambda v=v: v.rule.step(x, y, v.optimizer), dev, steps)
    return took


def _time(step: Callable[[], object], dev: torch.device, steps: int) -> float:
    """Mean seconds per call of ``step`` over ``steps`` calls."""
    if dev.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(dev)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / steps
    clock = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - clock) / steps


# --------------------------------------------------------------------------- memory


def _memory(v: _Variant, batch: tuple[Tensor, Tensor], dev: torch.device) -> dict[str, float]:
    """Memory of one step of ``v`` in MB; see ``MEMORY_METHOD``."""
    x, y = batch
    state = _state_bytes(v)
    grads = sum(_nbytes(p) for p in v.rule.parameters() if p.requires_grad)
    tracker = _SavedTracker({_storage_key(p) for p in v.rule.parameters()})
    if dev.type == "cuda":
        # Drop this variant's grads so that the step's new grads count in its delta.
        v.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        v.rule.step(x, y, v.optimizer)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before + state
        # A second step measures what autograd saves, for comparison with CPU runs.
        with tracker.hooks():
            v.rule.step(x, y, v.optimizer)
    else:
        with tracker.hooks():
            v.rule.step(x, y, v.optimizer)
        peak = state + grads + tracker.peak
    return {
        "peak_mb": peak / MB,
        "saved_mb": tracker.peak / MB,
        "state_mb": state / MB,
        "feedback_mb": _feedback_bytes(v.rule) / MB,
    }


def _state_bytes(v: _Variant) -> int:
    """Parameters, buffers and optimizer state of one variant (model and heads)."""
    tensors = [*v.rule.parameters(), *v.rule.buffers()]
    tensors += [t for s in v.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(_nbytes(t) for t in tensors)


def _feedback_bytes(rule: Rule) -> int:
    """Bytes of the rule's feedback: parameters and buffers of its heads."""
    return sum(_nbytes(t) for t in [*rule.heads.parameters(), *rule.heads.buffers()])


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Saved:
    """A tensor saved for backward; tells the tracker when autograd lets it go."""

    __slots__ = ("tensor", "key", "tracker")

    def __init__(self, tensor: Tensor, key: int, tracker: _SavedTracker) -> None:
        self.tensor, self.key, self.tracker = tensor, key, tracker

    def __del__(self) -> None:
        self.tracker.release(self.key)


class _SavedTracker:
    """Peak bytes of distinct storages that autograd holds for backward.

    Parameter storages are excluded: they are counted once, as state.
    """

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.count: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def pack(self, t: Tensor) -> object:
        key = _storage_key(t)
        if key in self.exclude or key == 0:
            return t
        if self.count.get(key, 0) == 0:
            self.size[key] = t.untyped_storage().nbytes()
            self.live += self.size[key]
            self.peak = max(self.peak, self.live)
        self.count[key] = self.count.get(key, 0) + 1
        return _Saved(t, key, self)

    def release(self, key: int) -> None:
        self.count[key] -= 1
        if self.count[key] == 0:
            self.live -= self.size[key]

    @contextmanager
    def hooks(self) -> Iterator[None]:
        unpack = lambda p: p.tensor if isinstance(p, _Saved) else p  # noqa: E731
        with torch.autograd.graph.saved_tensors_hooks(self.pack, unpack):
            yield


# -------------------------------------------------------------------------- summary


def _summary(times: dict[str, list[float]], name: str, memory: dict[str, float]) -> dict:
    """Time, ratio and memory statistics of one variant."""
    mine = times[name]
    q25, q75 = _quantile(mine, 0.25), _quantile(mine, 0.75)
    out: dict[str, Any] = {
        "median_s": _quantile(mine, 0.5),
        "iqr_s": q75 - q25,
        "q25_s": q25,
        "q75_s": q75,
        "min_s": min(mine),
        "max_s": max(mine),
        "rounds": len(mine),
        "times_s": list(mine),
    }
    out.update(_ratio_stats(mine, times.get(BASELINE), BASELINE))
    if name in PAIRS and PAIRS[name] in times:
        out.update(_ratio_stats(mine, times[PAIRS[name]], PAIRS[name]))
    out.update(memory)
    return out


def _ratio_key(reference: str) -> str:
    return f"ratio_to_{reference.replace('-', '_')}"


def _ratio_stats(mine: list[float], ref: list[float] | None, reference: str) -> dict:
    """Median, IQR and range of the per-round ratios ``mine / ref`` (None without ref)."""
    key = _ratio_key(reference)
    if ref is None:
        return {key: None, f"{key}_iqr": None, f"{key}_range": None}
    ratios = [a / b for a, b in zip(mine, ref, strict=True)]
    return {
        key: _quantile(ratios, 0.5),
        f"{key}_iqr": [_quantile(ratios, 0.25), _quantile(ratios, 0.75)],
        f"{key}_range": [min(ratios), max(ratios)],
    }


def _quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty sequence."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# ----------------------------------------------------------------------- machine info


def _meta(dev: torch.device, models: list[str], rules: list[str], adam: str) -> dict[str, Any]:
    """What was run, where, and how it was measured."""
    meta: dict[str, Any] = {
        "device": dev.type,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "models": models,
        "rules": rules,
        "optimizer": f"torch.optim.Adam, default hyperparameters, implementation {adam}",
        "adam": adam,
        "timing_method": TIMING_METHOD[dev.type],
        "ratio_method": "per round: variant time / reference time in the same round; "
        "median over rounds, IQR and range given",
        "memory_method": MEMORY_METHOD[dev.type],
        "feedback_method": "feedback_mb: numel * element_size over rule.heads parameters "
        "and buffers",
    }
    if dev.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(dev)
    return meta


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the system tells them."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def _warn_if_busy(dev: torch.device) -> list[float] | None:
    # Oversubscribed CPUs make multi-threaded torch wait at every parallel region.
    load = _load()
    cores = os.cpu_count() or 1
    if dev.type == "cpu" and load and load[0] > cores / 2 and torch.get_num_threads() > 1:
        log.warning(
            "load average %.1f on %d cores with %d torch threads: timings will be slow "
            "and noisy; consider --threads 1", load[0], cores, torch.get_num_threads(),
        )  # fmt: skip
    return load


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_indices(dev: torch.device) -> list[int]:
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block, then restore it."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_settings(repeats, warmup, batch_size, steps, scale, adam) -> None:
    if repeats < 1 or warmup < 0 or batch_size < 1 or steps < 1:
        raise ValueError(
            "need repeats >= 1, warmup >= 0, batch_size >= 1 and steps_per_round >= 1, got "
            f"{repeats}, {warmup}, {batch_size}, {steps}"
        )
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if adam not in ADAM_IMPLS:
        raise ValueError(f"adam must be one of {', '.join(ADAM_IMPLS)}, got {adam!r}")


# --------------------------------------------------------------------------- report


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table, with machine info and target checks."""
    meta = results["meta"]
    lines = [
        f"device {meta['device']}{' (' + meta['gpu'] + ')' if 'gpu' in meta else ''}  "
        f"cpu {meta['cpu']}  cores {meta['cores']}  threads {meta['threads']}  "
        f"torch {meta['torch']}",
        f"batch {meta['batch_size']}  rounds <= {meta['repeats']}  warmup {meta['warmup']}  "
        f"steps/round {meta['steps_per_round']}  seed {meta['seed']}  adam {meta['adam']}  "
        f"load avg {_fmt_load(meta['load_before'])} -> {_fmt_load(meta['load_after'])}",
        "ratios: per-round variant/reference time, median [IQR]",
        "",
        f"{'model':<11} {'rule':<13} {'ms/step':>9} {'IQR ms':>8} {'n':>3} "
        f"{'x bp [IQR]':>19} {'x two-pass [IQR]':>19} {'peak MB':>8} {'fb MB':>7}",
    ]
    for model, table in results.items():
        if model == "meta":
            continue
        for rule, s in table.items():
            lines.append(
                f"{model:<11} {rule:<13} {1e3 * s['median_s']:>9.1f} {1e3 * s['iqr_s']:>8.1f} "
                f"{s['rounds']:>3} {_fmt_ratio(s, BASELINE):>19} "
                f"{_fmt_ratio(s, 'las-two-pass'):>19} {s['peak_mb']:>8.1f} "
                f"{s['feedback_mb']:>7.2f}"
            )
    lines += ["", f"peak MB: {meta['memory_method']}", "", "targets:"]
    for t in meta["targets"]:
        lines.append(
            f"  {t['model']:<11} {t['variant']} / {t['reference']} = {t['ratio']:.3f} "
            f"(<= {t['limit']:.2f}): {'met' if t['met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def _fmt_load(load: list[float] | None) -> str:
    return "?" if load is None else f"{load[0]:.1f}"


def _fmt_ratio(stats: dict[str, Any], reference: str) -> str:
    key = _ratio_key(reference)
    if stats.get(key) is None:
        return "-"
    lo, hi = stats[f"{key}_iqr"]
    return f"{stats[key]:.3f} [{lo:.2f}-{hi:.2f}]"


# ------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``dflearn bench`` options on ``parser``."""
    parser.add_argument(
        "--models", default=",".join(MODEL_SPECS),
        help=f"comma list of models (default: all: {', '.join(MODEL_SPECS)})",
    )  # fmt: skip
    parser.add_argument(
        "--rules", default=",".join(VARIANTS),
        help=f"comma list of variants (default: all: {', '.join(VARIANTS)})",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps-per-round", type=int, default=1, help="steps per timing (their mean is kept)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=None,
        help=f"time budget per model for the timed rounds (at least {MIN_ROUNDS} rounds)",
    )  # fmt: skip
    parser.add_argument(
        "--adam", choices=ADAM_IMPLS, default="default",
        help="Adam implementation (default: what torch.optim.Adam picks, as training does)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, metavar="FILE", help="write results as JSON")
    # Test and smoke-run only: shrink the models.
    parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed options, print the table; returns the exit code."""
    opt = _options(args)
    try:
        models, rules = check_names(_split(opt["models"]), _split(opt["rules"]))
        results = benchmark(
            models, rules, opt["repeats"], opt["warmup"], opt["batch_size"], opt["device"],
            threads=opt["threads"], seed=opt["seed"], steps_per_round=opt["steps_per_round"],
            max_seconds=opt["max_seconds"], scale=opt["scale"], adam=opt["adam"],
        )  # fmt: skip
    except ValueError as exc:  # unknown names, bad settings, no CUDA
        print(f"dflearn bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if opt["json"]:
        atomic_write_json(opt["json"], results)
        log.info("wrote %s", opt["json"])
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    # The CLI's subparsers leave options that were not given out of the namespace.
    defaults = vars(_defaults())
    return {key: getattr(args, key, value) for key, value in defaults.items()}


def _defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return parser.parse_args([])


def _split(text: str | Sequence[str]) -> list[str]:
    if not isinstance(text, str):
        return list(text)
    return [part.strip() for part in text.split(",") if part.strip()]
