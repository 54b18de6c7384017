"""Tests for the step-time benchmark: structure and numbers, never wall-time thresholds."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from dflearn import bench
from dflearn.registry import UnknownNameError

# Tiny settings: hidden widths 16, batch 4, one thread (the test machine is shared).
TINY = {"repeats": 2, "warmup": 1, "batch_size": 4, "device": "cpu", "threads": 1}
SCALE = 1 / 64


@pytest.fixture(scope="module")
def mlp_results() -> dict:
    return bench.benchmark(["mlp-784"], list(bench.VARIANTS), scale=SCALE, **TINY)


def positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_structure(mlp_results: dict) -> None:
    assert set(mlp_results) == {"mlp-784", "meta"}
    assert list(mlp_results["mlp-784"]) == list(bench.VARIANTS)
    for stats in mlp_results["mlp-784"].values():
        for key in ("median_s", "ratio_to_bp", "peak_mb", "state_mb", "min_s", "max_s"):
            assert positive(stats[key]), key
        assert stats["iqr_s"] >= 0
        assert stats["rounds"] == TINY["repeats"] == len(stats["times_s"])
        assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
        lo, hi = stats["ratio_to_bp_iqr"]
        assert lo <= stats["ratio_to_bp"] <= hi
        assert stats["feedback_mb"] >= 0


def test_ratios(mlp_results: dict) -> None:
    table = mlp_results["mlp-784"]
    assert table["bp"]["ratio_to_bp"] == 1.0
    assert table["bp"]["ratio_to_bp_range"] == [1.0, 1.0]
    assert table["bp"]["feedback_mb"] == 0
    assert table["dfa"]["feedback_mb"] > 0
    assert positive(table["las"]["ratio_to_las_two_pass"])
    assert "ratio_to_las_two_pass" not in table["dfa"]
    # Per-round ratios: the median ratio is not the ratio of the medians in general,
    # but it must lie within the range of per-round ratios.
    las = table["las"]
    lo, hi = las["ratio_to_bp_range"]
    per_round = [a / b for a, b in zip(las["times_s"], table["bp"]["times_s"], strict=True)]
    assert min(per_round) == lo and max(per_round) == hi


def test_meta_and_targets(mlp_results: dict) -> None:
    meta = mlp_results["meta"]
    for key in ("cpu", "cores", "torch", "device", "threads", "repeats", "memory_method"):
        assert meta[key] is not None, key
    assert meta["device"] == "cpu" and meta["threads"] == 1 and meta["batch_size"] == 4
    checked = {(t["model"], t["variant"], t["reference"]) for t in meta["targets"]}
    assert checked == {
        ("mlp-784", "dfa", "bp"),
        ("mlp-784", "las", "bp"),
        ("mlp-784", "las", "las-two-pass"),
    }
    assert "mlp-784" in bench.format_table(mlp_results)
    json.dumps(mlp_results, allow_nan=False)


def test_conv_model_without_bp() -> None:
    # Without bp in the run there is no reference: ratios are None, not made up.
    out = bench.benchmark(["convnet-bn"], ["las", "dfa"], scale=0.5, **{**TINY, "repeats": 1})
    stats = out["convnet-bn"]
    assert stats["las"]["ratio_to_bp"] is None
    assert positive(stats["las"]["median_s"]) and positive(stats["dfa"]["peak_mb"])
    assert stats["las"]["feedback_mb"] > 0
    assert out["meta"]["targets"] == []


@pytest.mark.parametrize(
    ("models", "rules", "bad"),
    [(["mlp-784", "nope"], ["bp"], "nope"), (["mlp-784"], ["bp", "las2"], "las2")],
)
def test_unknown_names_fail_before_work(monkeypatch, models, rules, bad) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("a model was built before the names were checked")

    monkeypatch.setattr(bench.model_zoo, "create", no_work)
    with pytest.raises(UnknownNameError) as err:
        bench.benchmark(models, rules, **TINY)
    message = str(err.value)
    assert bad in message
    valid = bench.MODEL_SPECS if bad == "nope" else bench.VARIANTS
    assert all(name in message for name in valid)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_run_writes_json(tmp_path, capsys) -> None:
    path = tmp_path / "out" / "bench.json"
    argv = ["--models", "mlp-784", "--rules", "bp,las", "--repeats", "2", "--warmup", "0",
            "--batch-size", "4", "--device", "cpu", "--threads", "1",
            "--scale", str(SCALE), "--json", str(path)]  # fmt: skip
    assert bench.run(parse(argv)) == 0
    data = json.loads(path.read_text())
    assert set(data["mlp-784"]) == {"bp", "las"}
    assert data["mlp-784"]["bp"]["ratio_to_bp"] == 1.0
    assert not list(path.parent.glob(".*.tmp"))
    out = capsys.readouterr().out
    assert "ms/step" in out and "las" in out


def test_run_unknown_name(capsys) -> None:
    assert bench.run(parse(["--models", "mlp-999"])) == 2
    err = capsys.readouterr().err
    assert "mlp-999" in err and "resnet18" in err


def test_run_with_suppressed_defaults(monkeypatch) -> None:
    # The CLI's subparsers leave options that were not given out of the namespace.
    seen = {}
    monkeypatch.setattr(bench, "benchmark", lambda *a, **k: seen.update(a=a, k=k) or {})
    monkeypatch.setattr(bench, "format_table", lambda results: "")
    assert bench.run(argparse.Namespace(models="mlp-784")) == 0
    assert seen["a"] == (["mlp-784"], list(bench.VARIANTS), 20, 3, 128, "auto")


def test_quantile() -> None:
    assert bench._quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert bench._quantile([1.0, 2.0, 3.0, 4.0], 0.25) == 1.75
    assert bench._quantile([5.0], 0.75) == 5.0


def test_fused_adam_and_bad_settings() -> None:
    out = bench.benchmark(["mlp-784"], ["bp"], scale=SCALE, adam="fused", **TINY)
    assert out["meta"]["adam"] == "fused" and positive(out["mlp-784"]["bp"]["median_s"])
    with pytest.raises(ValueError, match="adam"):
        bench.benchmark(["mlp-784"], ["bp"], adam="sgd", **TINY)
    with pytest.raises(ValueError, match="repeats"):
        bench.benchmark(["mlp-784"], ["bp"], **{**TINY, "repeats": 0})
