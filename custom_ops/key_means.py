"""``anchordetr::key_means``: RCDA's row and column keys of a feature map, in one read of the map.

Replaces ``src.mean(1) + posemb_row`` and ``src.mean(2) + posemb_col`` (two reductions, each reading
all of src). A program owns BLOCK_C channels of one image and walks down its rows, BLOCK_H at a
time: each row's sum gives that row's column key at once, and the per-column sums, kept in float32
registers across the walk, give the row keys at the end.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from anchordetr_trt.errors import InputError

from . import _common, reference

_OP = "key_means"
# Channels per program. AnchorDETR has C = 256 and a batch of 1 in latency-bound serving: 16 channels
# give 16 programs per image (128 at batch 8), where 64 would give 4 and leave most of the GPU idle
# while one program walks the whole map. A pixel's 16 fp16 channels are one 32-byte sector.
BLOCK_C = 16
# Elements a program loads per step (8 warps, 32 a thread): at 50 x 50 fp16, 8 rows or 12.8 KB in
# flight per program, which few programs (128 at batch 8) need to approach the bandwidth. No spills
# at widths 50, 84 and MAX_WIDTH (ptxas for sm_90).
TILE = 8192
MAX_WIDTH = 1024  # widest map whose per-column sums stay in registers (BLOCK_W x BLOCK_C float32)


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
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (batch, cdiv(channels, BLOCK_C)); src [batch, height, width, channels], posemb_row and
    key_row [batch, width, channels], posemb_col and key_col [batch, height, channels], contiguous;
    width <= BLOCK_W (wider maps give NaN keys)."""
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < channels
    xs = tl.arange(0, BLOCK_W)
    pixel_ok = (xs < width)[None, :, None] & col_ok[None, None, :]
    image = src_ptr + batch * height * width * channels  # 64-bit image start, 32-bit offsets within
    column_sums = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    # Rows longer than the kernel was built for would lose their tail: NaN keys instead, never silent.
    too_wide = width > BLOCK_W
    for first in range(0, height, BLOCK_H):
        rows = first + tl.arange(0, BLOCK_H)
        row_ok = rows < height
        offsets = (rows[:, None, None] * width + xs[None, :, None]) * channels + cols[None, None, :]
        tile = tl.load(image + offsets, mask=row_ok[:, None, None] & pixel_ok, other=0.0).to(tl.float32)
        column_sums += tl.sum(tile, axis=0)
        out = (batch * height + rows)[:, None] * channels + cols[None, :]
        out_ok = row_ok[:, None] & col_ok[None, :]
        posemb = tl.load(posemb_col_ptr + out, mask=out_ok, other=0.0).to(tl.float32)
        key_col = tl.where(too_wide, float("nan"), tl.sum(tile, axis=1) / width + posemb)
        tl.store(key_col_ptr + out, key_col.to(key_col_ptr.dtype.element_ty), mask=out_ok)
    out = (batch * width + xs)[:, None] * channels + cols[None, :]
    out_ok = (xs < width)[:, None] & col_ok[None, :]
    posemb = tl.load(posemb_row_ptr + out, mask=out_ok, other=0.0).to(tl.float32)
    key_row = tl.where(too_wide, float("nan"), column_sums / height + posemb)
    tl.store(key_row_ptr + out, key_row.to(key_row_ptr.dtype.element_ty), mask=out_ok)
    for first in range(BLOCK_W, width, BLOCK_W):  # only where too wide: NaN in the columns past BLOCK_W
        columns = first + xs
        out = (batch * width + columns)[:, None] * channels + cols[None, :]
        nan = tl.full((BLOCK_W, BLOCK_C), float("nan"), tl.float32).to(key_row_ptr.dtype.element_ty)
        tl.store(key_row_ptr + out, nan, mask=(columns < width)[:, None] & col_ok[None, :])


def key_means_launch_config(
    batch: int, height: int, width: int, channels: int
) -> tuple[tuple[int, int], dict]:
    """(grid, meta) for src [batch, height, width, channels]: meta holds BLOCK_H, BLOCK_W, BLOCK_C and
    num_warps, which depend on the width alone (BLOCK_W its power of two, at least 16: the width
    classes of ``fused.kernel_variant``). A kernel built with BLOCK_W serves every width <= BLOCK_W,
    any height, batch and channels."""
    block_w = _common.row_block(width)
    block_h = max(1, TILE // (block_w * BLOCK_C))
    meta = {
        "BLOCK_H": block_h,
        "BLOCK_W": block_w,
        "BLOCK_C": BLOCK_C,
        "num_warps": _common.num_warps(block_h * block_w * BLOCK_C),
    }
    return (batch, triton.cdiv(channels, BLOCK_C)), meta


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
    batch, height, width, channels = src.shape
    if width > MAX_WIDTH:
        raise InputError(f"{_OP}: maps {width} wide exceed the kernel's {MAX_WIDTH}: use the reference")
    shapes = ((batch, width, channels), (batch, height, channels))
    if out is None:
        out = tuple(src.new_empty(shape) for shape in shapes)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise InputError(f"{_OP}: out must be a pair (key_row, key_col) of tensors, got {type(out).__name__}")
    key_row, key_col = (
        _common.check_out(_OP, o, shape, src.dtype, src.device) for o, shape in zip(out, shapes, strict=True)
    )
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
    key_row, key_col = reference.key_means(src, posemb_row, posemb_col)
    return key_row.contiguous(), key_col.contiguous()  # dense, like the fake


@key_means.register_kernel("cuda")
def _(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> tuple[Tensor, Tensor]:
    if src.shape[2] > MAX_WIDTH:  # per-column sums too many for registers
        key_row, key_col = reference.key_means(src, posemb_row, posemb_col)
        return key_row.contiguous(), key_col.contiguous()
    return key_means_triton(src, posemb_row, posemb_col)


@key_means.register_fake
def _(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> tuple[Tensor, Tensor]:
    check_inputs(src, posemb_row, posemb_col)
    batch, height, width, channels = src.shape
    return src.new_empty((batch, width, channels)), src.new_empty((batch, height, channels))
