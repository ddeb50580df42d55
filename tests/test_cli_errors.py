"""Bad command lines: each ends with one line on stderr that names the flag or the problem, a non-zero
exit code, no traceback, and every file the user had unchanged."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli as run
from PIL import Image

from anchordetr_trt.eval import make_synthetic_coco

DETECT = ["detect", "{images}", "--random-weights", "--out", "{tmp}/out"]
EVAL = ["eval", "--random-weights", "--ann-file", "{coco}/annotations.json", "--image-dir", "{coco}/images"]
BENCH = [
    "bench",
    "--device",
    "cpu",
    "--variant",
    "r50-c5",
    "--size",
    "64",
    "--batch",
    "1",
    "--out",
    "{bench}",
]
COMPILE = ["compile", "--random-weights", "--out", "{tmp}/compiled"]

CASES = {
    # what the user names
    "missing image": (["detect", "{tmp}/missing.png", "--random-weights"], "no such image file or folder"),
    "folder without images": (["detect", "{empty}", "--random-weights"], "has no images"),
    "text file as image": (["detect", "{fake}", "--random-weights"], "cannot read image"),
    "missing checkpoint": (
        ["detect", "{images}", "--out", "{tmp}/out", "--ckpt", "{tmp}/missing.pth"],
        "checkpoint file not found",
    ),
    "corrupt checkpoint": ([*DETECT[:2], "--ckpt", "{corrupt}"], "truncated or corrupt"),
    "a pickled model (torch.save(model))": (
        [*DETECT[:2], "--ckpt", "{pickled}"],
        "holds a pickled torch.nn.modules.linear.Linear object (saved with torch.save(model)?), not weights",
    ),
    "checkpoint without args": (
        [*DETECT[:2], "--ckpt", "{bare}"],
        "--variant r50-c5, r50-dc5, r101-c5 or r101-dc5",
    ),
    "no weights": (["detect", "{images}"], "one of the arguments --ckpt --random-weights is required"),
    "no command": ([], "the following arguments are required: COMMAND"),
    "unknown command": (["serve"], "invalid choice: 'serve'"),
    "missing annotation file": (
        [*EVAL[:3], "{tmp}/none.json", *EVAL[4:]],
        "--ann-file {tmp}/none.json does not exist: pass a COCO annotation file",
    ),
    "annotation file is a folder": (
        [*EVAL[:3], "{empty}", *EVAL[4:]],
        "--ann-file {empty} is not a file: pass a COCO annotation file",
    ),
    "image folder is a file": (
        [*EVAL[:5], "{afile}", *EVAL[6:]],
        "--image-dir {afile} is not a folder: pass the folder of its images",
    ),
    "checkpoint is a folder": (
        [*DETECT[:2], "--ckpt", "{empty}"],
        "{empty} is a folder: pass a checkpoint file",
    ),
    "missing image folder": (
        [*EVAL[:5], "{tmp}/nowhere", *EVAL[6:]],
        "--image-dir {tmp}/nowhere does not exist: pass the folder of its images",
    ),
    # flag values
    "unknown backend": ([*DETECT, "--backend", "onnx"], "argument --backend: invalid choice: 'onnx'"),
    "unknown variant": ([*DETECT, "--variant", "r18"], "argument --variant: invalid choice: 'r18'"),
    "threshold above 1": ([*DETECT, "--threshold", "2"], "argument --threshold: expected a number in [0, 1]"),
    "threshold NaN": ([*DETECT, "--threshold", "nan"], "argument --threshold: expected a number in [0, 1]"),
    "top-k 0": (
        [*DETECT, "--top-k", "0"],
        "argument --top-k: expected an integer in 1..81900 (queries x classes), got '0'",
    ),
    "top-k -1": (
        [*DETECT, "--top-k", "-1"],
        "argument --top-k: expected an integer in 1..81900 (queries x classes), got '-1'",
    ),
    "top-k past queries x classes": (
        [*DETECT, "--top-k", "100000"],
        "argument --top-k: expected an integer in 1..81900 (queries x classes), got '100000'",
    ),
    "seed past 64 bits": ([*DETECT, "--seed", str(2**64)], "argument --seed: expected an integer in 0.."),
    "min-size past the longest side": (
        [*DETECT, "--min-size", "5000"],
        "argument --min-size: expected a side",
    ),
    "bench size past its longest": (
        [*BENCH, "--size", "2000000"],
        "argument --size: expected HxW or S (32..8192)",
    ),
    "top-k 5.5": (
        [*DETECT, "--top-k", "5.5"],
        "argument --top-k: expected an integer in 1..81900 (queries x classes), got '5.5'",
    ),
    "batch-size 0": ([*DETECT, "--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    "min-size 0": ([*DETECT, "--min-size", "0"], "argument --min-size: expected a side in pixels"),
    "min-size -5": ([*DETECT, "--min-size", "-5"], "argument --min-size: expected a side in pixels"),
    "min-size 64.5": ([*DETECT, "--min-size", "64.5"], "argument --min-size: expected a side in pixels"),
    "max-size 0": ([*DETECT, "--max-size", "0"], "argument --max-size: expected a side in pixels"),
    "max below min": (
        [*DETECT, "--min-size", "800", "--max-size", "400"],
        "--max-size 400 is below --min-size 800",
    ),
    "device tpu": ([*DETECT, "--device", "tpu"], "argument --device: expected cpu, cuda or cuda:N"),
    "device tpu, info": (["info", "--device", "tpu"], "argument --device: expected cpu, cuda or cuda:N"),
    "device cuda:x": (["info", "--device", "cuda:x"], "argument --device: expected cpu, cuda or cuda:N"),
    "eval batch-size 0": ([*EVAL, "--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    "eval max-images 0": ([*EVAL, "--max-images", "0"], "argument --max-images: expected an integer >= 1"),
    "bench batch 0": ([*BENCH, "--batch", "0"], "argument --batch: expected an integer >= 1, got '0'"),
    "bench size 10": ([*BENCH, "--size", "10"], "argument --size: expected HxW or S"),
    "bench iters 0": ([*BENCH, "--iters", "0"], "argument --iters: expected an integer >= 1"),
    "bench warmup -1": ([*BENCH, "--warmup", "-1"], "argument --warmup: expected an integer >= 0"),
    "compile min-shape 1,0,0": ([*COMPILE, "--min-shape", "1,0,0"], "argument --min-shape: expected B,H,W"),
    "compile shape of two": ([*COMPILE, "--opt-shape", "1,320"], "argument --opt-shape: expected B,H,W"),
    "demo num-images 0": (["demo", "--num-images", "0"], "argument --num-images: expected an integer >= 1"),
    "demo seed -1": (
        ["demo", "--seed", "-1"],
        "argument --seed: expected an integer in 0..18446744073709551615, got '-1'",
    ),
    # what cannot run here
    "device cuda without GPU": pytest.param(
        [*DETECT, "--device", "cuda"],
        "--device cuda: no CUDA GPU is visible: use --device cpu",
        marks=pytest.mark.no_gpu,
    ),
    "inductor without GPU": pytest.param(
        [*DETECT, "--backend", "inductor"],
        "--backend inductor needs a CUDA GPU; none is visible: use --backend eager",
        marks=pytest.mark.no_gpu,
    ),
    "fp16 on the CPU": (
        [*DETECT, "--device", "cpu", "--precision", "fp16"],
        "--precision fp16 needs a CUDA GPU",
    ),
    "check fp16 on the CPU": (
        ["check", "--device", "cpu", "--precision", "fp16"],
        "--precision fp16 needs a CUDA GPU",
    ),
    "bench fp16 on the CPU": (
        ["bench", "--device", "cpu", "--precision", "fp16", "--out", "{tmp}/b"],
        "--precision fp16 needs a CUDA GPU",
    ),
    "compile cache dir": (
        [*COMPILE, "--cache-dir", "{tmp}/c"],
        "unrecognized arguments: --cache-dir",  # compile keeps what it compiles in --out
    ),
    "compile warm outside the range": (
        [*COMPILE, "--warm", "16,800,800"],
        "--warm 16,800,800 lies outside --min-shape 1,320,320 .. --max-shape 8,1344,1344",
    ),
    "compile eager": (
        [*COMPILE, "--backend", "eager"],
        "--backend eager has nothing to compile ahead of time",
    ),
    "compile without GPU": pytest.param(
        COMPILE, "compile needs a CUDA GPU (none is visible)", marks=pytest.mark.no_gpu
    ),
    # output locations: refused before any work, the user's files untouched
    "out is a file": ([*DETECT[:3], "--out", "{afile}"], "--out {afile} is a file, not a folder"),
    "out under a file": ([*DETECT[:3], "--out", "{afile}/sub"], "part of its path is a file"),
    "out is the input folder": ([*DETECT[:3], "--out", "{images}"], "holds the input"),
    "inputs inside out": (
        ["detect", "{previous}/annotated", "--random-weights", "--out", "{previous}"],
        "holds the input",
    ),
    "out inside the inputs": ([*DETECT[:3], "--out", "{images}/detections"], "lies inside the input folder"),
    "out holds user files": (
        [*DETECT[:3], "--out", "{user}"],
        "did not write or that changed since (notes.txt)",
    ),
    "cache-dir is a file": ([*DETECT, "--cache-dir", "{afile}"], "--cache-dir {afile} is a file"),
    "cache-dir under a file": (  # before the model loads
        [*DETECT, "--cache-dir", "{afile}/cache"],
        "--cache-dir {afile}/cache: part of its path is a file",
    ),
    "compile min-shape over max-shape": (
        [*COMPILE, "--min-shape", "1,800,800", "--max-shape", "1,320,320"],
        "--min-shape 1,800,800 exceeds --max-shape 1,320,320",
    ),
    "eval out exists": ([*EVAL, "--out", "{afile}"], "exists and anchordetr-trt did not write it"),
    "eval out is a folder": ([*EVAL, "--out", "{empty}"], "is a folder: pass a file name"),
    "eval out is its annotation file, a result of make_synthetic_coco": (
        [*EVAL, "--out", "{coco}/annotations.json"],
        "--out {coco}/annotations.json holds the input",
    ),
    "eval out is a run folder's record": (
        [*EVAL, "--out", "{ours}/.anchordetr-trt-run.json"],
        "is an output folder's record of its files: pass another file name",
    ),
    "bench out holds user files": (BENCH, "(compile_cache/user.bin)"),
    "demo out holds user files": (
        ["demo", "--out", "{user}"],
        "did not write or that changed since (notes.txt)",
    ),
}


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def paths(tmp_path) -> dict[str, Path]:
    """A user's folder: images, a text file posing as one, checkpoints, earlier outputs, a COCO set."""
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.png").write_text("this is text")
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)  # a truncated download
    torch.save({"query_embed.weight": torch.zeros(3, 2)}, tmp_path / "bare.pth")  # no 'args': C5 or DC5?
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pth")  # a whole module, not its state dict
    previous = tmp_path / "previous"  # an earlier run's outputs, not written by this tool
    (previous / "annotated").mkdir(parents=True)
    Image.fromarray(pixels).save(previous / "annotated" / "a.png")
    (previous / "detections.json").write_text("[]")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    (tmp_path / "bench" / "compile_cache").mkdir(parents=True)
    (tmp_path / "bench" / "compile_cache" / "user.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "ours").mkdir()  # an output folder of this tool's, with its record of what it wrote
    (tmp_path / "ours" / ".anchordetr-trt-run.json").write_text('{"tool": "anchordetr-trt", "files": {}}')
    make_synthetic_coco(tmp_path / "coco", num_images=1, seed=0)
    named = (
        "images",
        "empty",
        "fake",
        "afile",
        "corrupt",
        "bare",
        "pickled",
        "previous",
        "user",
        "bench",
        "coco",
        "ours",
    )
    files = {
        "fake": "fake.png",
        "corrupt": "corrupt.pth",
        "bare": "bare.pth",
        "pickled": "pickled.pth",
        "trunc": "trunc.png",
    }
    return {"tmp": tmp_path} | {name: tmp_path / files.get(name, name) for name in named}


@pytest.mark.parametrize(("argv", "message"), CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_leaves_user_files_alone(argv, message, paths, capsys, monkeypatch):
    monkeypatch.chdir(paths["tmp"])  # default output folders land in the test's folder
    before = checksums(paths["tmp"])
    code, _, err = run([arg.format(**paths) for arg in argv], capsys)
    assert code == 2, err  # bad input (README: 2; 1 is for a failure of the work)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and message.format(**paths) in lines[0], lines[0]
    after = checksums(paths["tmp"])
    assert {name: after.get(name) for name in before} == before, "a file of the user's changed or vanished"


def test_a_download_cache_that_is_a_file_is_named_by_its_variable(paths, capsys, monkeypatch):
    """The command line has no download_dir=: the message names $ANCHORDETR_CACHE, which the user set."""
    monkeypatch.setenv("ANCHORDETR_CACHE", str(paths["afile"]))
    argv = ["detect", str(paths["images"]), "--ckpt", "R50-C5", "--out", str(paths["tmp"] / "o")]
    code, _, err = run(argv, capsys)
    assert code == 2 and f"$ANCHORDETR_CACHE {paths['afile']} cannot be created" in err
    assert "download_dir" not in err and len(err.strip().splitlines()) == 1
