"""The ``anchordetr-trt`` command line: run in-process through ``main(argv)``, plus real processes once."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anchordetr_trt.backends.tensorrt import tensorrt_status
from anchordetr_trt.cli import main
from anchordetr_trt.demo import random_model
from anchordetr_trt.detect import detect
from anchordetr_trt.draw import draw_detections
from anchordetr_trt.eval import COCO_CLASSES, make_synthetic_coco

COMMANDS = ["info", "detect", "eval", "bench", "compile", "demo"]
SMALL = ["--variant", "r50-c5", "--min-size", "320", "--max-size", "512"]  # the quickest model and inputs
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by `make gpu`)")


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``anchordetr-trt argv``, run in this process."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's --help and usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


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
    (folder / "notes.txt").write_text("not an image: the folder scan skips it")
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
    trt_ok, trt_reason = tensorrt_status()
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
        with Image.open(record["annotated"]) as annotated:
            assert annotated.size == (record["width"], record["height"]) and annotated.mode == "RGB"
            assert (np.asarray(annotated) != plain).any()
    assert "3 images" in stdout and stdout.count(": 7 detections") == 3


class _FixedDetector:
    """Stands in for a model: the same logits and boxes for every image, to check what detect() keeps."""

    def __init__(self, logits: torch.Tensor, boxes: torch.Tensor):
        self.logits, self.boxes = logits, boxes
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def __call__(self, images, mask):
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_bench_without_gpu_says_it_needs_one(tmp_path, capsys):
    code, _, err = run(["bench", "--out", str(tmp_path)], capsys)
    assert code == 2 and "needs a CUDA GPU" in err and "--device cpu" in err


def test_eval_on_synthetic_coco(tmp_path, capsys):
    ann_file, images = make_synthetic_coco(tmp_path / "coco", num_images=2, seed=1)
    result_file = tmp_path / "eval.json"
    argv = ["eval", "--random-weights", *SMALL, "--ann-file", str(ann_file), "--image-dir", str(images)]
    code, out, _ = run([*argv, "--batch-size", "2", "--out", str(result_file)], capsys)
    result = json.loads(result_file.read_text())
    assert code == 0 and result["num_images"] == 2 and 0 <= result["AP"] <= 1
    assert f"AP {result['AP']:.3f}" in out


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
        with Image.open(record["annotated"]) as annotated:
            assert annotated.size == (record["width"], record["height"])
    markdown = (out / "report.md").read_text()
    assert "Random weights detect nothing meaningful" in markdown and markdown.count("](annotated/") == 2
    assert "random weights detect nothing meaningful" in stdout
    assert json.loads((out / "detections.json").read_text()) == report["images"]


def _corrupt_checkpoint(folder: Path) -> Path:
    path = folder / "corrupt.pth"
    path.write_bytes(
        b"PK\x03\x04" + bytes(range(256)) * 4
    )  # a zip header, then garbage: a truncated download
    return path


def _not_an_image(folder: Path) -> Path:
    path = folder / "fake.png"
    path.write_text("this is text")
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["detect", "{tmp}/missing.png", "--random-weights"], "no such image file or folder"),
        (["detect", "{empty}", "--random-weights"], "has no images"),
        (["detect", "{fake}", "--random-weights"], "cannot read"),
        (["detect", "{images}", "--ckpt", "{tmp}/missing.pth"], "checkpoint file not found"),
        (["detect", "{images}", "--ckpt", "{corrupt}"], "truncated or corrupt"),
        (["detect", "{images}", "--random-weights", "--backend", "onnx"], "invalid choice: 'onnx'"),
        (["detect", "{images}"], "one of the arguments --ckpt --random-weights is required"),
        (["detect", "{images}", "--random-weights", "--threshold", "2"], "--threshold must lie in [0, 1]"),
        (
            ["eval", "--random-weights", "--ann-file", "{tmp}/none.json", "--image-dir", "{tmp}"],
            "no such file",
        ),
        (["compile", "--random-weights", "--backend", "eager", "--out", "{tmp}/c"], "nothing to compile"),
        (["bench", "--device", "cpu", "--size", "10"], "expected HxW or S"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(argv, message, image_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    paths = {"tmp": tmp_path, "empty": tmp_path / "empty", "images": image_dir}
    paths |= {"corrupt": _corrupt_checkpoint(tmp_path), "fake": _not_an_image(tmp_path)}
    code, _, err = run([arg.format(**paths) for arg in argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and message in lines[-1] and "error:" in lines[-1]
    assert sum("error" in line for line in lines) == 1 and "Traceback" not in err


@pytest.mark.skipif(tensorrt_status()[0], reason="checks the message where TensorRT cannot run")
def test_tensorrt_without_tensorrt_is_explained(image_dir, capsys):
    code, _, err = run(
        ["detect", str(image_dir), "--random-weights", *SMALL, "--backend", "tensorrt"], capsys
    )
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("anchordetr-trt detect: error: backend='tensorrt' cannot run here")
    assert tensorrt_status()[1] in last and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        main(["detect", str(tmp_path / "missing.png"), "--random-weights", "--debug"])


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


@gpu
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
