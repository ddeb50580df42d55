"""The benchmark harness's bookkeeping (statistics, ratios, targets, table, plot, files) on made-up
measurements, and the second-process probe on the CPU; tests/test_cli.py runs the harness end to end
on the CPU."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from anchordetr_trt.bench import report, timing
from anchordetr_trt.bench.configs import BASELINES, BenchConfig, default_configs
from anchordetr_trt.bench.latency import row
from anchordetr_trt.bench.plot import plot_benchmark
from anchordetr_trt.bench.report import format_table, save_benchmark
from anchordetr_trt.bench.startup import second_process


def _ok_row(backend: str, batch: int, median_ms: float, precision: str = "fp16", size: int = 800) -> dict:
    config = BenchConfig(backend, batch, size, size, precision)
    latency = {
        "median": median_ms,
        "p90": 1.1 * median_ms,
        "p99": 1.2 * median_ms,
        "mean": median_ms,
        "min": median_ms,
    }
    return row(
        config, status="ok", latency_ms=latency, throughput_img_s=1000 * batch / median_ms, first_call_s=1.0
    )


@pytest.fixture
def rows() -> list[dict]:
    measured = [("eager-fp32", 20.0, 120.0), ("torch-compile", 5.0, 22.0), ("inductor", 2.5, 6.0)]
    rows = [_ok_row(name, batch, ms) for name, ms1, ms8 in measured for batch, ms in ((1, ms1), (8, ms8))]
    rows.append(row(BenchConfig("tensorrt", 1, 800, 800), status="skipped", reason="no TensorRT here"))
    report.add_speedups(rows)
    return rows


def test_stats_are_numpy_percentiles():
    values = np.random.default_rng(0).exponential(3.0, size=101).tolist()
    stats = timing.stats(values)
    assert [stats["median"], stats["p90"], stats["p99"]] == pytest.approx(
        np.percentile(values, [50, 90, 99]).tolist()
    )
    assert stats["min"] == min(values) and stats["n"] == 101


def test_speedups_are_ratios_to_each_baseline_at_the_same_shape(rows):
    by_key = {(r["backend"], r["batch"]): r for r in rows}
    for batch in (1, 8):
        mine, eager, plain = (by_key[(name, batch)] for name in ("inductor", "eager-fp32", "torch-compile"))
        assert mine["speedup"]["eager-fp32"]["latency"] == pytest.approx(
            eager["latency_ms"]["median"] / mine["latency_ms"]["median"]
        )
        assert mine["speedup"]["torch-compile"]["throughput"] == pytest.approx(
            mine["throughput_img_s"] / plain["throughput_img_s"]
        )
    assert "speedup" not in by_key[("tensorrt", 1)]


def test_fastest_is_the_best_package_backend_at_the_largest_shape(rows):
    assert report.fastest(rows) == {
        "backend": "inductor",
        "precision": "fp16",
        "label": rows[4]["label"],
        "shape": [8, 800, 800],
    }
    baselines_only = [r for r in rows if r["backend"] in BASELINES]
    assert report.fastest(baselines_only)["backend"] == "torch-compile"


@pytest.mark.parametrize(("median_ms", "met"), [(2.5, True), (3.5, False)])
def test_targets_are_checked_for_package_backends_only(median_ms, met):
    rows = [_ok_row("inductor", 1, median_ms), _ok_row("inductor", 8, 8.0), _ok_row("eager-fp32", 1, 1.0)]
    checks = report.targets(rows, "r50-dc5")["checks"]
    assert [(c["metric"].split()[0], c["met"]) for c in checks] == [
        ("batch-1", met),
        ("batch-8", 8000 / 8.0 >= 1200),
    ]
    assert report.targets(rows, "r50-c5")["checks"] == []


def test_table_lists_measured_and_skipped_rows(rows):
    table = format_table({"results": rows}).splitlines()
    assert len(table) == 1 + len(rows) and "median ms" in table[0]
    inductor_b8 = next(line for line in table if line.startswith(rows[5]["label"]) and "  8  " in line)
    assert (
        f"{rows[5]['throughput_img_s']:.1f}" in inductor_b8
        and f"{rows[5]['speedup']['eager-fp32']['throughput']:.2f}" in inductor_b8
    )
    assert "skipped: no TensorRT here" in table[-1]


def test_plot_is_a_png_even_with_skipped_rows(rows, tmp_path):
    made_up = {"results": rows, "environment": {"gpu": None}, "settings": {"variant": "r50-dc5"}}
    plot_benchmark(made_up, tmp_path / "bench.png")
    with Image.open(tmp_path / "bench.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100


def test_default_configs_pick_precision_per_device_and_reject_unknown_backends():
    gpu = default_configs(torch.device("cuda"), batches=(1, 8))
    assert {c.backend for c in gpu} == {"eager-fp32", "torch-compile", "inductor", "tensorrt"} and len(
        gpu
    ) == 8
    assert {c.precision for c in gpu if c.backend == "eager-fp32"} == {"fp32"}
    assert {c.precision for c in gpu if c.backend == "inductor"} == {"fp16"}
    cpu = default_configs(torch.device("cpu"), sizes=[(320, 480)], batches=(2,))
    assert cpu == [BenchConfig("eager-fp32", 2, 320, 480, "fp32"), BenchConfig("eager", 2, 320, 480, "fp32")]
    with pytest.raises(ValueError, match="unknown benchmark backend 'onnx'"):
        default_configs(torch.device("cpu"), backends=["onnx"])


@pytest.fixture
def made_up_report(rows) -> dict:
    profile = {"kind": "CPU operators", "calls": 2, "total_ms_per_call": 1.0, "top": [], "table": "op  1.0"}
    made_up = {
        "complete": True,
        "environment": {"gpu": None},
        "settings": {"variant": "r50-dc5"},
        "results": rows,
        "backends": {"inductor fp16": {"backend": "inductor", "precision": "fp16", "profile": profile}},
    }
    report.summarize(made_up)
    return made_up


def test_save_writes_json_png_and_the_fastest_backends_profile(made_up_report, tmp_path):
    written = save_benchmark(made_up_report, tmp_path, log=None)
    assert [p.name for p in written] == ["bench.json", "bench.png", "profile.json", "profile.txt"]
    assert json.loads((tmp_path / "bench.json").read_text())["results"][0]["latency_ms"]["median"] == 20.0
    with Image.open(tmp_path / "bench.png") as image:
        assert image.format == "PNG"
    assert (tmp_path / "profile.txt").read_text().endswith("op  1.0\n")


def test_save_without_matplotlib_writes_json_and_says_how_to_get_the_png(
    made_up_report, tmp_path, monkeypatch
):
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed, even after an earlier plot
    monkeypatch.delitem(sys.modules, "anchordetr_trt.bench.plot", raising=False)
    lines = []
    written = save_benchmark(made_up_report, tmp_path, log=lines.append)
    assert [p.name for p in written] == ["bench.json", "profile.json", "profile.txt"]
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(made_up_report))
    assert not (tmp_path / "bench.png").exists()
    assert lines == ["bench.png not drawn: it needs matplotlib, pip install 'anchordetr_trt[plot]'"]


@pytest.mark.slow
def test_second_process_runs_the_startup_entry_point(tmp_path):
    lines = []
    group = [BenchConfig("eager", 1, 64, 96, "fp32"), BenchConfig("eager", 2, 64, 64, "fp32")]
    timings = second_process(group, "r50-c5", None, 0, torch.device("cpu"), tmp_path, lines.append)
    assert timings["status"] == "ok", timings
    assert all(timings[k] > 0 for k in ("build_s", "compile_s", "first_call_s", "wall_s"))
    assert timings["wall_s"] > timings["build_s"] + timings["compile_s"] + timings["first_call_s"]
    assert lines and lines[0].startswith("   second process (cache on): compile ")


def test_second_process_failure_is_reported_with_the_error(tmp_path):
    lines = []
    group = [BenchConfig("eager", 1, 64, 64, "fp16")]  # fp16 on the CPU: the probe's compile() refuses
    failed = second_process(group, "r50-c5", None, 0, torch.device("cpu"), tmp_path, lines.append)
    assert failed["status"] == "failed" and "BackendUnavailableError" in failed["reason"]
    assert "precision='fp16'" in failed["reason"] and lines == [
        f"   second process failed: {failed['reason']}"
    ]
