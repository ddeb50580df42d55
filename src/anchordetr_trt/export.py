"""torch.export of AnchorDETR with dynamic batch, height and width."""

import itertools

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from .errors import InputError

Shape = tuple[int, int, int]  # (batch, height, width)


def check_shape_range(min_shape: Shape, max_shape: Shape, opt_shape: Shape | None = None) -> None:
    """Raise InputError unless 1 <= min <= opt <= max elementwise and images are at least 32 pixels."""
    shapes = {"min_shape": min_shape, "max_shape": max_shape} | (
        {"opt_shape": opt_shape} if opt_shape else {}
    )
    for name, shape in shapes.items():
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise InputError(f"{name} must be (batch, height, width) of positive ints, got {shape!r}")
    if min(min_shape[1:]) < 32:
        raise InputError(f"min_shape {min_shape}: images smaller than 32 pixels vanish in the backbone")
    order = (min_shape, opt_shape or min_shape, max_shape)
    if not all(a <= b for lo, hi in itertools.pairwise(order) for a, b in zip(lo, hi, strict=False)):
        raise InputError(f"shape range must satisfy min <= opt <= max elementwise, got {order}")


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
    """Export ``model(images, mask)`` with batch, height and width dynamic within [min_shape, max_shape].

    The example used for tracing sits strictly inside the range so that no dimension is specialized.
    """
    check_shape_range(min_shape, max_shape)
    batch = Dim("batch", min=min_shape[0], max=max_shape[0])
    height = Dim("height", min=min_shape[1], max=max_shape[1])
    width = Dim("width", min=min_shape[2], max=max_shape[2])
    example = tuple(
        _inside(lo, hi, offset) for lo, hi, offset in zip(min_shape, max_shape, (1, 37, 53), strict=False)
    )
    param = next(model.parameters())
    images, mask = example_inputs(example, param.device, param.dtype)
    dynamic_shapes = {"images": {0: batch, 2: height, 3: width}, "mask": {0: batch, 1: height, 2: width}}
    with torch.no_grad():
        return torch.export.export(model, (images, mask), dynamic_shapes=dynamic_shapes)


def _inside(low: int, high: int, offset: int) -> int:
    # A traced size equal to a bound, or a round multiple of the stride, would let export specialize on it.
    return low if low == high else min(low + offset, high - 1) if high - low > 1 else high
