"""Tests of the run loop: atomic writes, config files, resume, interruption and divergence.

Runs go through ``dflearn.cli.main`` in-process on a tiny fake Fashion-MNIST (256 training
samples, batches of 32: 8 steps per epoch) with small MLPs.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from dflearn import cli, config, io, training
from dflearn.rules.base import Rule

TIMING = {"seconds", "train_seconds"}
STEPS_PER_EPOCH = 6  # 256 samples, a quarter held out for validation, batches of 32


def run_args(data: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    """A las run (two taps, trained heads, Adam) with a validation split and the paper lr
    schedule: every kind of state a resume must restore."""
    return [
        "train", "--rule", "las", "--hidden", "32,32", "--dataset", "fashion-mnist",
        "--data-dir", str(data), "--no-download", "--epochs", str(epochs),
        "--batch-size", "32", "--val-fraction", "0.25", "--lr", "0.003",
        "--seed", "3", "--out", str(out), "-q", *extra,
    ]  # fmt: skip


def numbers(out: Path) -> list[dict]:
    """The per-epoch metrics of a run without the timings."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def call_on_step(monkeypatch: pytest.MonkeyPatch, call: int, action) -> None:
    """Run ``action(rule)`` right after the ``call``-th training step (counted from 1)."""
    original = Rule.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == call:
            return action(self, result)
        return result

    monkeypatch.setattr(Rule, "step", step)


@pytest.fixture(scope="module")
def reference(fake_fashion_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Metrics of an uninterrupted 2-epoch run with the paper schedule."""
    out = tmp_path_factory.mktemp("reference") / "run"
    torch.set_num_threads(1)
    assert cli.main(run_args(fake_fashion_mnist, out, "--lr-schedule", "paper")) == 0
    return numbers(out)


# ---------------------------------------------------------------------------------------
# io


def test_atomic_write_failing_midway_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    io.atomic_write_json(target, {"old": True})
    with pytest.raises(RuntimeError, match="disk on fire"):
        with io.atomic_writer(target) as handle:
            handle.write('{"new": tr')
            raise RuntimeError("disk on fire")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_torch_save_killed_midway_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "checkpoint.pt"
    io.atomic_torch_save({"epoch": 1}, target)

    def partial_save(obj, handle):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_torch_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert training.load_checkpoint(target) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_atomic_files_get_normal_permissions_and_json_has_no_nan(tmp_path: Path) -> None:
    io.atomic_write_jsonl(tmp_path / "m.jsonl", [{"a": math.nan}, {"a": 1.5}])
    assert (tmp_path / "m.jsonl").read_text() == '{"a": null}\n{"a": 1.5}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------
# config


def test_config_toml_round_trip(tmp_path: Path) -> None:
    cfg = config.RunConfig(rule="las", schedule="two-pass", hidden=[64, 32], lr=1e-5,
                           augment=False, data_dir='C:\\data "x"', limit=100)  # fmt: skip
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml(cfg, "a header"))
    assert config.from_mapping(config.load_toml(path)) == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": 0.1}, "unknown key 'learning_rate'.*valid keys: align_every"),
        ({"epochs": "3"}, "epochs must be an integer"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"augment": 1}, "augment must be true or false"),
        ({"hidden": "32,x"}, "hidden: expected comma-separated integers"),
    ],
)
def test_config_refuses_bad_keys_and_types(values: dict, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.from_mapping(values)


def test_paper_schedule_milestones() -> None:
    assert training.paper_milestones(100) == [50, 75, 89, 94]
    assert training.paper_milestones(10) == [5, 7, 8, 9]
    # Few epochs: decays pile up, so the last epochs still run at lr x 0.25**4
    assert training.paper_milestones(2) == [1, 1, 1, 1]


# ---------------------------------------------------------------------------------------
# resume


def test_resume_after_a_finished_epoch_is_bit_identical(
    fake_fashion_mnist: Path, tmp_path: Path
) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    assert cli.main(run_args(fake_fashion_mnist, full)) == 0
    assert cli.main(run_args(fake_fashion_mnist, split, epochs=1)) == 0
    assert len(numbers(split)) == 1

    # Only --resume, --out and --epochs: the rest comes from the saved config
    assert cli.main(["train", "--out", str(split), "--resume", "--epochs", "2", "-q"]) == 0
    assert numbers(split) == numbers(full)
    summary = json.loads((split / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_epoch_then_resume_is_bit_identical(
    fake_fashion_mnist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: list[dict],
    capsys: pytest.CaptureFixture,
    signum: int,
    code: int,
) -> None:
    out = tmp_path / "run"
    args = run_args(fake_fashion_mnist, out, "--lr-schedule", "paper")

    # A real signal to this process, delivered during step 3 of epoch 2
    def send(rule, result):
        os.kill(os.getpid(), signum)
        return result

    call_on_step(monkeypatch, STEPS_PER_EPOCH + 3, send)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(args) == code
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    err = capsys.readouterr().err
    assert "in epoch 2 after step 3" in err and "--resume" in err and "Traceback" not in err

    # The checkpoint is the start of epoch 2, marked as interrupted
    ckpt = training.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 0
    assert ckpt["interrupted"] == {"reason": "RunInterrupted", "epoch": 2, "step": 3,
                                   "signal": signal.Signals(signum).name}  # fmt: skip
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"

    monkeypatch.undo()
    assert cli.main([*args, "--resume"]) == 0
    assert numbers(out) == reference


def test_keyboard_interrupt_inside_a_step_then_resume(
    fake_fashion_mnist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: list[dict],
) -> None:
    out = tmp_path / "run"
    args = run_args(fake_fashion_mnist, out, "--lr-schedule", "paper")

    def hard_stop(rule, result):
        raise KeyboardInterrupt

    call_on_step(monkeypatch, STEPS_PER_EPOCH + 5, hard_stop)
    assert cli.main(args) == 130
    # Step 5 never finished: 4 steps of epoch 2 were done
    assert training.load_checkpoint(out / "checkpoint.pt")["interrupted"]["step"] == 4
    monkeypatch.undo()
    assert cli.main([*args, "--resume"]) == 0
    assert numbers(out) == reference


def test_resume_refuses_a_changed_setting(
    fake_fashion_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert cli.main(run_args(fake_fashion_mnist, out, epochs=1)) == 0
    assert cli.main([*run_args(fake_fashion_mnist, out), "--resume", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "lr (run has 0.003, asked 0.1)" in err and "Traceback" not in err


def test_resume_of_a_finished_run_does_nothing(
    fake_fashion_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert cli.main(run_args(fake_fashion_mnist, out, epochs=1)) == 0
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    assert cli.main([*run_args(fake_fashion_mnist, out, epochs=1), "--resume", "-v"]) == 0
    assert "already complete" in capsys.readouterr().err
    assert (out / "checkpoint.pt").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------
# divergence


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    fake_fashion_mnist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "run"

    # Step 2 of epoch 2 blows the weights up, as a too-large lr would
    def diverge(rule, result):
        with torch.no_grad():
            for p in rule.parameters():
                p.fill_(math.nan)
        return torch.tensor(math.nan), result[1]

    call_on_step(monkeypatch, STEPS_PER_EPOCH + 2, diverge)
    assert cli.main(run_args(fake_fashion_mnist, out, epochs=3)) == 3
    err = capsys.readouterr().err
    assert "NaN/inf in epoch 2" in err and "smaller --lr" in err and "Traceback" not in err

    ckpt = training.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["rule"].values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 1
    assert len(numbers(out)) == 1
