"""The ``anchordetr-trt`` command line: run in-process through ``main(argv)``, plus real processes once."""

import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli as run
from PIL import Image

import anchordetr_trt
from anchordetr_trt import cli
from anchordetr_trt.backends import tensorrt as trt_backend
from anchordetr_trt.cli import main
from anchordetr_trt.detect import detect
from anchordetr_trt.draw import draw_detections
from anchordetr_trt.eval import COCO_CLASSES, make_synthetic_coco
from anchordetr_trt.weights import random_model

COMMANDS = ["info", "detect", "eval", "bench", "compile", "demo", "export"]
SMALL = ["--variant", "r50-c5", "--min-size", "320", "--max-size", "512"]  # the quickest model and inputs


@pytest.fixture
def cache_env(monkeypatch):
    """Undo, after the test, the compile-cache variables that bench and compile set for their process."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        original = os.environ.get(name)
        monkeypatch.setenv(name, original or "")  # recorded: restored (or removed) at teardown
        if original is None:
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Three small images of different sizes and modes (RGB, grayscale, RGBA)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (height, width), mode in (
        ("a", (60, 80), "RGB"),
        ("b", (90, 50), "L"),
        ("c", (64, 64), "RGBA"),
    ):
        pixels = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").convert(mode).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image: the folder scan lists it and goes on")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An R50-C5 checkpoint as the training script saves it: weights and training arguments."""
    path = tmp_path_factory.mktemp("ckpt") / "r50_c5.pth"
    args = {"backbone": "resnet50", "dilation": False}
    torch.save({"model": random_model("r50-c5", seed=1).state_dict(), "args": args}, path)
    return path


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command, capsys):
    code, out, _ = run([command, "--help"] if command else ["--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: anchordetr-trt{' ' + command if command else ''}")
    if command is None:
        assert all(name in out for name in COMMANDS)


def test_info_reports_versions_and_why_backends_cannot_run(capsys):
    code, out, _ = run(["info", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["torch"] == torch.__version__
    assert set(info["backends"]) == {"eager", "inductor", "tensorrt"}
    assert info["backends"]["eager"]["available"]
    trt_ok, trt_reason = trt_backend.status(torch.device("cuda"))
    if not torch.cuda.is_available():
        assert info["gpu"] is None and info["auto"] == "eager"
        assert (
            not info["backends"]["inductor"]["available"]
            and "CUDA GPU" in info["backends"]["inductor"]["reason"]
        )
    if not trt_ok:
        assert info["backends"]["tensorrt"] == {"available": False, "reason": trt_reason}

    code, text, _ = run(["info"], capsys)
    assert code == 0 and f"torch          {torch.__version__}" in text
    assert f"backend='auto' picks: {info['auto']}" in text


@pytest.mark.slow
def test_detect_writes_json_and_annotated_images(image_dir, checkpoint, tmp_path, capsys):
    out, top_k = tmp_path / "out", 7
    sizes = SMALL[2:]  # the checkpoint's training args name its variant
    argv = ["detect", str(image_dir), "--ckpt", str(checkpoint), *sizes, "--out", str(out), "--batch-size", "2"]  # fmt: skip
    code, stdout, _ = run([*argv, "--threshold", "0", "--top-k", str(top_k)], capsys)
    assert code == 0, stdout
    records = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in records] == ["a.png", "b.png", "c.png"]
    for record in records:
        with Image.open(record["image"]) as original:
            assert (record["width"], record["height"]) == original.size
            plain = np.asarray(original.convert("RGB"))
        dets = record["detections"]
        scores = [d["score"] for d in dets]
        assert (
            len(dets) == top_k and scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        )
        for det in dets:
            assert set(det) == {"label", "name", "score", "box"} and det["name"] == COCO_CLASSES[det["label"]]
            x0, y0, x1, y1 = det["box"]
            assert 0 <= x0 <= x1 <= record["width"] and 0 <= y0 <= y1 <= record["height"]
        with Image.open(out / record["annotated"]) as annotated:
            assert annotated.size == (record["width"], record["height"]) and annotated.mode == "RGB"
            assert (np.asarray(annotated) != plain).any()
    assert "3 images" in stdout and stdout.count(": 7 detections") == 3
    streamed = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert streamed == records, "each image's line, written as it finished, holds the same record"


class _FixedDetector:
    """Stands in for a model: the same logits and boxes for every image, to check what detect() keeps."""

    backend, precision = "fixed", "fp32"

    def __init__(self, logits: torch.Tensor, boxes: torch.Tensor, interrupt_at: int | None = None):
        self.logits, self.boxes = logits, boxes
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.calls, self.interrupt_at = 0, interrupt_at

    def __call__(self, images, mask):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt  # as Ctrl-C during this call
        batch = images.shape[0]
        return {
            "pred_logits": self.logits.expand(batch, -1, -1),
            "pred_boxes": self.boxes.expand(batch, -1, -1),
        }


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.95])
def test_detect_keeps_scores_above_threshold_and_clips_boxes(threshold):
    logits = torch.full((1, 3, len(COCO_CLASSES)), -20.0)
    logits[0, 0, 18], logits[0, 1, 1] = 2.0, -1.0  # dog at sigmoid(2) = 0.88, person at sigmoid(-1) = 0.27
    boxes = torch.tensor([[[0.9, 0.5, 0.4, 0.2], [0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]]])  # cx, cy, w, h
    image = Image.new("RGB", (200, 100))
    [dets] = detect(
        _FixedDetector(logits, boxes), [image], COCO_CLASSES, threshold=threshold, top_k=2, min_size=64
    )
    expected = [(18, 1 / (1 + math.exp(-2.0))), (1, 1 / (1 + math.exp(1.0)))]
    expected = [(label, score) for label, score in expected if score >= threshold]
    assert [d["label"] for d in dets] == [label for label, _ in expected]
    assert [d["score"] for d in dets] == pytest.approx([score for _, score in expected])
    if dets:  # the dog's box reaches x = (0.9 + 0.2) * 200 = 220: clipped to the image's width
        assert dets[0]["name"] == "dog" and dets[0]["box"] == pytest.approx([140.0, 40.0, 200.0, 60.0])


def test_draw_puts_box_and_label_at_the_detection():
    image = Image.new("RGB", (200, 120), (0, 0, 0))
    box = [40.0, 50.0, 150.0, 110.0]
    drawn = np.asarray(draw_detections(image, [{"label": 18, "name": "dog", "score": 0.93, "box": box}]))
    color = drawn[80, 40]  # on the left edge of the box
    assert color.any() and (drawn[80, 41:140] == 0).all(), "the box is an outline, its inside stays untouched"
    assert (drawn[50, 60:140] == color).all(axis=1).all(), "top edge in the class color"
    label_area = drawn[30:50, 40:80]
    text = (label_area > 200).all(axis=-1)  # white, antialiased text
    assert (label_area == color).all(axis=-1).any() and text.sum() > 10, "a filled label with text on it"
    assert not drawn[:, :38].any() and not drawn[:28].any(), "nothing is drawn away from the detection"


@pytest.mark.slow
def test_bench_cpu_smoke_run_writes_json_png_and_profile(tmp_path, capsys, cache_env):
    out = tmp_path / "bench"
    argv = [
        "bench",
        "--device",
        "cpu",
        "--variant",
        "r50-c5",
        "--size",
        "320",
        "--batch",
        "1",
        "--iters",
        "2",
    ]
    argv += [
        "--warmup",
        "1",
        "--backends",
        "eager-fp32",
        "eager",
        "torch-compile",
        "inductor",
        "--parts",
        "--no-startup",  # the second-process timing: test_benchmark runs it
        "--out",
        str(out),
    ]
    code, stdout, stderr = run(argv, capsys)
    assert code == 0 and "needs a GPU" in stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["complete"] and report["settings"]["device"] == "cpu"
    assert report["environment"]["torch"] == torch.__version__
    rows = {row["backend"]: row for row in report["results"]}
    assert set(rows) == {"eager-fp32", "eager", "torch-compile", "inductor"}
    for name in ("torch-compile", "inductor"):
        assert rows[name]["status"] == "skipped" and "CUDA" in rows[name]["reason"]
    for name in ("eager-fp32", "eager"):
        row = rows[name]
        lat = row["latency_ms"]
        assert row["status"] == "ok" and (row["batch"], row["height"], row["width"]) == (1, 320, 320)
        assert lat["n"] == 2 and all(math.isfinite(lat[k]) and lat[k] > 0 for k in ("median", "p90", "p99"))
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"]
        assert (
            math.isfinite(row["throughput_img_s"]) and row["throughput_img_s"] > 0 and row["first_call_s"] > 0
        )
        ratio = row["speedup"]["eager-fp32"]
        assert ratio["latency"] == pytest.approx(rows["eager-fp32"]["latency_ms"]["median"] / lat["median"])
    assert rows["eager-fp32"]["speedup"]["eager-fp32"] == {"latency": 1.0, "throughput": 1.0}
    assert report["fastest"]["backend"] in ("eager-fp32", "eager")
    with Image.open(out / "bench.png") as plot:
        assert plot.format == "PNG" and min(plot.size) > 100
    profile = json.loads((out / "profile.json").read_text())
    assert profile["kind"] == "CPU operators" and profile["top"]
    assert 0 < sum(op["percent"] for op in profile["top"]) <= 100 + 1e-6
    assert rows["eager"]["label"] in stdout and "skipped" in stdout
    # --parts: the FLOP rates of the measured rows, whole and by part, in bench.json and on stdout
    flops = report["flops"]
    assert [(e["batch"], e["height"], e["width"]) for e in flops["per_image"]] == [(1, 320, 320)]
    assert list(flops["peak_tflops"]) == ["fp32"] and flops["peak_tflops"]["fp32"]["tflops"] > 0
    rates = {rate["backend"]: rate for rate in flops["rows"]}
    assert set(rates) == {"eager-fp32", "eager"}
    for name, rate in rates.items():
        assert list(rows[name]["parts_ms"]) == ["backbone", "encoder", "decoder"]
        assert rate["tflops"] > 0 and rate["parts_timed"] == "eager"
        assert sum(part["percent_of_time"] for part in rate["parts"].values()) == pytest.approx(100)
    assert (stdout + stderr).count("GFLOPs per image at 320x320 (batch 1): backbone") == 1
    assert f"{rates['eager']['label']} batch 1 320x320 parts: backbone" in stdout
    assert report["backends"]["inductor fp32"]["status"] == "skipped"


@pytest.mark.no_gpu
def test_bench_without_gpu_says_it_needs_one(tmp_path, capsys):
    code, _, err = run(["bench", "--out", str(tmp_path)], capsys)
    assert code == 2 and "needs a CUDA GPU" in err and "--device cpu" in err


def test_eval_on_synthetic_coco(tmp_path, capsys):
    ann_file, images = make_synthetic_coco(tmp_path / "coco", num_images=2, seed=1)
    result_file = tmp_path / "eval.json"
    argv = ["eval", "--random-weights", *SMALL, "--ann-file", str(ann_file), "--image-dir", str(images)]
    code, out, err = run([*argv, "--batch-size", "2", "--out", str(result_file)], capsys)
    result = json.loads(result_file.read_text())
    assert code == 0 and result["num_images"] == 2 and 0 <= result["AP"] <= 1
    assert f"AP {result['AP']:.3f}" in out
    assert "Average Precision" not in out + err, "pycocotools' table shows with --debug only"
    code, out, err = run([*argv, "--batch-size", "2", "--max-images", "1", "--out", str(result_file)], capsys)
    assert code == 0 and json.loads(result_file.read_text())["num_images"] == 1, "our own result is replaced"


def test_eval_runs_images_the_resize_takes_past_the_default_range(tmp_path, capsys):
    """A 10x2000 strip resizes to 7x1400 at the default sizes: eval widens its range from the sizes its
    annotation file states, and pads the short side up to the range's 320."""
    ann_file, images = make_synthetic_coco(tmp_path / "coco", num_images=1, seed=0)
    data = json.loads(ann_file.read_text())
    [image] = data["images"]
    image["height"], image["width"] = 10, 2000
    for annotation in data["annotations"]:
        annotation["bbox"], annotation["area"] = [100.0, 2.0, 50.0, 5.0], 250.0
    ann_file.write_text(json.dumps(data))
    Image.new("RGB", (2000, 10), "gray").save(images / image["file_name"])
    argv = ["eval", "--random-weights", "--variant", "r50-c5", "--ann-file", str(ann_file)]
    code, out, err = run([*argv, "--image-dir", str(images)], capsys)
    assert code == 0, err
    assert out.startswith("1 image, ")


@pytest.mark.slow
def test_demo_writes_report_and_says_weights_are_random(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run(
        ["demo", "--out", str(out), "--variant", "r50-c5", "--num-images", "2", "--top-k", "3"], capsys
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["random_weights"] and report["variant"] == "r50-c5" and len(report["images"]) == 2
    if not torch.cuda.is_available():
        assert (report["backend"], report["precision"], report["device"]) == ("eager", "fp32", "cpu")
    for record in report["images"]:
        assert len(record["detections"]) == 3
        with Image.open(out / record["annotated"]) as annotated:
            assert annotated.size == (record["width"], record["height"])
    markdown = (out / "report.md").read_text()
    assert "Random weights detect nothing meaningful" in markdown and markdown.count("](annotated/") == 2
    assert "random weights detect nothing meaningful" in stdout
    assert json.loads((out / "detections.json").read_text()) == report["images"]

    # Seed 3's image resizes to 511x305 (the long side hits 512 first): padded up to the demo's 320.
    code, _, _ = run(
        ["demo", "--out", str(out), "--variant", "r50-c5", "--num-images", "1", "--seed", "3"], capsys
    )
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and len(report["images"]) == 1, "the earlier run's inputs are not reprocessed"
    assert (
        len(list((out / "inputs" / "images").iterdir())) == 1
        and len(list((out / "annotated").iterdir())) == 1
    )


@pytest.mark.skipif(
    trt_backend.status(torch.device("cuda"))[0], reason="checks the message where TensorRT cannot run"
)
def test_tensorrt_without_tensorrt_is_explained(image_dir, capsys):
    code, _, err = run(
        ["detect", str(image_dir), "--random-weights", *SMALL, "--backend", "tensorrt"], capsys
    )
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("anchordetr-trt detect: error: --backend tensorrt ")
    if torch.cuda.is_available():
        assert trt_backend.status(torch.device("cuda"))[1] in last and last.endswith("use --backend inductor")
    else:
        assert last.endswith("--backend tensorrt needs a CUDA GPU; none is visible: use --backend eager")
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_command(where, tmp_path):
    argv = ["detect", str(tmp_path / "missing.png"), "--random-weights"]
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])


def test_unexpected_failure_is_one_line_with_exit_code_1(image_dir, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    monkeypatch.setattr(cli.shared, "compiled_model", broken)
    code, _, err = run(["detect", str(image_dir), "--random-weights", "--out", str(tmp_path / "o")], capsys)
    lines = [line for line in err.strip().splitlines() if not line.startswith("skipped ")]  # notes.txt
    assert code == 1 and "Traceback" not in err and len(lines) == 1
    assert "RuntimeError: CUDA error: an illegal memory access" in err and "--debug" in err


@pytest.mark.slow
def test_console_script_and_module_run_as_processes(tmp_path):
    script = shutil.which("anchordetr-trt", path=str(Path(sys.executable).parent)) or "anchordetr-trt"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    info = subprocess.run([script, "info"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert info.returncode == 0 and "backend='auto' picks:" in info.stdout, info.stderr
    missing = str(tmp_path / "missing.png")
    error = subprocess.run(
        [sys.executable, "-m", "anchordetr_trt.cli", "detect", missing, "--random-weights"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert (
        error.returncode == 2
        and error.stderr.strip() == f"anchordetr-trt detect: error: no such image file or folder: {missing}"
    )
    version = subprocess.run(
        [sys.executable, "-m", "anchordetr_trt", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (
        version.returncode == 0 and version.stdout.strip() == f"anchordetr-trt {anchordetr_trt.__version__}"
    )


@pytest.mark.slow
def test_help_does_not_import_torch():
    # --help answers at once: torch (seconds to import) is imported by the commands that need it.
    probe = (
        "import sys, contextlib, io\n"
        "from anchordetr_trt.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "print('torch' in sys.modules)\n"
        "import anchordetr_trt.compiled, anchordetr_trt\n"
        "print(anchordetr_trt.compile.__name__, anchordetr_trt.compile.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "compile", "anchordetr_trt.compiled"], (
        "the function, not its module"
    )


def test_shape_flags_default_to_the_librarys_range_and_say_so():
    from anchordetr_trt.cli.options import SHAPE_HELP
    from anchordetr_trt.cli.shared import shape_range
    from anchordetr_trt.spec import DEFAULT_MAX_SHAPE, DEFAULT_MIN_SHAPE, DEFAULT_OPT_SHAPE

    for command in (["compile", "--out", "o"], ["export", "--onnx", "m.onnx"]):
        args = cli._parser().parse_args([*command, "--random-weights"])
        assert shape_range(args) == {
            "min_shape": DEFAULT_MIN_SHAPE,
            "opt_shape": DEFAULT_OPT_SHAPE,
            "max_shape": DEFAULT_MAX_SHAPE,
        }
    written = {name: ",".join(map(str, shape)) for name, shape in shape_range(args).items()}
    assert {f"{name}_shape": text.split(", ")[0] for name, text in SHAPE_HELP.items()} == written


@pytest.mark.gpu
def test_compile_warms_a_cache_for_the_inductor_backend(tmp_path, capsys, cache_env):
    out = tmp_path / "artifact"
    shape = "1,320,320"
    argv = ["compile", "--random-weights", "--variant", "r50-c5", "--backend", "inductor", "--out", str(out)]
    code, stdout, _ = run([*argv, "--min-shape", shape, "--opt-shape", shape, "--max-shape", shape], capsys)
    manifest = json.loads((out / "compile.json").read_text())
    assert code == 0 and manifest["backend"] == "inductor" and manifest["opt_shape"] == [1, 320, 320]
    assert any((out / "inductor").rglob("*")), "the Inductor cache under --out holds the compiled graph"
    assert str(out.resolve()) in stdout


# detect on a folder: streamed, resumable after Ctrl-C, tolerant of bad files on request, upright.


def _fixed_model(monkeypatch, interrupt_at: int | None = None) -> _FixedDetector:
    """detect's model replaced by one fixed detection (a dog over the left half): fast and exact."""
    logits = torch.full((1, 2, len(COCO_CLASSES)), -20.0)
    logits[0, 0, 18] = 3.0
    boxes = torch.tensor([[[0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 0.1, 0.1]]])
    model = _FixedDetector(logits, boxes, interrupt_at)
    monkeypatch.setattr(cli.shared, "compiled_model", lambda *args, **kwargs: model)
    return model


def _write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (height, width) in sizes.items():
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_detect_rerun_replaces_its_own_outputs_and_stops_at_a_user_file(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    out = tmp_path / "out"
    first = _write_images(tmp_path / "first", {"a.png": (40, 50), "b.png": (50, 40), "c.png": (40, 40)})
    second = _write_images(tmp_path / "second", {"d.png": (40, 50)})
    assert run(["detect", str(first), "--random-weights", "--out", str(out)], capsys)[0] == 0
    code, stdout, _ = run(["detect", str(second), "--random-weights", "--out", str(out)], capsys)
    records = json.loads((out / "detections.json").read_text())
    assert code == 0 and [Path(r["image"]).name for r in records] == ["d.png"], stdout
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["d.png"], "no stale drawing of a, b, c"
    assert len((out / "detections.jsonl").read_text().splitlines()) == 1

    (out / "annotated" / "d.png").write_bytes(b"edited by the user")  # ours once, changed since
    (out / "notes.txt").write_text("mine")
    code, _, err = run(["detect", str(first), "--random-weights", "--out", str(out)], capsys)
    assert code == 2 and "annotated/d.png, notes.txt" in err and "left alone" in err
    assert (out / "annotated" / "d.png").read_bytes() == b"edited by the user"
    assert (out / "notes.txt").read_text() == "mine"


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_detect_never_claims_a_file_saved_into_its_folder_mid_run(tmp_path, capsys, monkeypatch):
    """A file the user saves into --out while detect runs is not the run's: the next run stops at it."""
    import anchordetr_trt.detect as detect_module

    _fixed_model(monkeypatch)
    out, images = tmp_path / "out", _write_images(tmp_path / "images", {"a.png": (40, 50)})
    detect_files = detect_module.detect_files

    def saving_mid_run(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "mine.txt").write_text("saved by the user during the run")
        yield from detect_files(*args, **kwargs)

    monkeypatch.setattr(detect_module, "detect_files", saving_mid_run)
    assert run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)[0] == 0
    monkeypatch.setattr(detect_module, "detect_files", detect_files)
    code, _, err = run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)
    assert code == 2 and "mine.txt" in err and "left alone" in err
    assert (out / "mine.txt").read_text() == "saved by the user during the run"


def test_a_run_that_fails_after_its_checks_leaves_the_earlier_outputs(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    out, images = tmp_path / "out", _write_images(tmp_path / "images", {"a.png": (40, 50)})
    assert run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)[0] == 0
    before = _tree(out)
    monkeypatch.undo()  # the real model loader: it refuses the checkpoint below
    (tmp_path / "notes.pth").write_text("a text file")
    code, _, err = run(
        ["detect", str(images), "--ckpt", str(tmp_path / "notes.pth"), "--out", str(out)], capsys
    )
    assert code == 2 and "not a PyTorch checkpoint" in err
    assert _tree(out) == before, "the earlier run's detections, drawings and record are as they were"


def test_eval_out_never_replaces_a_result_file_edited_since(tmp_path, capsys, monkeypatch):
    ann_file, images = make_synthetic_coco(tmp_path / "coco", num_images=1, seed=0)
    _fixed_model(monkeypatch)
    result = tmp_path / "res.json"
    argv = ["eval", "--random-weights", "--ann-file", str(ann_file), "--image-dir", str(images)]
    argv += ["--out", str(result), "--min-size", "64", "--max-size", "64", "--quiet"]
    assert run(argv, capsys)[0] == 0
    assert run(argv, capsys)[0] == 0, "its own result, unchanged, is replaced"
    edited = {**json.loads(result.read_text()), "note": "my reading of these numbers"}
    result.write_text(json.dumps(edited))
    code, _, err = run(argv, capsys)
    assert code == 2 and "left alone" in err and json.loads(result.read_text()) == edited


@pytest.mark.parametrize(("code", "exit_code"), [(errno.EPIPE, 141), (errno.ENOSPC, 1)])
def test_detect_finishes_its_files_when_stdout_fails(code, exit_code, tmp_path, capsys, monkeypatch):
    """`detect ... | head -n 1` and `detect ... > /dev/full`: the files are complete, and one line
    says what happened to stdout."""

    class Failing(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(code, os.strerror(code))

    _fixed_model(monkeypatch)
    out, images = tmp_path / "out", _write_images(tmp_path / "images", {"a.png": (40, 50), "b.png": (30, 30)})
    monkeypatch.setattr(sys, "stdout", Failing())
    status = main(["detect", str(images), "--random-weights", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == exit_code and len(json.loads((out / "detections.json").read_text())) == 2
    assert len(err) == 1 and "stdout" in err[0] and "the command itself finished" in err[0], err


def test_detect_on_a_folder_lists_each_file_it_does_not_read_and_why(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    images = _write_images(tmp_path / "images", {"a.jpg": (40, 50), "b.gif": (30, 40)})
    (images / "notes.txt").write_text("not an image")
    (images / "gone.png").symlink_to(tmp_path / "deleted.png")
    (images / "more").mkdir()
    out = tmp_path / "out"
    code, stdout, err = run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)
    records = json.loads((out / "detections.json").read_text())
    assert code == 0 and [Path(r["image"]).name for r in records] == ["a.jpg", "b.gif"], err
    listed = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert listed == {
        str(images / "gone.png"): "a link to a file that does not exist",
        str(images / "more"): "a folder (folders are not searched inside)",
        str(images / "notes.txt"): "not an image file type (.txt); pass it by name to read it anyway",
    }
    assert all(f"skipped {path}" in err for path in listed) and "skipped 3 files" in stdout


@pytest.mark.slow
def test_detect_runs_images_the_resize_takes_past_the_default_range(tmp_path, capsys):
    """The official resize makes 10x2000 7x1400 (short side under 320, long side over 1344): padded up
    to the range's 320, and the range widened to the longest resized side, it runs like any image."""
    images = _write_images(tmp_path / "images", {"strip.png": (10, 2000), "wide.png": (100, 1200)})
    out = tmp_path / "out"
    argv = [
        "detect",
        str(images),
        "--random-weights",
        "--variant",
        "r50-c5",
        "--out",
        str(out),
        "--top-k",
        "2",
    ]
    code, _, err = run([*argv, "--threshold", "0"], capsys)
    assert code == 0, err
    records = json.loads((out / "detections.json").read_text())
    assert [(r["height"], r["width"], len(r["detections"])) for r in records] == [
        (10, 2000, 2),
        (100, 1200, 2),
    ]


def test_detect_refuses_an_image_too_long_to_compile_for_unless_told_to_skip_it(
    tmp_path, capsys, monkeypatch
):
    _fixed_model(monkeypatch)
    images = _write_images(tmp_path / "images", {"a.png": (40, 50), "line.png": (1, 5000)})  # stays 1x5000
    argv = ["detect", str(images), "--random-weights", "--out", str(tmp_path / "out")]
    code, _, err = run(argv, capsys)
    assert code == 2 and "line.png resizes to a side of 5000 pixels" in err and "--skip-bad" in err
    code, _, err = run([*argv, "--skip-bad"], capsys)
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert code == 0 and [Path(r["image"]).name for r in records] == ["a.png"], err
    assert "skipped" in err and "line.png" in err and "pass --skip-bad" not in err  # it was passed


def test_detect_ctrl_c_keeps_the_finished_images(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch, interrupt_at=2)
    images = _write_images(tmp_path / "images", {"a.png": (40, 50), "b.png": (50, 40), "c.png": (40, 40)})
    out = tmp_path / "out"
    code, stdout, err = run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)
    assert code == 130 and "interrupted: the 1 images done so far are in" in err
    [line] = (out / "detections.jsonl").read_text().splitlines()
    assert Path(json.loads(line)["image"]).name == "a.png" and (out / "annotated" / "a.png").is_file()
    assert "a.png: 1 detections" in stdout
    _fixed_model(monkeypatch)  # the interrupted run's files are ours: a new run may replace them
    assert run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)[0] == 0


def test_detect_after_a_run_stopped_before_its_first_image_runs_again(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch, interrupt_at=1)  # nothing drawn yet: annotated/ is empty
    images = _write_images(tmp_path / "images", {"a.png": (40, 50)})
    out = tmp_path / "out"
    assert run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)[0] == 130
    _fixed_model(monkeypatch)
    code, _, err = run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "annotated" / "a.png").is_file()


def test_detect_skip_bad_reports_unreadable_files_and_goes_on(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    images = _write_images(tmp_path / "images", {"a.png": (40, 50), "c.png": (50, 40)})
    (images / "b.jpg").write_text("not an image")
    truncated = images / "d.png"
    _write_images(tmp_path / "whole", {"d.png": (60, 60)})
    truncated.write_bytes((tmp_path / "whole" / "d.png").read_bytes()[:200])  # header fine, pixels cut off
    out = tmp_path / "out"

    code, _, err = run(
        ["detect", str(images), "--random-weights", "--out", str(out), "--batch-size", "2"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and f"cannot read image {images / 'b.jpg'}" in err
    assert err.rstrip().endswith("; or --skip-bad to leave it out"), err
    argv = ["detect", str(images), "--random-weights", "--out", str(out), "--batch-size", "2"]
    code, _, err = run([*argv, "--skip-bad"], capsys)
    records = json.loads((out / "detections.json").read_text())
    assert code == 0 and [Path(r["image"]).name for r in records] == ["a.png", "c.png"]
    assert f"skipped {images / 'b.jpg'}" in err and f"skipped {truncated}" in err
    assert [line.split("\t")[0] for line in (out / "skipped.txt").read_text().splitlines()] == [
        str(images / "b.jpg"),
        str(truncated),
    ]


def test_detect_skip_bad_with_no_image_left_is_an_error_and_keeps_the_earlier_run(
    tmp_path, capsys, monkeypatch
):
    _fixed_model(monkeypatch)
    images, out = _write_images(tmp_path / "images", {"a.png": (40, 50)}), tmp_path / "out"
    assert run(["detect", str(images), "--random-weights", "--out", str(out)], capsys)[0] == 0
    before = _tree(out)
    (tmp_path / "cut.png").write_bytes((images / "a.png").read_bytes()[:300])  # header whole, pixels cut
    code, _, err = run(
        ["detect", str(tmp_path / "cut.png"), "--random-weights", "--skip-bad", "--out", str(out)], capsys
    )
    assert code == 2 and "error: none of the 1 image files could be read" in err and _tree(out) == before


def test_detect_names_a_float_image_out_of_range_and_skip_bad_skips_it(tmp_path, capsys, monkeypatch):
    """A float TIFF of 0..255 values: its file is named (not its place in a batch) and --skip-bad skips it."""
    _fixed_model(monkeypatch)
    images = _write_images(tmp_path / "images", {"a.png": (40, 50)})
    Image.fromarray(np.full((30, 40), 200.0, dtype=np.float32), mode="F").save(images / "b.tif")
    argv = ["detect", str(images), "--random-weights", "--out", str(tmp_path / "out")]
    code, _, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"image {images / 'b.tif'}: float values must lie in [0, 1], got [200, 200]" in err
    code, _, err = run([*argv, "--skip-bad"], capsys)
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert code == 0 and [Path(r["image"]).name for r in records] == ["a.png"] and "skipped" in err, err


def test_detect_names_an_image_past_pillows_size_limit_and_the_fix(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warns past 1000 pixels, refuses past 2000
    images = _write_images(tmp_path / "images", {"a.png": (30, 40), "b.png": (50, 50)})
    with warnings.catch_warnings(record=True) as caught:  # restores the filters the command sets
        warnings.simplefilter("always")
        code, _, err = run(
            ["detect", str(images), "--random-weights", "--out", str(tmp_path / "out")], capsys
        )
    assert code == 2 and err.count("\n") == 1, err
    assert f"cannot read image {images / 'b.png'}" in err and "raise PIL.Image.MAX_IMAGE_PIXELS" in err
    assert not [w for w in caught if w.category is Image.DecompressionBombWarning]  # a.png: read quietly


def test_detect_without_skip_bad_stops_at_a_truncated_file_naming_it(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    images = _write_images(tmp_path / "images", {"a.png": (40, 50), "b.png": (60, 60)})
    (images / "b.png").write_bytes((images / "b.png").read_bytes()[:200])
    code, _, err = run(["detect", str(images), "--random-weights", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and f"cannot read image {images / 'b.png'}" in err


def test_detect_applies_exif_orientation(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    stored = np.zeros((40, 80, 3), dtype=np.uint8)  # stored 80 wide, 40 high; the camera was turned
    stored[:, :40] = 255  # the stored left half is white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "images").mkdir()
    Image.fromarray(stored).save(tmp_path / "images" / "phone.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    assert run(["detect", str(tmp_path / "images"), "--random-weights", "--out", str(out)], capsys)[0] == 0
    [record] = json.loads((out / "detections.json").read_text())
    assert (record["width"], record["height"]) == (40, 80), "sizes are those of the upright photo"
    assert record["detections"][0]["box"] == pytest.approx([0.0, 0.0, 20.0, 80.0])
    with Image.open(record["annotated"]) as drawn:
        pixels = np.asarray(drawn.convert("L"), dtype=float)
    assert drawn.size == (40, 80) and pixels[5:35, 25:35].mean() > 200 > pixels[45:75, 25:35].mean(), (
        "drawn on the upright image: the white half is now on top"
    )


@pytest.mark.parametrize("quiet", [False, True])
def test_detect_progress_bar_on_a_terminal_unless_quiet(quiet, tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    images = _write_images(tmp_path / "images", {"a.png": (40, 50), "b.png": (50, 40)})
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["detect", str(images), "--random-weights", "--out", str(tmp_path / "out")]
    code, stdout, err = run([*argv, "--quiet"] if quiet else argv, capsys)
    assert code == 0 and ("2/2" in err) != quiet and ("a.png: 1 detections" in stdout) != quiet
    assert "2 images in" in stdout


@pytest.mark.no_gpu
def test_info_on_cuda_without_a_gpu_says_none_is_visible(capsys):
    code, text, _ = run(["info", "--device", "cuda"], capsys)
    assert code == 0 and "backends on cuda: none (no CUDA GPU is visible: use --device cpu" in text
    assert "picks" not in text and "eager    yes" not in text
    code, out, _ = run(["info", "--device", "cuda", "--json"], capsys)
    report = json.loads(out)
    assert report["auto"] is None and report["backends"] == {} and "no CUDA GPU" in report["device_problem"]


def test_bench_where_nothing_can_be_measured_fails_and_says_why(tmp_path, capsys, cache_env):
    out = tmp_path / "bench"
    argv = ["bench", "--device", "cpu", "--variant", "r50-c5", "--size", "64", "--batch", "1", "--iters", "1"]
    argv += [
        "--warmup",
        "0",
        "--backends",
        "torch-compile",
        "--no-profile",
        "--no-startup",
        "--out",
        str(out),
    ]
    code, _, err = run(argv, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("anchordetr-trt bench: error: nothing could be measured (")
    assert "needs a CUDA GPU" in last and not (out / "bench.png").exists()


def test_eval_skip_bad_asks_evaluate_coco_and_lists_what_was_skipped(tmp_path, capsys, monkeypatch):
    ann_file, images = make_synthetic_coco(tmp_path / "coco", num_images=1, seed=0)
    seen = {}

    def evaluate_coco(model, ann, image_dir, **options):
        seen.update(options)
        stats = dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"), 0.5)
        skipped = [{"image_id": 2, "file": str(images / "000002.png"), "error": "truncated"}]  # as it writes
        return {**stats, "num_images": 1, "timing": {"images_per_s": 1.0}, "skipped_images": skipped}

    _fixed_model(monkeypatch)
    monkeypatch.setattr("anchordetr_trt.eval.evaluate_coco", evaluate_coco)
    argv = ["eval", "--random-weights", "--ann-file", str(ann_file), "--image-dir", str(images), "--skip-bad"]
    code, out, err = run(argv, capsys)
    assert code == 0 and seen["skip_bad_images"] is True and "AP 0.500" in out
    assert f"skipped {images / '000002.png'}: truncated" in err


@pytest.mark.parametrize(
    ("num_images", "rate", "lines"),
    [
        (1, 0.0458, ["1 image, fixed fp32:", "0.0458 images/s end to end"]),
        (2, 3.14159, ["2 images, fixed fp32:", "3.14 images/s end to end"]),
        (500, 1234.56, ["500 images, fixed fp32:", "1234.6 images/s end to end"]),
    ],
)
def test_eval_prints_its_count_and_a_small_rate_readably(
    num_images, rate, lines, tmp_path, capsys, monkeypatch
):
    ann_file, images = make_synthetic_coco(tmp_path / "coco", num_images=1, seed=0)
    stats = dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"), 0.5)
    result = {**stats, "num_images": num_images, "timing": {"images_per_s": rate}}
    _fixed_model(monkeypatch)
    monkeypatch.setattr("anchordetr_trt.eval.evaluate_coco", lambda *args, **kwargs: result)
    argv = ["eval", "--random-weights", "--ann-file", str(ann_file), "--image-dir", str(images)]
    code, out, _ = run(argv, capsys)
    printed = out.splitlines()
    assert code == 0 and printed[0].startswith(lines[0]) and printed[1] == lines[1], out


def test_detect_names_both_files_it_writes_and_where_out_defaulted_to(tmp_path, capsys, monkeypatch):
    _fixed_model(monkeypatch)
    images = _write_images(tmp_path / "images", {"a.png": (40, 50)})
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run(["detect", str(images), "--random-weights", "--no-draw", "--quiet"], capsys)
    out = Path("out") / "detect"
    assert code == 0 and (tmp_path / out / "detections.jsonl").is_file()
    assert stdout.strip().endswith(
        f"wrote {out / 'detections.jsonl'} and {out / 'detections.json'} (--out defaults to {out})"
    ), stdout
    code, stdout, _ = run(["detect", str(images), "--random-weights", "--quiet", "--out", "o"], capsys)
    assert code == 0 and "1 image in " in stdout and "--out defaults" not in stdout, stdout
    assert f"wrote {Path('o') / 'detections.jsonl'} and {Path('o') / 'detections.json'} and" in stdout


def test_library_errors_are_worded_in_flags():
    args = cli._parser().parse_args(["detect", "x.png", "--random-weights"])
    assert (
        cli.in_flags("pass variant='r50-c5', 'r50-dc5' or 'r101-c5'; use device='cpu'", None, args)
        == "pass --variant r50-c5, r50-dc5 or r101-c5; use --device cpu"
    )
    assert cli.in_flags("min_shape (1, 0, 0) is too small", "min_shape", args) == (
        "min_shape (1, 0, 0) is too small"
    ), "detect has no --min-shape: nothing to map it to"
    assert cli.in_flags("must be >= 1, got 0", "top_k", args) == "--top-k: must be >= 1, got 0"
