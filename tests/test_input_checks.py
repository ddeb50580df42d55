"""Bad input where it enters the library: one clear AnchorDETRError per kind of input, never a raw
exception from a dependency, never a silent wrong answer."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anchordetr_trt as at
from anchordetr_trt.config import variant_config
from anchordetr_trt.draw import draw_detections
from anchordetr_trt.eval import evaluate_coco, make_synthetic_coco, write_report
from anchordetr_trt.testing import assert_parity, example_batches
from anchordetr_trt.transforms import postprocess, preprocess
from anchordetr_trt.weights import random_model


@pytest.fixture(scope="module")
def model():
    return random_model("r50-c5")


@pytest.fixture(scope="module")
def compiled(model):
    return at.compile(
        model,
        backend="eager",
        device="cpu",
        min_shape=(1, 64, 64),
        opt_shape=(1, 64, 64),
        max_shape=(2, 256, 256),
    )


@pytest.fixture(scope="module")
def batch():
    return example_batches([[(64, 80)]], min_size=64, max_size=80)[0]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=1, seed=0)


def _edited(fixtures, key: str, value) -> Path:
    """A copy of the synthetic annotation file whose first annotation has ``key`` set to ``value``."""
    data = json.loads(fixtures["coco"][0].read_text())
    data["annotations"][0][key] = value
    path = fixtures["tmp_path"] / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _closed_image(tmp_path) -> Image.Image:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:  # closed at the end of the block, never loaded
        pass
    return image


class _NeverCalled:
    """A model whose config says its 91 classes, and that must not run."""

    config = at.AnchorDETRConfig()

    def __call__(self, images, mask):
        raise AssertionError("the model ran before the input was checked")


_META_OUTPUTS = {
    "pred_logits": torch.zeros(1, 5, 91, device="meta"),
    "pred_boxes": torch.zeros(1, 5, 4, device="meta"),
}
_OUTPUTS = {"pred_logits": torch.zeros(1, 3, 91), "pred_boxes": torch.full((1, 3, 4), 0.5)}
_DETECTION = {"label": 1, "name": "person", "score": 0.9, "box": [2.0, 2.0, 10.0, 8.0]}
_REPORT_KEYS = ("names", "models", "settings", "agreement", "delta", "problems", "num_images", "ann_file")

# name -> (call, the exception class, a fragment of its message); the call gets the fixtures as a dict.
CASES = {
    # silent wrong answers
    "plain model, a mask of padding only": (
        lambda f: f["model"](f["batch"][0], torch.ones_like(f["batch"][1])),
        at.InputError,
        "marks every pixel of image 0 as padding",
    ),
    "plain model, NaN pixels (every output would be NaN)": (
        lambda f: f["model"](torch.full_like(f["batch"][0], math.nan), f["batch"][1]),
        at.InputError,
        "images have NaN or infinite pixels",
    ),
    "plain model, 0..255 float pixels (not normalized: wrong detections)": (
        lambda f: f["model"](f["batch"][0] * 0 + 255.0, f["batch"][1]),
        at.InputError,
        "images have pixels from 255 to 255, where normalized ones lie in [-2.12, 2.64]",
    ),
    "compiled model, 0..255 float pixels": (
        lambda f: f["compiled"](torch.full_like(f["batch"][0], -40.0), f["batch"][1]),
        at.InputError,
        "normalize them as preprocess() does",
    ),
    "evaluate_coco, an annotation box outside its image": (
        lambda f: evaluate_coco(
            _NeverCalled(), _edited(f, "bbox", [5000, 10, 5, 5]), f["coco"][1], progress=False
        ),
        at.InputError,
        "annotations[0] has bbox [5000, 10, 5, 5], which lies outside its image",
    ),
    "preprocess, a size that would exhaust memory": (
        lambda f: preprocess(np.zeros((40, 50, 3), np.uint8), min_size=10**6, max_size=10**6),
        at.InputError,
        "past the 8192-pixel side",
    ),
    "assert_parity on 0..255 uint8 images": (
        lambda f: assert_parity(f["model"], f["model"], (f["batch"][0] * 50).to(torch.uint8), f["batch"][1]),
        at.InputError,
        "images must be a normalized float tensor",
    ),
    # tensors and models on the meta device
    "preprocess, a meta tensor": (
        lambda f: preprocess(torch.zeros(3, 32, 32, device="meta")),
        at.InputError,
        "image 0 is on the meta device",
    ),
    "postprocess, meta outputs": (
        lambda f: postprocess(_META_OUTPUTS, [[10, 10]]),
        at.InputError,
        "pred_logits is on the meta device",
    ),
    "compiled module, meta images": (
        lambda f: f["compiled"](torch.zeros(1, 3, 64, 64, device="meta")),
        at.InputError,
        "images is on the meta device",
    ),
    "compile, a model on the meta device": (
        lambda f: at.compile(random_model("r50-c5").to("meta"), backend="eager", device="cpu"),
        at.InputError,
        "model has parameters on the meta device",
    ),
    # a PIL image used after its `with Image.open(...)` block
    "preprocess, a closed image": (
        lambda f: preprocess(_closed_image(f["tmp_path"])),
        at.InputError,
        "image 0 was closed before its pixels were read",
    ),
    "draw_detections, a closed image": (
        lambda f: draw_detections(_closed_image(f["tmp_path"]), []),
        at.InputError,
        "image was closed before its pixels were read",
    ),
    "postprocess, outputs of 0 queries": (
        lambda f: postprocess(
            {"pred_logits": torch.zeros(1, 0, 91), "pred_boxes": torch.zeros(1, 0, 4)}, [[9, 9]]
        ),
        at.InputError,
        "outputs have 0 queries",
    ),
    # None where a model is expected
    "evaluate_coco(None)": (
        lambda f: evaluate_coco(None, *f["coco"], progress=False, num_workers=0),
        at.InputError,
        "model is None",
    ),
    "assert_parity(model, None)": (
        lambda f: assert_parity(f["model"], None, *f["batch"]),
        at.InputError,
        "reference is None",
    ),
    "evaluate_coco, a category_map label past the model's classes": (
        lambda f: evaluate_coco(
            _NeverCalled(),
            *f["coco"],
            progress=False,
            num_workers=0,
            category_map={1: 1, 3: 200, 17: 17, 18: 18, 44: 44, 62: 62, 72: 72, 85: 85},
        ),
        at.InputError,
        "category_map maps category 3 to label 200",
    ),
    "make_synthetic_coco into a file": (
        lambda f: make_synthetic_coco(f["afile"], num_images=1),
        at.InputError,
        "a file stands in its path",
    ),
    "make_synthetic_coco, num_images a string": (
        lambda f: make_synthetic_coco(f["tmp_path"] / "c", num_images="3"),
        at.InputError,
        "num_images must be an integer",
    ),
    "write_report, not a report": (
        lambda f: write_report({}, f["tmp_path"] / "r"),
        at.InputError,
        "report lacks 'names'",
    ),
    "write_report, a report with NaN": (
        lambda f: write_report(dict.fromkeys(_REPORT_KEYS, math.nan), f["tmp_path"] / "r"),
        at.InputError,
        "NaN or infinite",
    ),
    "write_report into a file": (
        lambda f: write_report(dict.fromkeys(_REPORT_KEYS, 1), f["afile"]),
        at.InputError,
        "a file stands in its path",
    ),
    "draw_detections, x1 < x0": (
        lambda f: draw_detections(f["image"], [{**_DETECTION, "box": [10, 2, 2, 8]}]),
        at.InputError,
        "detection 0 has box [10, 2, 2, 8]",
    ),
    "draw_detections, a NaN box": (
        lambda f: draw_detections(f["image"], [{**_DETECTION, "box": [math.nan, 2, 10, 8]}]),
        at.InputError,
        "detection 0 has box [nan, 2, 10, 8]",
    ),
    "draw_detections, a detection without name": (
        lambda f: draw_detections(f["image"], [{k: v for k, v in _DETECTION.items() if k != "name"}]),
        at.InputError,
        "detection 0 lacks 'name'",
    ),
    "draw_detections, postprocess() output": (
        lambda f: draw_detections(f["image"], postprocess(_OUTPUTS, [[12, 20]], top_k=2)[0]),
        at.InputError,
        "postprocess() output",
    ),
    "random_model, a seed past 64 bits": (
        lambda f: random_model("r50-c5", 2**70),
        at.InputError,
        "seed must be an integer in 0..18446744073709551615",
    ),
    "compile, a variant other than the model's": (
        lambda f: at.compile(f["model"], variant="r101-dc5", backend="eager"),
        at.CheckpointError,
        "variant='r101-dc5' but the model given is r50-c5: a model's own config decides",
    ),
    "export_onnx, a variant other than the model's": (
        lambda f: at.export_onnx(f["model"], f["tmp_path"] / "m.onnx", variant="r101-dc5"),
        at.CheckpointError,
        "leave variant out, or load the checkpoint with it",
    ),
    "example_batches, an image of height 0": (
        lambda f: example_batches([[(0, 10)]]),
        at.InputError,
        "image_sizes[0][0] must be (height, width) of positive integers",
    ),
}


@pytest.mark.parametrize(("call", "error", "message"), CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_clear_error(call, error, message, model, compiled, batch, coco, tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder")
    fixtures = {
        "model": model, "compiled": compiled, "batch": batch, "coco": coco, "tmp_path": tmp_path,
        "afile": tmp_path / "afile", "image": Image.new("RGB", (20, 12)),
    }  # fmt: skip
    with pytest.raises(error) as caught:
        call(fixtures)
    text = str(caught.value)
    assert message in text and "\n" not in text and "\x1b" not in text, text


@pytest.mark.no_gpu
def test_example_batches_for_a_gpu_that_is_not_there():
    with pytest.raises(at.BackendUnavailableError, match="no CUDA GPU is visible"):
        example_batches(device="cuda")


def test_names_are_case_insensitive_as_release_names_are(model):
    from anchordetr_trt.cli import _parser

    assert variant_config(" R50-C5") == at.VARIANTS["r50-c5"]
    shape = (1, 64, 64)
    compiled = at.compile(
        model,
        backend="Eager",
        precision="FP32",
        device="CPU",
        min_shape=shape,
        opt_shape=shape,
        max_shape=shape,
    )
    assert (compiled.backend, compiled.precision, compiled.device.type) == ("eager", "fp32", "cpu")
    assert (
        _parser().parse_args(["detect", "a.png", "--random-weights", "--variant", "R101-DC5"]).variant
        == "r101-dc5"
    )
