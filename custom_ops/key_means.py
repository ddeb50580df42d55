"""``anchordetr::key_means``: RCDA's row and column keys of a feature map, in one launch.

Replaces ``src.mean(1) + posemb_row`` and ``src.mean(2) + posemb_col``. A program averages one line
of the map (a row over its width, or a column over its height) for BLOCK_C channels, so an image
has (H + W) * C / BLOCK_C programs that each read a few KB: the map is read twice, as by two
reductions, but by enough programs to keep the memory busy at batch 1 (400 at 50 x 50), and with
whole 128-byte lines of channels per load, which Inductor's two reductions of the map did not reach
(~0.8 TB/s at batch 8 on an H100, docs/transformer_performance.md).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from anchordetr_trt.errors import InputError

from . import _common, reference

_OP = "key_means"
BLOCK_C = 64  # channels per program: 128 bytes of fp16 per pixel, one memory transaction
BLOCK_L = 64  # pixels of the line per step: a 50-pixel line of AnchorDETR's 800x800 map is one step
NUM_WARPS = 2  # 8.7 us at batch 8 on the 50x50x256 map against 12.2 with 4 (H100; ab_transformer --ops-only)
MAX_LINES = 65535  # H + W: the grid's second axis, which CUDA limits to 65535 blocks


@triton.jit(do_not_specialize=["height", "width"])  # sizes vary per image: one build serves all
def key_means_kernel(
    src_ptr,
    posemb_row_ptr,
    posemb_col_ptr,
    key_row_ptr,
    key_col_ptr,
    height,
    width,
    channels,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (batch, lines >= height + width, cdiv(channels, BLOCK_C)): program (b, line, c) writes
    key_col[b, line] (row ``line`` averaged over its width) for line < height, else
    key_row[b, line - height] (that column averaged over its height); lines past height + width write
    nothing. src [batch, height, width, channels], posemb_row and key_row [batch, width, channels],
    posemb_col and key_col [batch, height, channels], contiguous; an image's src below 2**31 values."""
    batch = tl.program_id(0).to(tl.int64)
    line = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = (cols < channels) & (line < height + width)
    image = src_ptr + batch * height * width * channels  # 64-bit image start, 32-bit offsets within
    is_row = line < height
    if is_row:  # along a row: pixels one pixel apart
        start = line * width * channels
        step = channels
        length = width
    else:  # along a column: pixels one row apart
        start = (line - height) * channels
        step = width * channels
        length = height
    pixels = tl.arange(0, BLOCK_L)
    sums = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    for first in range(0, length, BLOCK_L):
        along = first + pixels
        offsets = start + along[:, None] * step + cols[None, :]
        tile = tl.load(image + offsets, mask=(along < length)[:, None] & col_ok[None, :], other=0.0)
        sums += tile.to(tl.float32)
    mean = tl.sum(sums, axis=0) / length
    if is_row:
        out = (batch * height + line) * channels + cols
        posemb = tl.load(posemb_col_ptr + out, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(key_col_ptr + out, (mean + posemb).to(key_col_ptr.dtype.element_ty), mask=col_ok)
    else:
        out = (batch * width + line - height) * channels + cols
        posemb = tl.load(posemb_row_ptr + out, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(key_row_ptr + out, (mean + posemb).to(key_row_ptr.dtype.element_ty), mask=col_ok)


def key_means_launch_config(
    batch: int, height: int, width: int, channels: int
) -> tuple[tuple[int, int, int], dict]:
    """(grid, meta) for src [batch, height, width, channels]. meta is the same for every size: one
    build serves every map."""
    meta = {"BLOCK_L": BLOCK_L, "BLOCK_C": BLOCK_C, "num_warps": NUM_WARPS}
    return (batch, height + width, triton.cdiv(channels, BLOCK_C)), meta


def runs_kernel(height: int, width: int, channels: int) -> bool:
    """Whether the op runs the kernel on CUDA for maps [B, height, width, channels], not the
    reference: the kernel's offsets within an image are 32-bit, and a program per row and column must
    fit the grid (MAX_LINES)."""
    return height * width * channels < 2**31 and height + width <= MAX_LINES


def check_inputs(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> None:
    """Raise InputError unless src [B, H, W, C] float with H, W >= 1, posemb_row [B, W, C] and
    posemb_col [B, H, C] of src's dtype and device."""
    _common.check_tensor(_OP, "src", src, 4, _common.FLOAT_DTYPES, "[B, H, W, C]")
    _common.check_tensor(_OP, "posemb_row", posemb_row, 3, (src.dtype,), "[B, W, C] (src's dtype)")
    _common.check_tensor(_OP, "posemb_col", posemb_col, 3, (src.dtype,), "[B, H, C] (src's dtype)")
    _common.check_same_device(_OP, src=src, posemb_row=posemb_row, posemb_col=posemb_col)
    batch, height, width, channels = src.shape
    _common.check_shape(
        _OP, "posemb_row", posemb_row.shape, (batch, width, channels), "[B, W, C] (one per column of src)"
    )
    _common.check_shape(
        _OP, "posemb_col", posemb_col.shape, (batch, height, channels), "[B, H, C] (one per row of src)"
    )
    for name, size in (("H", height), ("W", width)):
        if isinstance(size, int) and size < 1:
            raise InputError(f"{_OP}: src {list(src.shape)} has {name} = 0; the means need H, W >= 1")


def key_means_triton(
    src: Tensor,
    posemb_row: Tensor,
    posemb_col: Tensor,
    out: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); non-contiguous inputs are copied
    contiguous first. Writes ``out`` = (key_row, key_col) (new if None, else contiguous [B, W, C] and
    [B, H, C] of src's dtype)."""
    check_inputs(src, posemb_row, posemb_col)
    return _launch(src, posemb_row, posemb_col, out)


def _launch(
    src: Tensor, posemb_row: Tensor, posemb_col: Tensor, out: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor]:
    """``key_means_triton`` on checked inputs."""
    batch, height, width, channels = src.shape
    shapes = ((batch, width, channels), (batch, height, channels))
    key_row, key_col = _common.check_out_pair(_OP, out, "key_row, key_col", shapes, src.dtype, src.device)
    if src.numel() == 0:
        return key_row, key_col
    grid, meta = key_means_launch_config(batch, height, width, channels)
    with _common.launch_context(_OP, key_means_kernel, src):
        key_means_kernel[grid](
            src.contiguous(),
            posemb_row.contiguous(),
            posemb_col.contiguous(),
            key_row,
            key_col,
            height,
            width,
            channels,
            **meta,
        )
    return key_row, key_col


@torch.library.custom_op("anchordetr::key_means", mutates_args=())
def key_means(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> tuple[Tensor, Tensor]:
    """(src.mean(1) + posemb_row, src.mean(2) + posemb_col): src [B, H, W, C] -> [B, W, C], [B, H, C],
    summed in float32 and rounded once (``reference.key_means``). PyTorch reference off CUDA."""
    check_inputs(src, posemb_row, posemb_col)
    return _reference(src, posemb_row, posemb_col)


@key_means.register_kernel("cuda")
def _(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> tuple[Tensor, Tensor]:
    check_inputs(src, posemb_row, posemb_col)  # once: the launch below does not check again
    if not runs_kernel(*src.shape[1:]):
        return _reference(src, posemb_row, posemb_col)
    return _launch(src, posemb_row, posemb_col, out=None)


def _reference(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> tuple[Tensor, Tensor]:
    key_row, key_col = reference.key_means(src, posemb_row, posemb_col)
    return key_row.contiguous(), key_col.contiguous()  # dense, like the fake


@key_means.register_fake
def _(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> tuple[Tensor, Tensor]:
    check_inputs(src, posemb_row, posemb_col)
    batch, height, width, channels = src.shape
    return src.new_empty((batch, width, channels)), src.new_empty((batch, height, channels))
