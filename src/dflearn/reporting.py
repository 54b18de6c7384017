"""Tables and plots from saved runs: one run's curves, and a comparison of rules over seeds.

Everything here reads the files a run writes (``config.toml``, ``metrics.jsonl``,
``summary.json``), so ``dflearn compare`` and ``dflearn report`` build the same table from
the same runs. Plots use matplotlib's object API with the Agg canvas: no pyplot state, no
display needed.
"""

from __future__ import annotations

import io as _bytes_io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dflearn import io
from dflearn.config import load_toml

__all__ = [
    "ReportError",
    "RunRecord",
    "find_runs",
    "load_run",
    "summarize",
    "format_table",
    "format_angle_table",
    "plot_run",
    "plot_comparison",
    "write_report",
]

# Config keys that tell runs apart without making them different experiments.
_NOT_IDENTITY = {"seed", "out", "device", "data_dir", "download", "workers", "align_every"}
# Rules listed in this order in tables and legends; others follow, sorted.
_RULE_ORDER = ("bp", "dfa", "las", "ltas", "shallow")


class ReportError(ValueError):
    """Nothing to report, or a run directory that cannot be read."""


@dataclass
class RunRecord:
    """One saved run."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------
# Loading


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a run's result files."""
    return all((path / name).is_file() for name in ("config.toml", "summary.json"))


def load_run(path: str | Path) -> RunRecord:
    """Read the run in ``path``; a missing or corrupt file is a ``ReportError``."""
    path = Path(path)
    try:
        config = load_toml(path / "config.toml")
        summary = json.loads((path / "summary.json").read_text())
        metrics_file = path / "metrics.jsonl"
        lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
        metrics = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read the run in {path}: {exc}") from exc
    return RunRecord(path, config, summary, metrics)


def find_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """The runs in ``paths``: each path is a run directory or a directory containing runs
    (searched recursively). Raises ``ReportError`` when a path is missing or holds none."""
    runs: list[RunRecord] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ReportError(f"not a directory: {path}")
        found = [path] if is_run_dir(path) else _run_dirs_below(path)
        if not found:
            raise ReportError(f"no runs (directories with config.toml + summary.json) in {path}")
        runs += [load_run(p) for p in found]
    return runs


def _run_dirs_below(root: Path) -> list[Path]:
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        found += [child] if is_run_dir(child) else _run_dirs_below(child)
    return found


# ---------------------------------------------------------------------------------------
# Aggregating


def _label(config: dict[str, Any], varying: Sequence[str]) -> str:
    extras = [f"{key}={_plain(config.get(key))}" for key in varying if key != "rule"]
    return " ".join([str(config.get("rule")), *extras])


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _varying_keys(runs: Sequence[RunRecord]) -> list[str]:
    keys = sorted({k for r in runs for k in r.config} - _NOT_IDENTITY)
    return [k for k in keys if len({json.dumps(r.config.get(k)) for r in runs}) > 1]


def _rule_rank(rule: str) -> tuple[int, str]:
    return (_RULE_ORDER.index(rule) if rule in _RULE_ORDER else len(_RULE_ORDER), rule)


def group_runs(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by what sets them apart apart from the seed, in a fixed order.

    The order depends only on the runs (rule order, then label; seeds ascending), so any
    two listings of the same runs give the same table.
    """
    varying = _varying_keys(runs)
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(_label(run.config, varying), []).append(run)
    ordered = sorted(groups.items(), key=lambda kv: (_rule_rank(kv[1][0].config["rule"]), kv[0]))
    return {label: sorted(rs, key=lambda r: r.config.get("seed", 0)) for label, rs in ordered}


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None, 0
    std = statistics.stdev(finite) if len(finite) > 1 else None
    return statistics.fmean(finite), std, len(finite)


def _tap_means(runs: Sequence[RunRecord]) -> dict[str, float | None]:
    taps: dict[str, list[float | None]] = {}
    for run in runs:
        for tap, angle in (run.summary.get("angles") or {}).items():
            taps.setdefault(tap, []).append(angle)
    return {tap: _mean_std(values)[0] for tap, values in taps.items()}


def summarize(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per group: accuracies as mean and sample std over seeds, angles, timing."""
    rows = []
    for label, group in group_runs(runs).items():
        stats = {
            key: _mean_std([r.summary.get(key) for r in group])
            for key in ("final_test_acc", "best_test_acc", "mean_angle", "seconds_per_epoch")
        }
        statuses = [r.summary.get("status", "unknown") for r in group]
        rows.append(
            {
                "label": label,
                "rule": group[0].config.get("rule"),
                "runs": len(group),
                "seeds": [r.config.get("seed") for r in group],
                "not_completed": {s: statuses.count(s) for s in set(statuses) if s != "completed"},
                **{f"{key}_mean": m for key, (m, _, _) in stats.items()},
                **{f"{key}_std": s for key, (_, s, _) in stats.items()},
                "tap_angles": _tap_means(group),
                "paths": [str(r.path) for r in group],
            }
        )
    return rows


# ---------------------------------------------------------------------------------------
# Tables


def _pm(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table (Markdown): accuracies in %, mean ± sample std over seeds."""
    body = []
    for row in rows:
        runs = str(row["runs"])
        if row["not_completed"]:
            runs += " (" + ", ".join(f"{n} {s}" for s, n in sorted(row["not_completed"].items()))
            runs += ")"
        body.append(
            [
                row["label"],
                runs,
                _pm(row["final_test_acc_mean"], row["final_test_acc_std"], 100),
                _pm(row["best_test_acc_mean"], row["best_test_acc_std"], 100),
                _pm(row["mean_angle_mean"], row["mean_angle_std"], digits=1),
                _pm(row["seconds_per_epoch_mean"], None, digits=2),
            ]
        )
    header = [
        "rule",
        "runs",
        "final test acc (%)",
        "best test acc (%)",
        "mean angle (°)",
        "s/epoch",
    ]
    return _markdown(header, body)


def format_angle_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per-tap angle at the end of training (degrees, mean over seeds), one row per group."""
    taps = list(dict.fromkeys(t for row in rows for t in row["tap_angles"]))
    if not taps:
        return ""
    body = [
        [row["label"], *(_pm(row["tap_angles"].get(t), None, digits=1) for t in taps)]
        for row in rows
    ]
    return _markdown(["rule", *taps], body)


# ---------------------------------------------------------------------------------------
# Plots


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    buffer = _bytes_io.BytesIO()
    # Fixed margins (set per figure) rather than bbox_inches="tight", which draws twice
    fig.savefig(buffer, format="png", dpi=110)
    io.atomic_write_bytes(path, buffer.getvalue())


def _style(ax: Any) -> None:
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are counts


def _finite(values: Iterable[Any]) -> list[float]:
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def plot_run(
    out: str | Path,
    metrics: Sequence[dict[str, Any]],
    align_log: Sequence[dict[str, Any]] = (),
) -> list[Path]:
    """``accuracy.png`` (accuracy and loss per epoch) and ``alignment.png`` (angle per tap)
    of one run in ``out``; returns the files written (none before the first epoch)."""
    out = Path(out)
    if not metrics:
        return []
    written = [out / "accuracy.png"]
    _save(_run_accuracy_figure(metrics), written[0])
    fig = _run_alignment_figure(metrics, align_log)
    if fig is not None:
        written.append(out / "alignment.png")
        _save(fig, written[1])
    return written


def _run_accuracy_figure(metrics: Sequence[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.08, right=0.98, wspace=0.25, bottom=0.13)
    acc, loss = fig.subplots(1, 2)
    epochs = [m["epoch"] for m in metrics]
    for split in ("train", "val", "test"):
        if f"{split}_acc" in metrics[-1]:
            acc.plot(epochs, [100 * m[f"{split}_acc"] for m in metrics], marker=".", label=split)
            loss.plot(epochs, _finite(m[f"{split}_loss"] for m in metrics), marker=".", label=split)
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for ax in (acc, loss):
        _style(ax)
        ax.legend()
    return fig


def _run_alignment_figure(
    metrics: Sequence[dict[str, Any]], align_log: Sequence[dict[str, Any]]
) -> Figure | None:
    # Per-step measurements when there are any (finer), else the epoch-end ones
    points = align_log or metrics
    x_key, x_label = ("global_step", "step") if align_log else ("epoch", "epoch")
    taps = list(dict.fromkeys(t for p in points for t in p.get("angles", {})))
    if not any(_has_finite(p.get("angles", {})) for p in points):
        return None
    fig = Figure(figsize=(6, 4))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13)
    ax = fig.subplots()
    for tap in taps:
        values = _finite(p.get("angles", {}).get(tap) for p in points)
        ax.plot([p[x_key] for p in points], values, marker=".", label=tap)
    ax.axhline(90, color="grey", lw=0.8, ls="--")
    ax.set(xlabel=x_label, ylabel="angle to BP gradient (°)", title="alignment per tap")
    _style(ax)
    ax.legend(fontsize="small")
    return fig


def _has_finite(angles: dict[str, Any]) -> bool:
    return any(v is not None and math.isfinite(v) for v in angles.values())


def _mean_curve(runs: Sequence[RunRecord], get: Any) -> tuple[list[int], list[float], list[float]]:
    """Epochs and per-epoch mean/std of ``get(metric row)`` over ``runs``."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for m in run.metrics:
            value = get(m)
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(m["epoch"], []).append(value)
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def plot_comparison(out: str | Path, runs: Sequence[RunRecord]) -> list[Path]:
    """``accuracy.png`` (test accuracy, mean ± std over seeds) and ``alignment.png`` (one
    panel per tap) comparing the groups of ``runs``; returns the files written."""
    out = Path(out)
    groups = group_runs(runs)
    written = [out / "accuracy.png"]
    _save(_comparison_accuracy_figure(groups), written[0])
    fig = _comparison_alignment_figure(groups)
    if fig is not None:
        written.append(out / "alignment.png")
        _save(fig, written[1])
    return written


def _comparison_accuracy_figure(groups: dict[str, list[RunRecord]]) -> Figure:
    fig = Figure(figsize=(6, 4))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13)
    ax = fig.subplots()
    for label, runs in groups.items():
        epochs, mean, std = _mean_curve(runs, lambda m: 100 * m["test_acc"])
        ax.plot(epochs, mean, marker=".", label=label)
        ax.fill_between(
            epochs,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            alpha=0.2,
        )
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy (mean ± std)")
    _style(ax)
    ax.legend(fontsize="small")
    return fig


def _comparison_alignment_figure(groups: dict[str, list[RunRecord]]) -> Figure | None:
    taps = list(
        dict.fromkeys(
            t
            for runs in groups.values()
            for r in runs
            for m in r.metrics
            for t in m.get("angles", {})
        )
    )
    if not taps:
        return None
    fig = Figure(figsize=(4 * len(taps), 3.5))
    fig.subplots_adjust(left=0.16 / len(taps), right=0.98, bottom=0.15, wspace=0.3)
    axes = fig.subplots(1, len(taps), squeeze=False)[0]
    for ax, tap in zip(axes, taps, strict=True):
        for label, runs in groups.items():
            epochs, mean, _ = _mean_curve(runs, lambda m, t=tap: (m.get("angles") or {}).get(t))
            if epochs:
                ax.plot(epochs, mean, marker=".", label=label)
        ax.axhline(90, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="epoch", ylabel="angle to BP gradient (°)", title=f"tap {tap}")
        _style(ax)
    axes[0].legend(fontsize="small")
    return fig


# ---------------------------------------------------------------------------------------
# The report


def write_report(out: str | Path, runs: Sequence[RunRecord]) -> str:
    """Write ``summary.md``, ``summary.json`` and the comparison plots to ``out``; returns
    the table (as printed by the CLI)."""
    out = Path(out)
    rows = summarize(runs)
    table = format_table(rows)

    # Markdown: the table, the per-tap angles, and where each group's runs are
    parts = [
        "# dflearn comparison",
        "",
        table,
        "",
        "Accuracies: mean ± sample std over seeds; angles: end of training.",
        "",
    ]
    angles = format_angle_table(rows)
    if angles:
        parts += ["## Angle to the BP gradient per tap (°)", "", angles, ""]
    parts += ["## Runs", ""]
    parts += [f"- {row['label']}: " + ", ".join(row["paths"]) for row in rows]
    io.atomic_write_text(out / "summary.md", "\n".join(parts) + "\n")

    io.atomic_write_json(
        out / "summary.json",
        {
            "groups": rows,
            "runs": [{"path": str(r.path), **r.summary} for r in runs],
        },
    )
    plot_comparison(out, runs)
    return table
