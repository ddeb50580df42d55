"""torch.export of AnchorDETR with dynamic batch, height and width.

Height and width are exported as multiples of 32 (``SIZE_MULTIPLE``): on that grid every size the
backbone computes is exact, so the export carries no shape guard and passes on every supported torch
(torch 2.11 rejects free height and width: its guards on the strided convolutions' sizes cannot be
proven). Callers pad inputs up to the grid with masked pixels, as ``CompiledAnchorDETR`` does.
``trace_plan`` is the one rule from a shape range to what an exporter is given; ``export_model``
and the ONNX export (``onnx_export``) both use it.
"""

from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from .spec import SIZE_MULTIPLE, Shape, check_shape_range, padded_shape

# Where batch, height and width sit in each input: images [B, 3, H, W], mask [B, H, W].
_AXES = {"images": (0, 2, 3), "mask": (0, 1, 2)}


def example_inputs(shape: Shape, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Random images [B, 3, H, W] and a mask with some padding on the last image, for tracing."""
    batch, height, width = shape
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=generator).to(device=device, dtype=dtype)
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    mask[-1, height - height // 4 :, :] = True
    mask[-1, :, width - width // 4 :] = True
    return images, mask


def trace_plan(
    min_shape: Shape, max_shape: Shape, opt_shape: Shape | None = None
) -> tuple[dict[str, dict[int, Any]], Shape]:
    """(dynamic_shapes, example shape) for exporting ``forward(images, mask)`` over a range.

    ``dynamic_shapes`` maps "images" and "mask" to their dynamic axes: batch in [min, max], height
    and width as ``32 * Dim`` over [min, max] rounded up to 32; a dimension with one value in its
    range (say batch 4..4, or width 800..800) is left out, i.e. static. The example shape to trace
    at is the padded ``opt_shape`` (default: the padded minimum), moved one step (1, or 32) above
    the minimum in each dynamic dimension where it sits on it, so that no dimension is specialized
    to its example.
    """
    check_shape_range(min_shape, max_shape, opt_shape)
    low, high = padded_shape(min_shape), padded_shape(max_shape)
    at = padded_shape(opt_shape) if opt_shape is not None else low
    dims, example = {}, []
    for axis, (name, lo, value, hi) in enumerate(
        zip(("batch", "height", "width"), low, at, high, strict=True)
    ):
        step = 1 if name == "batch" else SIZE_MULTIPLE
        if lo == hi:
            example.append(lo)
            continue
        dim = Dim(name if step == 1 else f"{name}_blocks", min=lo // step, max=hi // step)
        dims[axis] = dim if step == 1 else step * dim
        example.append(value if value > lo else lo + step)
    dynamic_shapes = {name: {axes[axis]: dim for axis, dim in dims.items()} for name, axes in _AXES.items()}
    return dynamic_shapes, tuple(example)


def export_model(
    model: nn.Module, *, min_shape: Shape = (1, 320, 320), max_shape: Shape = (8, 1344, 1344)
) -> ExportedProgram:
    """Export ``model(images, mask)`` for batch in [min, max] and height and width multiples of 32 in
    [min, max] rounded up to 32 (the program accepts only sizes on that grid); see ``trace_plan``."""
    dynamic_shapes, example = trace_plan(min_shape, max_shape)
    param = next(model.parameters())
    images, mask = example_inputs(example, param.device, param.dtype)
    with torch.no_grad():
        return torch.export.export(model, (images, mask), dynamic_shapes=dynamic_shapes)
