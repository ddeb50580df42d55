"""torch.export of the whole model with dynamic batch, height and width."""

import pytest
import torch

import anchordetr_trt as at
from anchordetr_trt.export import example_inputs, export_model, trace_plan, traced_shape
from anchordetr_trt.spec import check_shape_range


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return at.build_model(at.VARIANTS["r50-dc5"])


@pytest.fixture(scope="module")
def exported(model):
    return export_model(model, min_shape=(1, 64, 64), opt_shape=(1, 160, 100), max_shape=(4, 320, 320))


def test_traced_at_the_opt_shape(exported):
    """Torch-TensorRT tunes the engine for the shape the program was traced at: the opt shape (on the
    32-pixel grid), batch 1 included, while batch stays dynamic."""
    assert traced_shape(exported) == (1, 160, 128)


@pytest.mark.slow
def test_dimensions_stay_dynamic(exported):
    ranges = sorted((r.lower, r.upper) for r in exported.range_constraints.values())
    # batch, and height and width in blocks of 32 (the program's sizes are 32 * blocks)
    assert (1, 4) in ranges and ranges.count((2, 10)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 160, 96), (4, 320, 320), (2, 96, 256)])
def test_exported_equals_eager(model, exported, shape):
    """On the 32-pixel grid, the only sizes the program accepts (torch 2.11 guards off-grid sizes)."""
    images, mask = example_inputs(shape)
    with torch.no_grad():
        expected = model(images, mask)
        got = exported.module()(images, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_exported_program_rejects_shapes_outside_the_range(exported):
    images, mask = example_inputs((1, 352, 64))
    with pytest.raises(Exception, match="<= 320"):  # the bound on height; the type varies with torch
        exported.module()(images, mask)


@pytest.mark.parametrize(
    ("min_shape", "max_shape", "opt_shape"),
    [
        ((1, 320), (8, 1344, 1344), None),
        ((1, 16, 320), (8, 1344, 1344), None),
        ((2, 320, 320), (1, 1344, 1344), None),
        ((1, 320, 320), (8, 1344, 1344), (1, 1400, 800)),
    ],
)
def test_bad_shape_ranges(min_shape, max_shape, opt_shape):
    with pytest.raises(at.InputError):
        check_shape_range(min_shape, max_shape, opt_shape)


@pytest.mark.slow
def test_a_dimension_with_one_value_stays_static():
    """Batch 2..2 and width 96..96 (a fixed-batch deployment): only the height varies."""
    torch.manual_seed(0)
    model = at.build_model(at.VARIANTS["r50-c5"])
    exported = export_model(model, min_shape=(2, 64, 96), max_shape=(2, 128, 96))
    assert sorted((r.lower, r.upper) for r in exported.range_constraints.values()) == [(2, 4), (64, 128)]
    for shape in [(2, 64, 96), (2, 128, 96)]:
        images, mask = example_inputs(shape)
        with torch.no_grad():
            torch.testing.assert_close(
                exported.module()(images, mask), model(images, mask), atol=1e-5, rtol=0
            )


@pytest.mark.parametrize(
    ("min_shape", "opt_shape", "max_shape", "example"),
    [
        ((1, 320, 320), None, (8, 1344, 1344), (1, 320, 320)),  # the minimum without an opt
        ((1, 320, 320), (1, 800, 800), (8, 1344, 1344), (1, 800, 800)),  # opt, batch 1 included
        ((1, 320, 320), (4, 790, 1333), (8, 1344, 1344), (4, 800, 1344)),  # padded to 32
        ((2, 64, 96), (2, 96, 96), (2, 128, 96), (2, 96, 96)),  # static batch and width stay put
    ],
)
def test_trace_plan_traces_at_the_padded_opt(min_shape, opt_shape, max_shape, example):
    dynamic_shapes, got = trace_plan(min_shape, max_shape, opt_shape)
    assert got == example
    static = [axis for axis, (lo, hi) in enumerate(zip(min_shape, max_shape, strict=True)) if lo == hi]
    assert sorted(dynamic_shapes) == ["images", "mask"]
    assert sorted(dynamic_shapes["mask"]) == [axis for axis in range(3) if axis not in static]
    assert sorted(dynamic_shapes["images"]) == [(0, 2, 3)[axis] for axis in range(3) if axis not in static]
