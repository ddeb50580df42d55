"""The benchmark harness's bookkeeping (statistics, ratios, targets, table, plot, files) on made-up
measurements, and the second-process probe on the CPU; tests/test_cli.py runs the harness end to end
on the CPU."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from anchordetr_trt.bench import report, targets, timing
from anchordetr_trt.bench.configs import BASELINES, BenchConfig, default_configs, shape_range
from anchordetr_trt.bench.latency import row
from anchordetr_trt.bench.plot import plot_benchmark
from anchordetr_trt.bench.report import format_table, save_benchmark
from anchordetr_trt.bench.startup import second_process

H100 = "NVIDIA H100 80GB HBM3"  # the bars' GPU, as torch names it


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
    # Plain floats: a numpy bool from comparing them reached bench.json as the string "True".
    assert all(type(value) in (float, int) for value in stats.values())


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


@pytest.mark.parametrize(
    "bar", targets.BARS, ids=lambda bar: f"issue{bar.issue}-{bar.precision}-b{bar.batch}"
)
@pytest.mark.parametrize("met", [True, False])
def test_each_bar_is_checked_on_its_row_and_names_its_issue(bar, met):
    # A median just inside or just outside the bar, for the bar's precision and batch.
    inside = bar.limit * 0.99 if bar.metric == "latency" else 1000 * bar.batch / (bar.limit * 1.01)
    outside = bar.limit * 1.01 if bar.metric == "latency" else 1000 * bar.batch / (bar.limit * 0.99)
    median = inside if met else outside
    rows = [
        _ok_row("inductor", bar.batch, median, bar.precision),
        _ok_row("eager-fp32", bar.batch, median, bar.precision),  # a baseline: never checked
        _ok_row("inductor", bar.batch, median, bar.precision, size=640),  # another size: not checked
    ]
    checked = targets.check_targets(rows, "r50-dc5", H100)
    checks = [c for c in checked["checks"] if c["target"] == bar.limit]
    value = median if bar.metric == "latency" else 1000 * bar.batch / median
    assert checks == [
        {"issue": bar.issue, "bar": bar.name, "label": rows[0]["label"], "metric": checks[0]["metric"],
         "value": pytest.approx(value), "target": bar.limit, "met": met}
    ]  # fmt: skip
    assert checked["on_target_gpu"]
    assert checks[0]["metric"].startswith(f"batch-{bar.batch} ")
    assert targets.check_targets(rows, "r50-c5", H100)["checks"] == []


@pytest.mark.parametrize("gpu", ["NVIDIA H200", "NVIDIA A10", None])
def test_a_check_on_another_gpu_than_the_bars_says_so(gpu):
    checked = targets.check_targets([_ok_row("inductor", 1, 1.0)], "r50-dc5", gpu)
    assert [c["met"] for c in checked["checks"]] == [True, True] and not checked["on_target_gpu"]


def test_bars_are_issue_8s_and_issue_12s_in_one_table():
    rows = [_ok_row("inductor", 1, 2.0), _ok_row("inductor", 8, 6.0), _ok_row("inductor", 32, 20.0)]
    checks = targets.check_targets(rows, "r50-dc5", H100)["checks"]
    # batch 1 at 2.0 ms meets issue 8's 2.5 ms, misses issue 12's 1.8 ms; batch 8 at 1333 img/s likewise.
    assert [(c["issue"], c["metric"].split()[0], c["met"]) for c in checks] == [
        (8, "batch-1", True), (12, "batch-1", False), (8, "batch-8", True), (12, "batch-8", False),
    ]  # fmt: skip
    assert {bar["issue"] for bar in targets.check_targets(rows, "r50-dc5", H100)["bars"]} == {8, 12}


def test_every_bar_can_be_checked_by_a_package_backend():
    # A bar no backend can measure (a precision compile() does not offer) would never be checked.
    from anchordetr_trt.spec import PRECISIONS

    assert {bar.precision for bar in targets.BARS} <= set(PRECISIONS)


def test_table_lists_measured_and_skipped_rows(rows):
    table = format_table({"results": rows}).splitlines()
    assert len(table) == 1 + len(rows) and "median ms" in table[0]
    inductor_b8 = next(line for line in table if line.startswith(rows[5]["label"]) and "  8  " in line)
    assert (
        f"{rows[5]['throughput_img_s']:.1f}" in inductor_b8
        and f"{rows[5]['speedup']['eager-fp32']['throughput']:.2f}" in inductor_b8
    )
    assert "skipped: no TensorRT here" in table[-1]


@pytest.fixture
def flops_report() -> dict:
    """A made-up report with a flops section: 230 GFLOPs per image, peaks of 800 (fp16) and 400 (tf32)."""
    gflops = {"backbone": 150.0, "encoder": 50.0, "decoder": 30.0, "total": 230.0}
    results = [
        _ok_row("inductor", 8, 6.0),
        _ok_row("eager-fp32", 8, 120.0, "fp32"),
        _ok_row("eager", 8, 60.0, "bf16"),  # no peak measured for it
        _ok_row("inductor", 8, 4.0, size=640),  # no count for its shape
        row(BenchConfig("tensorrt", 8, 800, 800), status="skipped", reason="no TensorRT here"),
    ]
    results[0] |= {"parts_ms": {"backbone": 3.0, "encoder": 2.0, "decoder": 1.0}, "parts_timed": "compiled"}
    made_up = {
        "environment": {"gpu": H100},
        "settings": {"variant": "r50-dc5"},
        "results": results,
        "flops": {
            "per_image": [{"batch": 8, "height": 800, "width": 800, "gflops": gflops}],
            "peak_tflops": {
                "fp16": {"tflops": 800.0, "how": "made up"},
                "tf32": {"tflops": 400.0, "how": "too"},
            },
            "peak_for": {"fp16": "fp16", "fp32": "tf32"},
        },
    }
    report.summarize(made_up)
    return made_up


def test_flop_rates_are_flops_per_image_times_throughput_against_the_rows_peak(flops_report):
    rates = {r["backend"]: r for r in flops_report["flops"]["rows"]}
    assert list(rates) == ["inductor", "eager-fp32", "eager"]  # not the 640 row, nor the skipped one
    inductor, fp32, bf16 = rates["inductor"], rates["eager-fp32"], rates["eager"]
    assert inductor["tflops"] == pytest.approx(230 * 8000 / 6.0 / 1000)  # GFLOP/img * img/s, in TFLOP/s
    assert inductor["percent_of_peak"] == pytest.approx(100 * inductor["tflops"] / 800)
    assert (fp32["peak"], fp32["percent_of_peak"]) == (
        "tf32",
        pytest.approx(100 * 230 * 8000 / 120.0 / 1000 / 400),
    )
    assert bf16["tflops"] > 0 and bf16["percent_of_peak"] is None
    backbone = inductor["parts"]["backbone"]
    assert backbone == {"ms": 3.0, "percent_of_time": 50.0, "tflops": 150 * 8 / 3.0, "percent_of_peak": 50.0}
    assert inductor["parts_timed"] == "compiled" and "parts" not in fp32


def test_table_and_flops_lines_show_the_rates(flops_report):
    table = format_table(flops_report).splitlines()
    assert "TFLOP/s" in table[0] and "% peak" in table[0]
    rate = flops_report["flops"]["rows"][0]
    assert f"{rate['tflops']:.1f}" in table[1] and f"  {rate['percent_of_peak']:.0f}  " in table[1]
    assert "  -  " in table[4]  # the 640 row has no rate
    assert report.format_flops(flops_report) == [
        "GFLOPs per image at 800x800 (batch 8): backbone 150.0, encoder 50.0, decoder 30.0, total 230.0",
        "measured peak fp16: 800.0 TFLOP/s (made up)",
        "measured peak tf32: 400.0 TFLOP/s (too)",
        f"{rate['label']} batch 8 800x800 parts: backbone 3.00 ms 400.0 TFLOP/s (50% of peak), "
        "encoder 2.00 ms 200.0 TFLOP/s (25% of peak), decoder 1.00 ms 240.0 TFLOP/s (30% of peak)",
    ]
    assert report.format_flops({"results": []}) == []


def test_plot_is_a_png_even_with_skipped_rows(rows, tmp_path):
    made_up = {"results": rows, "environment": {"gpu": None}, "settings": {"variant": "r50-dc5"}}
    plot_benchmark(made_up, tmp_path / "bench.png")
    with Image.open(tmp_path / "bench.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100


def test_default_configs_pick_precision_and_batches_per_device_and_reject_unknown_backends():
    gpu = default_configs(torch.device("cuda"))
    assert {c.backend for c in gpu} == {"eager-fp32", "torch-compile", "inductor", "tensorrt"} and len(
        gpu
    ) == 12
    assert sorted({c.batch for c in gpu}) == [1, 8, 32]
    assert sorted({c.batch for c in default_configs(torch.device("cpu"))}) == [1, 8]
    assert shape_range([c for c in gpu if c.backend == "inductor"]) == (
        (1, 800, 800),
        (1, 800, 800),
        (32, 800, 800),
    )
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


def test_save_writes_numpy_values_as_numbers_and_refuses_unknown_objects(made_up_report, tmp_path):
    made_up_report["settings"] |= {"met": np.bool_(True), "median": np.float64(2.5), "cache_dir": tmp_path}
    save_benchmark(made_up_report, tmp_path / "ok", log=None)
    settings = json.loads((tmp_path / "ok" / "bench.json").read_text())["settings"]
    assert settings["met"] is True and settings["median"] == 2.5 and settings["cache_dir"] == str(tmp_path)
    made_up_report["settings"]["device"] = torch.device("cpu")
    with pytest.raises(TypeError, match=r"bench\.json cannot hold device"):
        save_benchmark(made_up_report, tmp_path / "bad", log=None)


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
