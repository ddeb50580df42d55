"""The tensorrt backend end to end: an FP16 engine of AnchorDETR (deterministic random weights) whose
anchordetr ops run as this package's plugins, against the eager FP32 model.

These tests run wherever Torch-TensorRT imports (``make gpu`` on a machine with TensorRT); elsewhere
each is skipped with the reason ``backends.tensorrt.status`` gives. One engine is built per session (a small
dynamic range keeps the build short); the save/load test reloads it from the cache directory.
"""

import copy
import logging

import pytest
import torch

import anchordetr_trt as at
from anchordetr_trt.backends import tensorrt as trt_backend
from anchordetr_trt.backends.tensorrt import ops_outside_tensorrt
from anchordetr_trt.converters.specs import NAMESPACE, PLUGINS
from anchordetr_trt.export import example_inputs
from anchordetr_trt.testing import assert_detections_close

AVAILABLE, REASON = trt_backend.status(torch.device("cuda"))
pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(not AVAILABLE, reason=f"TensorRT unavailable: {REASON}"),
]

MIN_SHAPE, OPT_SHAPE, MAX_SHAPE = (1, 320, 320), (2, 384, 448), (2, 448, 512)
SHAPES = [MIN_SHAPE, OPT_SHAPE, (2, 352, 500), MAX_SHAPE]  # example_inputs pads the last image


def compile_engine(model, cache_dir):
    return at.compile(
        copy.deepcopy(model),
        backend="tensorrt",
        precision="fp16",
        min_shape=MIN_SHAPE,
        opt_shape=OPT_SHAPE,
        max_shape=MAX_SHAPE,
        device="cuda",
        cache_dir=cache_dir,
    )


@pytest.fixture(scope="module")
def eager():
    torch.manual_seed(0)
    return at.build_model(at.VARIANTS["r50-c5"]).cuda()  # float32, plain PyTorch ops


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def engine(eager, cache_dir):
    return compile_engine(eager, cache_dir)


def tensorrt_module(engine) -> torch.nn.Module:
    """The Torch-TensorRT module inside the compiled wrapper."""
    return engine.runner.engine


def test_every_op_has_a_registered_converter(engine):
    from torch_tensorrt.dynamo.conversion import DYNAMO_CONVERTERS

    for op in PLUGINS:
        assert getattr(getattr(torch.ops, NAMESPACE), op).default in DYNAMO_CONVERTERS, op


def test_the_engine_runs_every_anchordetr_op(engine):
    assert ops_outside_tensorrt(tensorrt_module(engine)) == []


@pytest.mark.parametrize("shape", SHAPES)
def test_fp16_engine_matches_eager_fp32(engine, eager, shape):
    images, mask = example_inputs(shape, "cuda")
    with torch.no_grad():
        expected = eager(images, mask)
    assert_detections_close(engine(images, mask), expected, precision="fp16", msg=f"engine at {shape}")


def test_the_engine_runs_its_embedded_kernels_without_python(engine, monkeypatch):
    """The plugins' kernels were compiled into the engine when it was built: running it compiles
    nothing and calls no Python plugin code (made to fail here)."""
    from anchordetr_trt.converters import qdp

    def fail(*args, **kwargs):
        raise AssertionError("the engine called back into the plugins' Python code")

    monkeypatch.setattr(qdp, "compile_kernel", fail)
    monkeypatch.setattr(qdp, "decode_attrs", fail)
    images, mask = example_inputs(OPT_SHAPE, "cuda")
    assert torch.isfinite(engine(images, mask)["pred_boxes"]).all()


@pytest.mark.parametrize("shape", [(3, 320, 320), (1, 480, 320), (1, 320, 640)])
def test_inputs_outside_the_range_raise_input_error(engine, shape):
    """The compiled module checks the range before the engine sees the input (the raw Torch-TensorRT
    module makes no such promise)."""
    images, mask = example_inputs(shape, "cuda")
    with pytest.raises(at.InputError, match="outside"):
        engine(images, mask)


def test_engine_saves_and_loads_with_equal_outputs(engine, eager, cache_dir, caplog):
    saved = list((cache_dir / "tensorrt").glob("*.pt2"))
    assert len(saved) == 1, saved
    with caplog.at_level(logging.INFO, logger="anchordetr_trt.backends.tensorrt"):
        loaded = compile_engine(eager, cache_dir)
    assert any("loading" in record.message for record in caplog.records)
    for shape in (OPT_SHAPE, MAX_SHAPE):
        images, mask = example_inputs(shape, "cuda")
        built, reloaded = engine(images, mask), loaded(images, mask)
        for key in built:
            torch.testing.assert_close(reloaded[key], built[key], atol=1e-3, rtol=0)
