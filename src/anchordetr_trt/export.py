"""torch.export of AnchorDETR with dynamic batch, height and width.

Height and width are exported as multiples of 32 (``SIZE_MULTIPLE``): on that grid every size the
backbone computes is exact, so the export carries no shape guard and passes on every supported torch
(torch 2.11 rejects free height and width: its guards on the strided convolutions' sizes cannot be
proven). Callers pad inputs up to the grid with masked pixels, as ``CompiledAnchorDETR`` does.

``trace_plan`` is the one rule from a shape range to what an exporter is given, and ``tracing`` the
one setting it traces under; ``export_model`` and the ONNX export (``onnx_export``) both use them.
Programs are traced at the range's opt shape: Torch-TensorRT takes an engine's optimization-profile
opt from the values the program was traced at (``extract_var_range_info`` in
torch_tensorrt/dynamo/utils.py, 2.11 to 2.14), not from a user's ``Input``. Tracing runs with torch's
``backed_size_oblivious``, so that an opt batch of 1 stays a dynamic dimension instead of being
specialized to 1.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.export import Dim, ExportedProgram

from .spec import DEFAULT_MAX_SHAPE, DEFAULT_MIN_SHAPE, SIZE_MULTIPLE, Shape, check_shape_range, padded_shape

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
    range (say batch 4..4, or width 800..800) is left out, i.e. static. The example is ``opt_shape``
    (default: ``min_shape``) rounded up to 32: trace it under ``tracing()``.
    """
    check_shape_range(min_shape, max_shape, opt_shape)
    low, high = padded_shape(min_shape), padded_shape(max_shape)
    dims = {}
    for axis, (name, lo, hi) in enumerate(zip(("batch", "height", "width"), low, high, strict=True)):
        if lo == hi:
            continue
        if name == "batch":
            dims[axis] = Dim(name, min=lo, max=hi)
        else:
            dims[axis] = SIZE_MULTIPLE * Dim(
                f"{name}_blocks", min=lo // SIZE_MULTIPLE, max=hi // SIZE_MULTIPLE
            )
    dynamic_shapes = {name: {axes[axis]: dim for axis, dim in dims.items()} for name, axes in _AXES.items()}
    return dynamic_shapes, padded_shape(opt_shape or min_shape)


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """What exports trace under: no autograd, and size-1 examples kept dynamic (backed_size_oblivious)."""
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        yield


def traced_shape(program: ExportedProgram) -> Shape:
    """(batch, height, width) of the images the program was traced at: the hints of its dynamic sizes,
    which Torch-TensorRT turns into the engine profile's opt."""
    images = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "images")
    sizes = images.meta["val"].shape
    return tuple(int(s.node.hint) if isinstance(s, torch.SymInt) else int(s) for s in (sizes[0], *sizes[2:]))


def export_model(
    model: nn.Module,
    *,
    min_shape: Shape = DEFAULT_MIN_SHAPE,
    opt_shape: Shape | None = None,
    max_shape: Shape = DEFAULT_MAX_SHAPE,
) -> ExportedProgram:
    """Export ``model(images, mask)`` for batch in [min, max] and height and width multiples of 32 in
    [min, max] rounded up to 32 (the program accepts only sizes on that grid), traced at ``opt_shape``
    (see ``trace_plan``)."""
    dynamic_shapes, example = trace_plan(min_shape, max_shape, opt_shape)
    param = next(model.parameters())
    images, mask = example_inputs(example, param.device, param.dtype)
    with tracing():
        return torch.export.export(model, (images, mask), dynamic_shapes=dynamic_shapes)
