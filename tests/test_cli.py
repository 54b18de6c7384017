"""Tests of the ``dflearn`` command line, called in-process through ``dflearn.cli.main``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dflearn import cli

RUN_FILES = ["accuracy.png", "alignment.png", "checkpoint.pt", "config.toml", "metrics.jsonl",
             "summary.json"]  # fmt: skip


@pytest.fixture
def base(fake_fashion_mnist: Path) -> list[str]:
    """Options of a quick run on the fake data: MLP 784-32-10, 2 epochs of 8 steps."""
    return [
        "--dataset", "fashion-mnist", "--data-dir", str(fake_fashion_mnist), "--no-download",
        "--hidden", "32", "--epochs", "2", "--batch-size", "32", "--lr", "0.003",
    ]  # fmt: skip


def main(*args: object) -> int:
    return cli.main([str(a) for a in args])


# ---------------------------------------------------------------------------------------
# train


def test_train_writes_every_result_file(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main("train", "--rule", "dfa", *base, "--out", out, "--align-every", 5) == 0
    err = capsys.readouterr().err
    assert 'rule = "dfa"' in err  # the resolved config comes first
    assert "epoch 2/2  train loss" in err and "angle" in err

    # Result files, the per-epoch metrics and the per-step angles
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, "alignment.jsonl"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "train_acc", "test_loss", "test_acc", "angles",
                            "seconds", "lr"}  # fmt: skip
    assert list(rows[0]["angles"]) == ["3"] and 0 < rows[0]["angles"]["3"] < 180
    steps = [json.loads(line) for line in (out / "alignment.jsonl").read_text().splitlines()]
    assert [s["global_step"] for s in steps] == [5, 10, 15]

    # The summary, and plots that are real PNGs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rule"] == "dfa"
    assert summary["final_test_acc"] == rows[-1]["test_acc"] > 0.2  # chance is 0.1
    assert summary["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert set(summary["versions"]) == {"dflearn", "torch", "torchvision", "python"}
    assert summary["seconds_per_epoch"] > 0 and summary["mean_angle"] is not None
    for png in ("accuracy.png", "alignment.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / png).stat().st_size > 1000

    # The saved config reproduces the run through --config
    assert main("train", "--config", out / "config.toml", "--out", tmp_path / "again", "-q") == 0
    again = [json.loads(x) for x in (tmp_path / "again/metrics.jsonl").read_text().splitlines()]
    assert [r["test_loss"] for r in again] == [r["test_loss"] for r in rows]


def test_config_file_is_overridden_by_flags(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text('rule = "shallow"\nepochs = 5\nbatch_size = 64\nlimit = 128\n')
    out = tmp_path / "run"
    assert main("train", "--config", cfg, *base, "--epochs", 1, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rule"], summary["epochs"]) == ("shallow", 1)
    saved = (out / "config.toml").read_text()
    assert "batch_size = 32" in saved and "limit = 128" in saved


def test_list_and_help(capsys: pytest.CaptureFixture) -> None:
    assert main("list") == 0
    assert "rules:    bp, dfa, las, ltas, shallow" in capsys.readouterr().out
    assert main("train", "--help") == 0
    assert "--lr-schedule" in capsys.readouterr().out


def test_console_script_help() -> None:
    script = shutil.which("dflearn", path=str(Path(sys.executable).parent))
    assert script is not None, "the dflearn console script is not installed"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "compare", "report"):
        assert command in result.stdout


# ---------------------------------------------------------------------------------------
# compare and report


def test_compare_then_report_rebuild_the_same_table(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--rules", "bp,dfa", "--seeds", "0,1", *base, "--out", out, "-q"]
    assert main(*args) == 0
    table = capsys.readouterr().out
    lines = table.strip().splitlines()
    assert lines[0].startswith("| rule | runs | final test acc (%)")
    assert [line.split(" | ")[0:2] for line in lines[2:]] == [["| bp", "2"], ["| dfa", "2"]]
    assert " ± " in lines[2]
    for name in ("bp-seed0", "bp-seed1", "dfa-seed0", "dfa-seed1"):
        assert (out / name / "checkpoint.pt").is_file()
    for name in ("summary.md", "summary.json", "accuracy.png", "alignment.png", "compare.toml"):
        assert (out / name).stat().st_size > 0
    groups = json.loads((out / "summary.json").read_text())["groups"]
    assert [(g["rule"], g["runs"], g["seeds"]) for g in groups] == [
        ("bp", 2, [0, 1]), ("dfa", 2, [0, 1]),
    ]  # fmt: skip

    # report rebuilds the same table from the files, into another directory too
    assert main("report", out, "--out", tmp_path / "rep", "-q") == 0
    assert capsys.readouterr().out == table
    assert (tmp_path / "rep/summary.md").read_text() == (out / "summary.md").read_text()

    # A resumed compare reuses the finished runs and prints the same table again
    before = (out / "dfa-seed1/checkpoint.pt").stat().st_mtime_ns
    assert main("compare", "--out", out, "--resume", "-q") == 0
    assert capsys.readouterr().out == table
    assert (out / "dfa-seed1/checkpoint.pt").stat().st_mtime_ns == before


def test_report_of_a_single_run_only_prints(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main("train", "--rule", "bp", *base, "--epochs", 1, "--out", out, "-q") == 0
    summary = (out / "summary.json").read_text()
    assert main("report", out) == 0
    assert "| bp | 1 |" in capsys.readouterr().out
    assert (out / "summary.json").read_text() == summary  # never replaced by a report's
    assert main("report", out, "--out", out) == 2
    assert main("report", tmp_path / "nothing-here") == 2


# ---------------------------------------------------------------------------------------
# bad input: refused before any work, exit code 2, a message and no traceback


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rule", "nope"], "unknown rule 'nope'; valid rules: bp, dfa, las, ltas, shallow"),
        (["--model", "nope"], "unknown model 'nope'; valid models: convnet, convnet-bn, mlp"),
        (["--dataset", "nope"], "unknown dataset 'nope'; valid datasets: cifar10"),
        (["--lr", "0"], "--lr must be > 0 (got 0.0)"),
        (["--lr", "-0.1"], "--lr must be > 0"),
        (["--lr", "nan"], "--lr must be > 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--momentum", "-0.9"], "--momentum must be >= 0"),
        (["--weight-decay=-1e-4"], "--weight-decay must be >= 0"),
        (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
        (["--val-fraction", "-0.1"], "--val-fraction must be in [0, 1)"),
        (["--align-every", "-1"], "--align-every must be >= 0"),
        (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["--hidden", "32,x"], "argument --hidden: expected comma-separated integers"),
        (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
        (["--device", "tpu"], "--device must be one of auto, cpu, cuda"),
        (["--model", "convnet"], "--hidden applies to --model mlp only"),
        (["--rule", "dfa", "--hidden", ""], "rule 'dfa' needs a model with taps"),
        (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
        (["--config", "missing.toml"], "config file not found: missing.toml"),
    ],
)
def test_bad_input_is_refused(
    base: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "run"
    assert main("train", *base, "--out", out, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing was done


def test_compare_refuses_a_tapless_model_before_any_run(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cmp"
    assert main("compare", "--rules", "bp,las", *base, "--hidden", "", "--out", out) == 2
    assert "rule 'las' needs a model with taps" in capsys.readouterr().err
    assert not out.exists()


def test_bad_config_files_are_refused(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken, unknown = tmp_path / "broken.toml", tmp_path / "unknown.toml"
    broken.write_text("lr = = 3\n")
    unknown.write_text("learning_rate = 0.1\n")
    assert main("train", *base, "--config", broken) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    assert main("train", *base, "--config", unknown) == 2
    assert "unknown key 'learning_rate'" in capsys.readouterr().err


def test_busy_output_directory_needs_overwrite_or_resume(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main("train", *base, "--out", out) == 2
    err = capsys.readouterr().err
    assert "is not empty; use --overwrite" in err and "--resume" in err
    assert main("compare", "--rules", "bp", *base, "--out", out) == 2
    assert "is not empty; use --overwrite" in capsys.readouterr().err

    # --overwrite replaces the run's files only
    assert main("train", *base, "--epochs", 1, "--out", out, "--overwrite", "-q") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "summary.json").is_file()


def test_missing_dataset_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main("train", "--dataset", "mnist", "--data-dir", tmp_path / "empty", "--no-download",
                "--hidden", "8", "--out", tmp_path / "run")  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "dataset 'mnist' not found" in err and "--data-dir" in err
    assert "Traceback" not in err


def test_unavailable_cuda_is_refused(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main("train", *base, "--device", "cuda", "--out", tmp_path / "run") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_compare_goes_on_after_a_diverged_run(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    from dflearn.rules.base import Rule

    original = Rule.step

    def step(self, *args, **kwargs):
        loss, output = original(self, *args, **kwargs)
        return (torch.tensor(float("nan")) if self.rule_name == "dfa" else loss), output

    monkeypatch.setattr(Rule, "step", step)
    out = tmp_path / "cmp"
    assert main("compare", "--rules", "dfa,bp", *base, "--epochs", 1, "--out", out, "-q") == 3
    captured = capsys.readouterr()
    assert "dfa seed 0: the training loss became NaN/inf in epoch 1" in captured.err
    lines = captured.out.strip().splitlines()
    assert lines[2].startswith("| bp | 1 |")
    assert lines[3].startswith("| dfa | 1 (1 diverged) | n/a | n/a |")
    assert json.loads((out / "bp-seed0/summary.json").read_text())["status"] == "completed"
