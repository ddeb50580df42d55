"""What a compiled module is built for: precision, device, shape range and cache, in one ``CompileSpec``.

Every rule that more than one entry point needs lives here once: the precisions and their default,
the shape-range checks, and the padding rule of the compiled backends (height and width rounded up
to a multiple of ``SIZE_MULTIPLE``, so that every size the backbone computes is exact and one
compiled graph, or one TensorRT profile, serves the whole range).
"""

import itertools
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import BackendUnavailableError, InputError

Shape = tuple[int, int, int]  # (batch, height, width)

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The backbone's total stride is 32 (C5) or 16 (DC5): on multiples of 32 every convolution, pooling
# and mask downsampling step divides exactly, so shapes need no guards and compile symbolically.
SIZE_MULTIPLE = 32
# The default range: batches of 1 to 8 images of 320 to 1344 pixels a side (COCO's resize gives a
# short side of 800 and a long side of at most 1333), tuned for one 800x800 image. The compile
# entry points take their defaults from here.
DEFAULT_MIN_SHAPE: Shape = (1, 320, 320)
DEFAULT_OPT_SHAPE: Shape = (1, 800, 800)
DEFAULT_MAX_SHAPE: Shape = (8, 1344, 1344)


def default_precision(device: torch.device) -> str:
    """fp16 on a GPU (what the compiled backends are built for), fp32 on the CPU (the only one there)."""
    return "fp16" if device.type == "cuda" else "fp32"


def round_up(size: int, multiple: int = SIZE_MULTIPLE) -> int:
    return -(-size // multiple) * multiple


def padded_shape(shape: Shape) -> Shape:
    """(batch, height, width) with height and width rounded up to a multiple of SIZE_MULTIPLE."""
    batch, height, width = shape
    return batch, round_up(height), round_up(width)


def within(shape: Shape, min_shape: Shape, max_shape: Shape) -> bool:
    """Whether ``shape`` (batch, height, width) lies in [min_shape, max_shape] in each dimension."""
    return all(lo <= s <= hi for lo, s, hi in zip(min_shape, shape, max_shape, strict=True))


def covering_range(shapes: Sequence[Shape]) -> tuple[Shape, Shape]:
    """(min_shape, max_shape): the elementwise minimum and maximum of ``shapes``, the smallest range
    that serves each of them."""
    return tuple(map(min, zip(*shapes, strict=True))), tuple(map(max, zip(*shapes, strict=True)))


def fitted_opt_shape(min_shape: Shape, max_shape: Shape) -> Shape:
    """DEFAULT_OPT_SHAPE moved into [min_shape, max_shape] in each dimension: the opt_shape of a
    range given without one."""
    return tuple(
        max(lo, min(opt, hi)) for lo, opt, hi in zip(min_shape, DEFAULT_OPT_SHAPE, max_shape, strict=True)
    )


def check_shape_range(min_shape: Shape, max_shape: Shape, opt_shape: Shape | None = None) -> None:
    """Raise InputError unless 1 <= min <= opt <= max elementwise and images are at least 32 pixels."""
    shapes = {"min_shape": min_shape, "max_shape": max_shape} | (
        {"opt_shape": opt_shape} if opt_shape else {}
    )
    for name, shape in shapes.items():
        if (
            not isinstance(shape, tuple | list)
            or len(shape) != 3
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape)
        ):
            raise InputError(
                f"{name} must be (batch, height, width) of positive ints, got {shape!r}: e.g. {name}=(1, 800, 800)"
            )
    if min(min_shape[1:]) < 32:
        raise InputError(
            f"min_shape {tuple(min_shape)}: images smaller than 32 pixels vanish in the backbone; use at least 32"
        )
    order = (tuple(min_shape), tuple(opt_shape or min_shape), tuple(max_shape))
    if not all(a <= b for lo, hi in itertools.pairwise(order) for a, b in zip(lo, hi, strict=True)):
        raise InputError(
            f"the shape range must satisfy min <= opt <= max in each of batch, height and width: got "
            f"min_shape={order[0]}, opt_shape={order[1]}, max_shape={order[2]}"
        )


@dataclass(frozen=True)
class CompileSpec:
    """A compiled module's contract: inputs (batch, height, width) within [min_shape, max_shape], run
    at ``precision`` on ``device``, tuned for ``opt_shape`` (None: ``fitted_opt_shape``, the default
    opt shape moved into the range); compiled artifacts kept in ``cache_dir``."""

    precision: str
    device: torch.device
    min_shape: Shape = DEFAULT_MIN_SHAPE
    opt_shape: Shape | None = None
    max_shape: Shape = DEFAULT_MAX_SHAPE
    cache_dir: Path | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.precision, str):  # any case, as variant names
            object.__setattr__(self, "precision", self.precision.strip().lower())
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.device.type == "cpu" and self.precision != "fp32":
            raise BackendUnavailableError(
                f"precision={self.precision!r} is for GPUs (a CUDA GPU runs it); on the CPU use precision='fp32'"
            )
        if self.opt_shape is None:
            check_shape_range(self.min_shape, self.max_shape)
            object.__setattr__(self, "opt_shape", fitted_opt_shape(self.min_shape, self.max_shape))
        check_shape_range(self.min_shape, self.max_shape, self.opt_shape)
        for name in ("min_shape", "opt_shape", "max_shape"):
            object.__setattr__(self, name, tuple(int(s) for s in getattr(self, name)))
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, str | os.PathLike):
                raise InputError(
                    f"cache_dir must be a folder path (str or Path), got {type(self.cache_dir).__name__} "
                    f"{self.cache_dir!r}: e.g. cache_dir='~/.cache/anchordetr'"
                )
            object.__setattr__(self, "cache_dir", Path(os.fspath(self.cache_dir)).expanduser())

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def padded_range(self) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) after padding: the shapes a compiled backend actually sees."""
        return tuple(padded_shape(s) for s in (self.min_shape, self.opt_shape, self.max_shape))

    def contains(self, shape: Shape) -> bool:
        return within(shape, self.min_shape, self.max_shape)

    def check_contains(self, shape: Shape) -> None:
        """Raise InputError unless ``shape`` (batch, height, width) lies in [min_shape, max_shape]."""
        if not self.contains(shape):
            raise InputError(
                f"input (batch, height, width) = {tuple(shape)} is outside the compiled range "
                f"{self.min_shape}..{self.max_shape}: split the batch, resize the images "
                "(preprocess(min_size=..., max_size=...)), or compile with a wider min_shape/max_shape"
            )
