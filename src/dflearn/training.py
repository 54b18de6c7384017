"""The run loop: train one (rule, model, dataset) configuration, with checkpoints and metrics.

A run directory holds ``config.toml`` (the resolved config; ``--config`` accepts it back),
``metrics.jsonl`` (one line per epoch), ``alignment.jsonl`` (per-step angles, with
``align_every``), ``summary.json``, ``accuracy.png``/``alignment.png`` and ``checkpoint.pt``.

Resume design. ``checkpoint.pt`` only ever holds the state at an epoch boundary: at the start
(epoch 0, written before the first step) and after each completed epoch. An interruption
(SIGINT/SIGTERM, after the current step) or a NaN loss never writes model weights; an
interruption only re-saves the last boundary checkpoint with an ``interrupted`` marker (epoch
and step reached). ``--resume`` therefore always continues from a boundary: after a completed
epoch it carries on, after an interrupted one it re-runs that epoch from its start. Because
the boundary checkpoint restores every source of state (rule = model + feedback + heads,
optimizer, scheduler, global step, metrics, and the torch/CUDA/python/numpy RNGs plus the
train loader's shuffle generator), a resumed run replays exactly the steps an uninterrupted
run takes, and on CPU its metrics are bit-identical. This costs at most one epoch of repeated
work, and avoids what a mid-epoch checkpoint would need: skipping part of the loader's
permutation and restoring the augmentation RNG in the middle of an epoch.
"""

from __future__ import annotations

import logging
import math
import platform
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dflearn import io
from dflearn.config import (
    RESUME_MAY_CHANGE,
    ConfigError,
    RunConfig,
    default_out,
    from_mapping,
    load_toml,
    resume_conflicts,
    to_dict,
    to_toml,
    validate,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
ALIGNMENT_FILE = "alignment.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
ACCURACY_PLOT = "accuracy.png"
ALIGNMENT_PLOT = "alignment.png"
# What --overwrite deletes: only files a run writes, never anything else in the directory.
RUN_FILES = (
    CONFIG_FILE,
    METRICS_FILE,
    ALIGNMENT_FILE,
    SUMMARY_FILE,
    CHECKPOINT_FILE,
    ACCURACY_PLOT,
    ALIGNMENT_PLOT,
)
CHECKPOINT_FORMAT = 1

# The "paper" schedule: lr x 0.25 at these fractions of the epochs.
PAPER_MILESTONES = (0.50, 0.75, 0.89, 0.94)
PAPER_GAMMA = 0.25

# Reading the loss back from the GPU stalls the pipeline, so finiteness is checked (and the
# progress bar refreshed) every this many steps and at the end of each epoch. No checkpoint is
# ever written inside an epoch, so a late detection cannot save a NaN state.
SYNC_EVERY = 20

__all__ = [
    "RunDiverged",
    "RunInterrupted",
    "RunStopped",
    "StopFlag",
    "OutDirError",
    "build_summary",
    "load_checkpoint",
    "load_run_config",
    "make_optimizer",
    "make_scheduler",
    "paper_milestones",
    "resolve_device",
    "stop_on_signals",
    "train",
]


# ---------------------------------------------------------------------------------------
# Stopping


class StopFlag:
    """Asks a run to stop after its current step; set by a signal handler or a test."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        """Request a stop, recording the signal that asked for it."""
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


class RunStopped(Exception):
    """A run ended before its last epoch; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class RunInterrupted(RunStopped):
    """Stopped by a signal; the checkpoint holds the start of the interrupted epoch."""

    def __init__(self, signum: int, epoch: int, step: int, out: Path) -> None:
        self.signum, self.epoch, self.step, self.out = signum, epoch, step, out
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} in epoch {epoch} after step {step}; {out / CHECKPOINT_FILE}"
            f" holds the state at the start of epoch {epoch}. Continue with the same command "
            f"plus --resume (that epoch is re-run from its start)."
        )


class RunDiverged(RunStopped):
    """The training loss became NaN or infinite."""

    exit_code = 3  # = dflearn.cli.EXIT_DIVERGED

    def __init__(self, epoch: int, step: int, steps: int, out: Path) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(
            f"the training loss became NaN/inf in epoch {epoch} (by step {step} of {steps}); "
            f"the run is stopped. {out / CHECKPOINT_FILE} keeps the last good state (end of "
            f"epoch {epoch - 1}). Try a smaller --lr."
        )


class OutDirError(ConfigError):
    """The output directory cannot be used as asked."""


@contextmanager
def stop_on_signals(stop: StopFlag) -> Iterator[None]:
    """While active, SIGINT and SIGTERM set ``stop`` instead of killing the process.

    A second SIGINT raises ``KeyboardInterrupt`` at once, for a user who will not wait for
    the step to finish. Outside the main thread (where handlers cannot be installed) this
    does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        if stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(signum)
        log.warning("%s received: stopping after the current step", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------
# Building blocks


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked, but CUDA is not available; use cpu or auto")
    return torch.device(name)


def make_optimizer(cfg: RunConfig, params: Any) -> torch.optim.Optimizer:
    """Adam or SGD (with momentum) over ``params``, as ``cfg`` says."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def paper_milestones(epochs: int) -> list[int]:
    """Epochs after which the paper schedule decays the lr.

    Repeated milestones (few epochs) decay several times at once, so the final lr is always
    the paper's lr x 0.25**4; milestones at epoch 0 would never fire and are dropped.
    """
    return [m for m in (int(f * epochs) for f in PAPER_MILESTONES) if m >= 1]


def make_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The per-epoch lr scheduler of ``cfg.lr_schedule`` (None for ``none``)."""
    if cfg.lr_schedule == "paper":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, paper_milestones(cfg.epochs), gamma=PAPER_GAMMA
        )
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def build_rule(cfg: RunConfig) -> torch.nn.Module:
    """The model of ``cfg`` wrapped in its learning rule (on the CPU).

    ``schedule`` and ``feedback`` go only to rules that take them, so that one compare
    config can hold bp and las alike; a model the rule cannot train is a ``ConfigError``.
    """
    import dflearn
    from dflearn import datasets, models

    info = datasets.info(cfg.dataset)
    model_opts = {k: v for k, v in (("hidden", cfg.hidden), ("stem", cfg.stem)) if v is not None}
    model = models.create(
        cfg.model, input_shape=info.input_shape, num_classes=info.num_classes, **model_opts
    )

    # None means "the rule's own default" (e.g. las defaults to conv feedback)
    accepted = dflearn.rules.rule_options(cfg.rule)
    options: dict[str, Any] = {"seed": cfg.seed}
    for key in ("schedule", "feedback"):
        value = getattr(cfg, key)
        if value is not None and key in accepted:
            options[key] = value
        elif value is not None:
            log.info("rule %s takes no %s option; --%s %s ignored", cfg.rule, key, key, value)
    try:
        return dflearn.create_rule(cfg.rule, model, info.num_classes, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc


# ---------------------------------------------------------------------------------------
# RNG state


def _rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy arrays are not allowed by torch.load(weights_only=True); a tensor is
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has CUDA RNG state for %d GPUs; not restored", len(cuda))
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def _as_tuple(value: Any) -> Any:
    # random.setstate wants the nested tuples that a save/load may have turned into lists
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


# ---------------------------------------------------------------------------------------
# Output directory, checkpoints, summaries


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by a run, on the CPU (``weights_only``: no code is unpickled)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_run_config(out: str | Path) -> RunConfig | None:
    """The saved config of the run in ``out``, or None when there is none."""
    path = Path(out) / CONFIG_FILE
    return from_mapping(load_toml(path), source=str(path)) if path.is_file() else None


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Make ``out`` ready; returns the checkpoint to resume from, if any."""
    if resume and overwrite:
        raise OutDirError("--resume and --overwrite contradict each other; give one")
    busy = out.is_dir() and any(out.iterdir())
    if resume and (out / CHECKPOINT_FILE).is_file():
        return load_checkpoint(out / CHECKPOINT_FILE)
    if busy and resume:
        raise OutDirError(f"{out} has no {CHECKPOINT_FILE} to resume from; use --overwrite")
    if busy and not overwrite:
        raise OutDirError(
            f"output directory {out} is not empty; use --overwrite to replace the run there "
            "or --resume to continue it"
        )
    if busy:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    if resume:
        log.info("nothing to resume in %s: starting a new run", out)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _versions() -> dict[str, str]:
    import torchvision

    from dflearn import __version__

    return {
        "dflearn": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def mean_angle(angles: dict[str, float | None]) -> float | None:
    """Mean over taps of the finite angles; None when there are none (bp has no taps)."""
    finite = [a for a in angles.values() if a is not None and math.isfinite(a)]
    return sum(finite) / len(finite) if finite else None


def build_summary(
    cfg: RunConfig,
    metrics: list[dict[str, Any]],
    status: str,
    *,
    device: str = "",
    stopped: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` of a run from its config and its per-epoch metrics."""
    tests = [m["test_acc"] for m in metrics]
    best = max(range(len(tests)), key=tests.__getitem__) if tests else None
    last = metrics[-1] if metrics else {}
    seconds = [m["seconds"] for m in metrics]
    summary = {
        "rule": cfg.rule,
        "seed": cfg.seed,
        "schedule": cfg.schedule,
        "feedback": cfg.feedback,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "status": status,
        "epochs": cfg.epochs,
        "epochs_completed": len(metrics),
        "final_test_acc": last.get("test_acc"),
        "final_test_loss": last.get("test_loss"),
        "final_train_acc": last.get("train_acc"),
        "best_test_acc": tests[best] if best is not None else None,
        "best_epoch": metrics[best]["epoch"] if best is not None else None,
        "angles": last.get("angles", {}),
        "mean_angle": last.get("mean_angle"),
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "total_seconds": sum(seconds),
        "device": device,
        "versions": _versions(),
    }
    if "val_acc" in last:
        summary["final_val_acc"] = last["val_acc"]
        summary["best_val_acc"] = max(m["val_acc"] for m in metrics)
    if stopped is not None:
        summary["stopped"] = stopped
    return summary


# ---------------------------------------------------------------------------------------
# The trainer


@dataclass
class _Progress:
    """Where the loop is, for messages about an interruption."""

    epoch: int = 0
    step: int = 0


@dataclass
class _Trainer:
    """The live objects of one run and the loop over them."""

    cfg: RunConfig
    out: Path
    device: torch.device
    stop: StopFlag
    progress: bool
    rule: Any = None
    optimizer: Any = None
    scheduler: Any = None
    loaders: Any = None
    held: tuple[torch.Tensor, torch.Tensor] | None = None
    epoch: int = 0  # completed epochs
    global_step: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    align_log: list[dict[str, Any]] = field(default_factory=list)
    where: _Progress = field(default_factory=_Progress)

    # -- setup

    def build(self, rule: torch.nn.Module) -> None:
        """Take the freshly seeded and built ``rule``; create optimizer, scheduler, loaders
        and the alignment batch (always in this order: the RNG draws must repeat exactly)."""
        from dflearn import datasets

        self.rule = rule.to(self.device)
        self.optimizer = make_optimizer(self.cfg, self.rule.parameters())
        self.scheduler = make_scheduler(self.cfg, self.optimizer)
        self.loaders = datasets.loaders(
            self.cfg.dataset,
            root=self.cfg.data_dir,
            batch_size=self.cfg.batch_size,
            val_fraction=self.cfg.val_fraction,
            augment=self.cfg.augment,
            download=self.cfg.download,
            seed=self.cfg.seed,
            num_workers=self.cfg.workers,
            limit=self.cfg.limit,
        )

        # Angles are measured on one fixed test batch (no augmentation, same every time),
        # so that the curves show the rule changing, not the batch
        x, y = next(iter(self.loaders.test))
        self.held = (x.to(self.device), y.to(self.device))

    def start(self) -> None:
        """A new run: write its config and the epoch-0 checkpoint."""
        self._write_config()
        self._save_checkpoint()

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a boundary checkpoint (see the module docstring)."""
        self.rule.load_state_dict(ckpt["rule"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.global_step = ckpt["epoch"], ckpt["global_step"]
        self.metrics, self.align_log = list(ckpt["metrics"]), list(ckpt["alignment_log"])
        _set_rng_state(ckpt["rng"], self.loaders.train_generator)
        if ckpt.get("interrupted"):
            mark = ckpt["interrupted"]
            log.info(
                "run was interrupted in epoch %d at step %d: re-running epoch %d from its start",
                mark["epoch"],
                mark["step"],
                self.epoch + 1,
            )
        elif self.epoch:
            log.info("resuming after epoch %d", self.epoch)
        if self.epoch < self.cfg.epochs and self.cfg.lr_schedule != "none":
            saved = ckpt["config"]["epochs"]
            if saved != self.cfg.epochs:
                log.warning("lr schedule was set up for %d epochs and keeps that plan", saved)
        self._write_config()

    # -- the loop

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the summary."""
        try:
            for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
                self._run_epoch(epoch)
                # A signal during evaluation: stop at this boundary rather than one step on
                if self.stop and epoch < self.cfg.epochs:
                    raise RunInterrupted(self.stop.signum, epoch + 1, 0, self.out)
        except KeyboardInterrupt:
            # A hard interrupt (second Ctrl-C, or before our handler was in place): the
            # live state is mid-step and useless, but the boundary checkpoint is intact
            self._stopped(RunInterrupted(signal.SIGINT, *self._position(), self.out))
        except RunStopped as exc:
            self._stopped(exc)
        except Exception as exc:
            # A bug or an environment failure: leave a summary that says so, then let the
            # traceback through (the boundary checkpoint is still valid for --resume)
            epoch, step = self._position()
            failure = {"reason": type(exc).__name__, "message": str(exc), "epoch": epoch}
            self._write_results("failed", {**failure, "step": step})
            raise
        return self._finish("completed")

    def _position(self) -> tuple[int, int]:
        return self.where.epoch, self.where.step

    def _run_epoch(self, epoch: int) -> None:
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss, train_acc = self._train_steps(epoch)
        train_seconds = time.perf_counter() - started

        # Measure at the end of the epoch, then evaluate
        angles = self._alignment()
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": self.global_step,
            "train_loss": train_loss,
            "train_acc": train_acc,
        }
        row["test_loss"], row["test_acc"] = evaluate(self.rule, self.loaders.test, self.device)
        if self.loaders.val is not None:
            row["val_loss"], row["val_acc"] = evaluate(self.rule, self.loaders.val, self.device)
        row.update(
            angles=angles,
            mean_angle=mean_angle(angles),
            lr=lr,
            train_seconds=train_seconds,
            seconds=time.perf_counter() - started,
        )

        # Close the epoch: schedule, then a boundary checkpoint and the result files
        self.metrics.append(row)
        self.epoch = epoch
        if self.scheduler is not None:
            self.scheduler.step()
        self._save_checkpoint()
        self._write_results("running" if epoch < self.cfg.epochs else "completed")
        log.info(_epoch_line(row, self.cfg.epochs))

    def _train_steps(self, epoch: int) -> tuple[float, float]:
        """One pass over the training set; returns mean loss and accuracy."""
        self.rule.train()
        loader = self.loaders.train
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = tqdm(
            total=len(loader),
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            unit="step",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        self.where = _Progress(epoch, 0)
        with bar:
            for step, (x, y) in enumerate(loader, 1):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                loss, out = self.rule.step(x, y, self.optimizer)
                loss_sum += loss.detach() * len(y)
                correct += (out.argmax(1) == y).sum()
                seen += len(y)
                self.global_step += 1
                self.where.step = step
                bar.update()

                # Sync with the device only now and then (see SYNC_EVERY)
                if step % SYNC_EVERY == 0 or step == len(loader):
                    self._check_finite(loss_sum, epoch, step, len(loader))
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
                if self.cfg.align_every and self.global_step % self.cfg.align_every == 0:
                    self._log_step_alignment(epoch, step)
                if self.stop:
                    raise RunInterrupted(self.stop.signum, epoch, step, self.out)
        return loss_sum.item() / seen, correct.item() / seen

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int, steps: int) -> None:
        if not torch.isfinite(loss_sum).item():
            raise RunDiverged(epoch, step, steps, self.out)

    def _alignment(self) -> dict[str, float]:
        """Angles on the held batch; the RNG is forked so measuring never changes training."""
        x, y = self.held
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.rule.train()
            angles = self.rule.alignment(x, y)
        return {name: float(angle) for name, angle in angles.items()}

    def _log_step_alignment(self, epoch: int, step: int) -> None:
        angles = self._alignment()
        entry = {
            "epoch": epoch,
            "step": step,
            "global_step": self.global_step,
            "angles": angles,
            "mean_angle": mean_angle(angles),
        }
        self.align_log.append(entry)
        log.info(
            "step %d (epoch %d): mean angle %s",
            self.global_step,
            epoch,
            _fmt_angle(entry["mean_angle"]),
        )

    # -- endings

    def _stopped(self, exc: RunStopped) -> None:
        """Record why the run stopped, then re-raise ``exc`` for the caller."""
        stopped = {"reason": type(exc).__name__, "epoch": exc.epoch, "step": exc.step}
        if isinstance(exc, RunInterrupted):
            stopped["signal"] = signal.Signals(exc.signum).name
            self._mark_interrupted(stopped)
            status = "interrupted"
        else:
            status = "diverged"
        self._finish(status, stopped)
        raise exc

    def _mark_interrupted(self, mark: dict[str, Any]) -> None:
        # The boundary checkpoint stays the state to resume from; only the marker is added
        path = self.out / CHECKPOINT_FILE
        ckpt = load_checkpoint(path)
        ckpt["interrupted"] = mark
        io.atomic_torch_save(ckpt, path)

    def _finish(self, status: str, stopped: dict[str, Any] | None = None) -> dict[str, Any]:
        summary = self._write_results(status, stopped)
        from dflearn import reporting

        reporting.plot_run(self.out, self.metrics, self.align_log)
        return summary

    # -- files

    def _write_config(self) -> None:
        header = "dflearn run config; rerun with: dflearn train --config <this file>"
        io.atomic_write_text(self.out / CONFIG_FILE, to_toml(self.cfg, header))

    def _save_checkpoint(self) -> None:
        io.atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": to_dict(self.cfg),
                "epoch": self.epoch,
                # Boundary checkpoints only: the step within the epoch is always 0
                "step_in_epoch": 0,
                "global_step": self.global_step,
                "rule": self.rule.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "metrics": self.metrics,
                "alignment_log": self.align_log,
                "rng": _rng_state(self.loaders.train_generator),
                "interrupted": None,
            },
            self.out / CHECKPOINT_FILE,
        )

    def _write_results(self, status: str, stopped: dict[str, Any] | None = None) -> dict[str, Any]:
        io.atomic_write_jsonl(self.out / METRICS_FILE, self.metrics)
        if self.align_log:
            io.atomic_write_jsonl(self.out / ALIGNMENT_FILE, self.align_log)
        summary = build_summary(
            self.cfg, self.metrics, status, device=str(self.device), stopped=stopped
        )
        io.atomic_write_json(self.out / SUMMARY_FILE, summary)
        return summary


@torch.no_grad()
def evaluate(rule: torch.nn.Module, loader: Any, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``rule`` (in eval mode) over ``loader``."""
    rule.eval()
    # Sums stay on the device: one sync at the end instead of one per batch
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = rule(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
    rule.train()
    return loss_sum.item() / seen, correct.item() / seen


def _fmt_angle(angle: float | None) -> str:
    return "n/a" if angle is None else f"{angle:.1f}°"


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {100 * row['train_acc']:.2f}%  test loss {row['test_loss']:.4f} "
        f"acc {100 * row['test_acc']:.2f}%"
    )
    if "val_acc" in row:
        line += f"  val acc {100 * row['val_acc']:.2f}%"
    return line + f"  angle {_fmt_angle(row['mean_angle'])}  {row['seconds']:.1f}s"


# ---------------------------------------------------------------------------------------
# Entry point


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop: StopFlag | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) the training run ``cfg``; returns its summary.

    Raises ``ConfigError`` (bad config, busy output directory, model the rule cannot train)
    before any training, ``RunInterrupted`` when ``stop`` is set (by a signal) and
    ``RunDiverged`` on a NaN/inf loss; result files are written in every case.
    """
    validate(cfg)
    out = Path(cfg.out or default_out(cfg))
    cfg = cfg.replace(out=str(out))
    device = resolve_device(cfg.device)

    # Whatever can refuse the run (a model the rule cannot train, a busy directory, an
    # incompatible resume) does so before the output directory is touched. Seed first:
    # the model's initial weights come from the seed.
    _seed_everything(cfg.seed)
    rule = build_rule(cfg)
    ckpt = _prepare_out_dir(out, resume, overwrite)
    if ckpt is not None:
        done = _check_resumable(cfg, ckpt, out)
        if done is not None:
            return done

    # Build the rest, then start fresh or restore
    trainer = _Trainer(cfg, out, device, stop if stop is not None else StopFlag(), progress)
    trainer.build(rule)
    if ckpt is None:
        trainer.start()
    else:
        trainer.restore(ckpt)
    log.info("training %s on %s (%s) into %s", cfg.rule, cfg.dataset, trainer.device, out)
    return trainer.run()


def _check_resumable(cfg: RunConfig, ckpt: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """Refuse a resume that changes the run; returns the summary when nothing is left to do."""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise OutDirError(f"{out / CHECKPOINT_FILE} is not a dflearn checkpoint this can read")
    saved = from_mapping(ckpt["config"], source=str(out / CHECKPOINT_FILE))
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise ConfigError(
            "--resume continues the same run, but these settings differ: "
            + "; ".join(conflicts)
            + f". Only {', '.join(sorted(RESUME_MAY_CHANGE))} may change; "
            "use a new --out for a different run"
        )
    if ckpt["epoch"] > cfg.epochs:
        raise ConfigError(f"the run in {out} already has {ckpt['epoch']} epochs > --epochs")
    if ckpt["epoch"] == cfg.epochs:
        log.info("run in %s is already complete (%d epochs)", out, cfg.epochs)
        return build_summary(cfg, list(ckpt["metrics"]), "completed", device=_saved_device(out))
    return None


def _saved_device(out: Path) -> str:
    import json

    try:
        return json.loads((out / SUMMARY_FILE).read_text())["device"]
    except (OSError, ValueError, KeyError):
        return ""
