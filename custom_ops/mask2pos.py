"""``anchordetr::mask2pos`` and ``anchordetr::mask2posemb``: normalized positions of the unpadded rows
and columns of a padding mask, and their 1-d sine embeddings, each in one launch.

The reference takes a slice, a cumsum, two subtractions and a division per axis, and about ten more
kernels per axis for the embedding. A program here handles BLOCK_L positions of one line (the first
column, for rows y, or the first row, for columns x) of one image: it counts the line's unpadded
entries in blocks (any length works with any BLOCK_L), takes the cumulative count within its block,
and writes positions or [BLOCK_L, BLOCK_F] embeddings.

The model calls only ``mask2posemb`` (mask2pos and the sine embedding in one launch). ``mask2pos``
stays because it is one of the seed's four TensorRT plugins, kept op for op (with its converter) so
that a graph using it still converts; it shares the kernel helper with ``mask2posemb`` and its tests
check the positions that the embedding is built from.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from anchordetr_trt.errors import InputError

from . import _common, reference

MAX_BLOCK_L = 1024
MAX_BLOCK_F = 256
POSEMB_TILE = 4096  # elements of a [BLOCK_L, BLOCK_F] embedding tile


@triton.jit
def _line_positions(mask_ptr, step, length, start, BLOCK_L: tl.constexpr):
    """Positions of entries start .. start + BLOCK_L of a line of ``length`` mask bytes ``step`` apart
    (nonzero = padded): (cumulative unpadded count - 0.5) / max(unpadded count, 1), float32."""
    index = tl.arange(0, BLOCK_L)
    total = tl.zeros((), dtype=tl.int32)
    before = tl.zeros((), dtype=tl.int32)
    for block_start in range(0, length, BLOCK_L):
        at = block_start + index
        valid = tl.load(mask_ptr + at * step, mask=at < length, other=1) == 0
        total += tl.sum(valid.to(tl.int32), axis=0)
        before += tl.sum((valid & (at < start)).to(tl.int32), axis=0)
    at = start + index
    valid = tl.load(mask_ptr + at * step, mask=at < length, other=1) == 0
    count = before + tl.cumsum(valid.to(tl.int32), axis=0)
    return tl.math.div_rn(count.to(tl.float32) - 0.5, tl.maximum(total, 1).to(tl.float32))


@triton.jit
def _image_line(mask_ptr, height, width, axis):
    """(first mask byte of this program's image, step, length) of the line that ``axis`` reads:
    0 reads column 0 (rows y), 1 reads row 0 (columns x)."""
    line_ptr = mask_ptr + tl.program_id(1).to(tl.int64) * height * width
    is_y = axis == 0
    return line_ptr, tl.where(is_y, width, 1), tl.where(is_y, height, width)


@triton.jit(do_not_specialize=["height", "width"])  # sizes vary per image: one build serves all
def mask2pos_kernel(mask_ptr, pos_y_ptr, pos_x_ptr, height, width, BLOCK_L: tl.constexpr):
    """Grid (cdiv(max(height, width), BLOCK_L), batch, 2), the last axis y or x; mask [batch,
    height, width] uint8 (nonzero = padded) contiguous, pos_y [batch, height] and pos_x [batch, width]
    float32."""
    axis = tl.program_id(2)
    line_ptr, step, length = _image_line(mask_ptr, height, width, axis)
    start = tl.program_id(0) * BLOCK_L
    pos = _line_positions(line_ptr, step, length, start, BLOCK_L)
    at = start + tl.arange(0, BLOCK_L)
    image = tl.program_id(1).to(tl.int64)
    # Each program writes one of the two outputs: the other store is fully masked.
    tl.store(pos_y_ptr + image * height + at, pos, mask=(at < length) & (axis == 0))
    tl.store(pos_x_ptr + image * width + at, pos, mask=(at < length) & (axis == 1))


@triton.jit(do_not_specialize=["height", "width"])  # sizes vary per image: one build serves all
def mask2posemb_kernel(
    mask_ptr,
    emb_y_ptr,
    emb_x_ptr,
    height,
    width,
    num_feats,
    log2_temperature,
    BLOCK_L: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """Grid (cdiv(max(height, width), BLOCK_L), batch, cdiv(num_feats, BLOCK_F) * 2), the last axis
    (feature block, y or x); emb_y [batch, height, num_feats] and emb_x [batch, width, num_feats]
    float32. Feature f of position p is sin (even f) or cos (odd f) of
    2 pi p / temperature ** (2 (f // 2) / num_feats), given log2(temperature)."""
    axis = tl.program_id(2) % 2
    line_ptr, step, length = _image_line(mask_ptr, height, width, axis)
    start = tl.program_id(0) * BLOCK_L
    pos = _line_positions(line_ptr, step, length, start, BLOCK_L)
    feats = tl.program_id(2) // 2 * BLOCK_F + tl.arange(0, BLOCK_F)
    exponent = (feats // 2 * 2).to(tl.float32) / num_feats
    # Divide by the frequency as the reference does (not multiply by its inverse): closer to it.
    angles = pos[:, None] * 6.283185307179586 / tl.exp2(exponent * log2_temperature)[None, :]
    emb = tl.where((feats % 2 == 0)[None, :], tl.sin(angles), tl.cos(angles))
    at = start + tl.arange(0, BLOCK_L)
    ok = (at < length)[:, None] & (feats < num_feats)[None, :]
    offsets = at[:, None] * num_feats + feats[None, :]
    image = tl.program_id(1).to(tl.int64)
    tl.store(emb_y_ptr + image * height * num_feats + offsets, emb, mask=ok & (axis == 0))
    tl.store(emb_x_ptr + image * width * num_feats + offsets, emb, mask=ok & (axis == 1))


def mask2pos_launch_config(batch: int, height: int, width: int) -> tuple[tuple[int, int, int], dict]:
    """(grid, meta) for mask [batch, height, width]: meta holds BLOCK_L and num_warps. Any sizes
    work with any BLOCK_L (lines longer than it are counted in blocks)."""
    block_l = min(_common.row_block(max(height, width)), MAX_BLOCK_L)
    return (triton.cdiv(max(height, width), block_l), batch, 2), {"BLOCK_L": block_l, "num_warps": 1}


def mask2posemb_launch_config(
    batch: int, height: int, width: int, num_feats: int
) -> tuple[tuple[int, int, int], dict]:
    """(grid, meta) for mask [batch, height, width] and ``num_feats`` features: meta holds BLOCK_L,
    BLOCK_F and num_warps. Any sizes work with any blocks."""
    block_f = min(_common.row_block(num_feats), MAX_BLOCK_F)
    block_l = max(1, min(POSEMB_TILE // block_f, triton.next_power_of_2(max(height, width))))
    meta = {"BLOCK_L": block_l, "BLOCK_F": block_f, "num_warps": _common.num_warps(block_l * block_f)}
    return (triton.cdiv(max(height, width), block_l), batch, 2 * triton.cdiv(num_feats, block_f)), meta


def check_mask(op: str, mask: Tensor) -> None:
    """Raise InputError unless mask is a [B, H, W] bool tensor with H, W >= 1."""
    _common.check_tensor(op, "mask", mask, 3, (torch.bool,), "[B, H, W]")
    if any(isinstance(size, int) and size < 1 for size in mask.shape[1:]):
        raise InputError(f"{op}: mask [B, H, W] needs H, W >= 1, got {list(mask.shape)}")


def check_posemb_args(num_pos_feats: int, temperature: float) -> None:
    """Raise InputError unless num_pos_feats is a positive even int and temperature a positive float."""
    if not isinstance(num_pos_feats, int) or num_pos_feats < 2 or num_pos_feats % 2:
        raise InputError(
            f"mask2posemb: num_pos_feats must be a positive even int (sin, cos pairs), got {num_pos_feats!r}"
        )
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise InputError(f"mask2posemb: temperature must be a positive float, got {temperature!r}")


def _outputs(
    op: str, mask: Tensor, out: tuple[Tensor, Tensor] | None, feats: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    batch, height, width = mask.shape
    shapes = ((batch, height, *feats), (batch, width, *feats))
    return _common.check_out_pair(op, out, "y, x", shapes, torch.float32, mask.device)


def mask2pos_triton(mask: Tensor, out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); a non-contiguous mask is copied
    contiguous first. Writes ``out`` (new if None, else contiguous float32 pos_y [B, H], pos_x [B, W])."""
    check_mask("mask2pos", mask)
    pos_y, pos_x = _outputs("mask2pos", mask, out, ())
    batch, height, width = mask.shape
    if batch == 0:
        return pos_y, pos_x
    grid, meta = mask2pos_launch_config(batch, height, width)
    with _common.launch_context("mask2pos", mask2pos_kernel, mask):
        mask2pos_kernel[grid](mask.contiguous().view(torch.uint8), pos_y, pos_x, height, width, **meta)
    return pos_y, pos_x


def mask2posemb_triton(
    mask: Tensor, num_pos_feats: int, temperature: float, out: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); a non-contiguous mask is copied
    contiguous first. Writes ``out`` (new if None, else contiguous float32 [B, H, F], [B, W, F])."""
    check_mask("mask2posemb", mask)
    check_posemb_args(num_pos_feats, temperature)
    emb_y, emb_x = _outputs("mask2posemb", mask, out, (num_pos_feats,))
    batch, height, width = mask.shape
    if batch == 0:
        return emb_y, emb_x
    grid, meta = mask2posemb_launch_config(batch, height, width, num_pos_feats)
    with _common.launch_context("mask2posemb", mask2posemb_kernel, mask):
        mask2posemb_kernel[grid](
            mask.contiguous().view(torch.uint8),
            emb_y,
            emb_x,
            height,
            width,
            num_pos_feats,
            math.log2(temperature),
            **meta,
        )
    return emb_y, emb_x


@torch.library.custom_op("anchordetr::mask2pos", mutates_args=())
def mask2pos(mask: Tensor) -> tuple[Tensor, Tensor]:
    """mask [B, H, W] bool (True = padding) -> (pos_y [B, H], pos_x [B, W]) float32. PyTorch
    reference off CUDA."""
    check_mask("mask2pos", mask)
    return reference.mask2pos(mask)


@mask2pos.register_kernel("cuda")
def _(mask: Tensor) -> tuple[Tensor, Tensor]:
    return mask2pos_triton(mask)


@mask2pos.register_fake
def _(mask: Tensor) -> tuple[Tensor, Tensor]:
    check_mask("mask2pos", mask)
    return _outputs("mask2pos", mask, None, ())


@torch.library.custom_op("anchordetr::mask2posemb", mutates_args=())
def mask2posemb(mask: Tensor, num_pos_feats: int, temperature: float) -> tuple[Tensor, Tensor]:
    """mask [B, H, W] bool -> sine embeddings of mask2pos, ([B, H, F], [B, W, F]) float32. PyTorch
    reference off CUDA."""
    check_mask("mask2posemb", mask)
    check_posemb_args(num_pos_feats, temperature)
    return reference.mask2posemb(mask, num_pos_feats, temperature)


@mask2posemb.register_kernel("cuda")
def _(mask: Tensor, num_pos_feats: int, temperature: float) -> tuple[Tensor, Tensor]:
    return mask2posemb_triton(mask, num_pos_feats, temperature)


@mask2posemb.register_fake
def _(mask: Tensor, num_pos_feats: int, temperature: float) -> tuple[Tensor, Tensor]:
    check_mask("mask2posemb", mask)
    check_posemb_args(num_pos_feats, temperature)
    return _outputs("mask2posemb", mask, None, (num_pos_feats,))
