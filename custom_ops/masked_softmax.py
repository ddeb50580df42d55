"""``anchordetr::masked_softmax``: softmax over keys that are not padding, in one pass.

Replaces float() -> masked_fill(-inf) -> softmax -> masked_fill(0) -> to(dtype), five kernels with
float32 intermediates. AnchorDETR's rows are short (Lk = feature width or height, 20..84) and many
(B * heads * H * W in the encoder), so a program normalizes a [BLOCK_R, BLOCK_K] tile of rows. The
seed's MaskedSoftmax plugin; the model no longer calls it (``rcda_aggregate`` computes both of RCDA's
softmaxes), and its helpers ``softmax_numerators`` and ``softmax_scale`` serve that kernel too.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from anchordetr_trt.errors import InputError

from . import _common, reference

_OP = "masked_softmax"


@triton.jit
def softmax_numerators(x, valid, row_max):
    """exp(x - row_max) in float32 where ``valid``, else 0, for a [rows, keys] tile of scores. A fully
    masked row has max -inf: it is shifted by 0 (not -inf, which makes NaN), and its numerators are 0."""
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    return tl.where(valid, tl.exp2((x - shift[:, None]) * 1.4426950408889634), 0.0)


@triton.jit
def softmax_scale(total):
    """1 / each row's sum of numerators; a fully masked row's zero sum is divided by 1 (zeros, not NaN)."""
    return 1.0 / tl.where(total == 0.0, 1.0, total)


@triton.jit(
    do_not_specialize=["num_rows", "rows_per_batch", "row_length"]
)  # sizes vary per image: one build serves all
def masked_softmax_kernel(
    scores_ptr,
    mask_ptr,
    out_ptr,
    num_rows,
    rows_per_batch,
    row_length,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Rows of ``row_length`` <= BLOCK_K scores (longer rows give NaN), ``rows_per_batch`` (heads * Lq) of them per image;
    mask [B, row_length] uint8, nonzero = padded key. Contiguous inputs and output."""
    first_row = tl.program_id(0) * BLOCK_R
    rows = first_row + tl.arange(0, BLOCK_R)
    keys = tl.arange(0, BLOCK_K)
    in_bounds = (rows < num_rows)[:, None] & (keys < row_length)[None, :]
    mask_offsets = (rows // rows_per_batch)[:, None] * row_length + keys[None, :]
    padded = tl.load(mask_ptr + mask_offsets, mask=in_bounds, other=1)
    valid = in_bounds & (padded == 0)
    # 64-bit tile start, 32-bit offsets within the tile: half the registers of 64-bit offsets.
    tile_start = first_row.to(tl.int64) * row_length
    scores_ptr += tile_start
    out_ptr += tile_start
    offsets = (rows - first_row)[:, None] * row_length + keys[None, :]
    x = tl.load(scores_ptr + offsets, mask=valid, other=float("-inf")).to(tl.float32)
    e = softmax_numerators(x, valid, tl.max(x, axis=1))
    inverse = softmax_scale(tl.sum(e, axis=1))
    probs = e * inverse[:, None]
    # Rows longer than the kernel was built for would lose their tail: all NaN instead, never silent.
    probs = tl.where(row_length > BLOCK_K, float("nan"), probs)
    tl.store(out_ptr + offsets, probs.to(out_ptr.dtype.element_ty), mask=in_bounds)


def masked_softmax_launch_config(num_rows: int, row_length: int) -> tuple[tuple[int], dict]:
    """(grid, meta) for ``num_rows`` rows of ``row_length``: meta holds BLOCK_R, BLOCK_K and
    num_warps. A kernel built with BLOCK_K serves every row_length <= BLOCK_K, any num_rows."""
    block_k = _common.row_block(row_length)
    block_r, warps = _common.row_tile(block_k)
    return (triton.cdiv(num_rows, block_r),), {"BLOCK_R": block_r, "BLOCK_K": block_k, "num_warps": warps}


def check_inputs(scores: Tensor, key_padding_mask: Tensor) -> None:
    """Raise InputError unless scores [B, heads, Lq, Lk] float and mask [B, Lk] bool match."""
    _common.check_tensor(_OP, "scores", scores, 4, _common.FLOAT_DTYPES, "[B, heads, Lq, Lk]")
    _common.check_tensor(_OP, "key_padding_mask", key_padding_mask, 2, (torch.bool,), "[B, Lk]")
    _common.check_same_device(_OP, scores=scores, key_padding_mask=key_padding_mask)
    _common.check_size(_OP, "key_padding_mask.shape[0] (batch)", key_padding_mask.shape[0], scores.shape[0])
    _common.check_size(_OP, "key_padding_mask.shape[1] (keys)", key_padding_mask.shape[1], scores.shape[3])


def masked_softmax_triton(scores: Tensor, key_padding_mask: Tensor, out: Tensor | None = None) -> Tensor:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); non-contiguous inputs are copied
    contiguous first. Writes ``out`` (new if None, else contiguous, scores' shape and dtype)."""
    check_inputs(scores, key_padding_mask)
    batch, heads, queries, keys = scores.shape
    if keys > _common.MAX_ROW_BLOCK:
        raise InputError(f"{_OP}: rows of {keys} keys exceed {_common.MAX_ROW_BLOCK}: use the reference")
    out = scores.new_empty(scores.shape) if out is None else out
    _common.check_out(_OP, out, scores.shape, scores.dtype, scores.device)
    if out.numel() == 0:
        return out
    num_rows = batch * heads * queries
    grid, meta = masked_softmax_launch_config(num_rows, keys)
    with _common.launch_context(_OP, masked_softmax_kernel, scores):
        masked_softmax_kernel[grid](
            scores.contiguous(),
            key_padding_mask.contiguous().view(torch.uint8),
            out,
            num_rows,
            heads * queries,
            keys,
            **meta,
        )
    return out


@torch.library.custom_op("anchordetr::masked_softmax", mutates_args=())
def masked_softmax(scores: Tensor, key_padding_mask: Tensor) -> Tensor:
    """scores [B, heads, Lq, Lk], key_padding_mask [B, Lk] bool (True = padded) -> probabilities,
    scores' dtype; fully padded rows are zeros. PyTorch reference off CUDA."""
    check_inputs(scores, key_padding_mask)
    return reference.masked_softmax(scores, key_padding_mask).contiguous()  # dense, like the fake


@masked_softmax.register_kernel("cuda")
def _(scores: Tensor, key_padding_mask: Tensor) -> Tensor:
    if scores.shape[-1] > _common.MAX_ROW_BLOCK:
        return reference.masked_softmax(scores, key_padding_mask).contiguous()  # rows too long for registers
    return masked_softmax_triton(scores, key_padding_mask)


@masked_softmax.register_fake
def _(scores: Tensor, key_padding_mask: Tensor) -> Tensor:
    check_inputs(scores, key_padding_mask)
    return scores.new_empty(scores.shape)
