"""torch.export of AnchorDETR with dynamic batch, height and width.

Height and width are exported as multiples of 32 (``SIZE_MULTIPLE``): on that grid every size the
backbone computes is exact, so the export carries no shape guard and passes on every supported torch
(torch 2.11 rejects free height and width: its guards on the strided convolutions' sizes cannot be
proven). Callers pad inputs up to the grid with masked pixels, as ``CompiledAnchorDETR`` does.
"""

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from .spec import SIZE_MULTIPLE, Shape, check_shape_range, padded_shape


def example_inputs(shape: Shape, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Random images [B, 3, H, W] and a mask with some padding on the last image, for tracing."""
    batch, height, width = shape
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=generator).to(device=device, dtype=dtype)
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    mask[-1, height - height // 4 :, :] = True
    mask[-1, :, width - width // 4 :] = True
    return images, mask


def export_model(
    model: nn.Module, *, min_shape: Shape = (1, 320, 320), max_shape: Shape = (8, 1344, 1344)
) -> ExportedProgram:
    """Export ``model(images, mask)`` for batch in [min, max] and height and width multiples of 32 in
    [min, max] rounded up to 32 (the program accepts only sizes on that grid). A dimension with one
    value in its range (say batch 4..4, or width 800..800) stays static.

    The example used for tracing sits strictly above each dynamic dimension's minimum, so that no
    dimension is specialized to it.
    """
    check_shape_range(min_shape, max_shape)
    low, high = padded_shape(min_shape), padded_shape(max_shape)
    dims, example = {}, []
    for axis, (name, lo, hi) in enumerate(zip(("batch", "height", "width"), low, high, strict=True)):
        step = 1 if name == "batch" else SIZE_MULTIPLE
        if lo == hi:
            example.append(lo)
            continue
        dim = Dim(name if step == 1 else f"{name}_blocks", min=lo // step, max=hi // step)
        dims[axis] = dim if step == 1 else step * dim
        example.append(lo + step)
    param = next(model.parameters())
    images, mask = example_inputs(tuple(example), param.device, param.dtype)
    dynamic_shapes = {
        "images": {{0: 0, 1: 2, 2: 3}[axis]: dim for axis, dim in dims.items()},
        "mask": {{0: 0, 1: 1, 2: 2}[axis]: dim for axis, dim in dims.items()},
    }
    with torch.no_grad():
        return torch.export.export(model, (images, mask), dynamic_shapes=dynamic_shapes)
