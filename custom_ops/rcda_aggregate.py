"""``anchordetr::rcda_aggregate``: row-column decoupled attention from the projections as the GEMMs
leave them, both softmaxes computed in the kernel, heads merged in its output.

For N = B * heads heads of D channels (C = heads * D): q_row = (queries[..., :C] + row_term) * scale and
q_col = (queries[..., C:2C] + col_term) * scale (in float32, rounded to the input dtype), split into
heads; out[b, q, head] = sum_h sum_w probs_col[q, h] * probs_row[q, w] * value[b, h, w, head], where
probs_col is the masked softmax of q_col . k_col over the unpadded rows h, probs_row that of
q_row . k_row over the unpadded columns w, and value the C channels of ``values`` from
``value_channel``. The kernel reads the queries, their position terms and the values where the
projections wrote them (the packed GEMM output, the terms broadcast over the map) and writes [B, *S, C]:
no head split, bias or merge between the GEMMs and the attention. Done as batched matmuls, it
materializes both scores and probabilities and an [N, W, Lq, D] intermediate (64 MB per image and
layer in fp16 at 800x800). A program takes BLOCK_Q queries of one head. First their column
probabilities: scores on the tensor cores over COL_CHUNK rows at a time, a running max and sum, then
the probabilities, computed in float32 and stored in value's dtype (rounded as the reference rounds
them) to a per-call [N, Lq, H] buffer (each step of the aggregation reads a few of their columns,
which Triton cannot slice out of registers; written and read back by one program, they stay in L2).
Then the row probabilities, in registers; then each step takes a few rows h of value,
[BLOCK_H * W, D], and multiplies them with the joint weights probs_col[q, h] * probs_row[q, w] of
those rows, accumulating in float32: one tensor-core product per step whose output is the
accumulator itself (weighting the product's column blocks afterwards instead costs a reshape and a
reduction of its output).

The products run over W padded to a power of two, or to two of them (``width_blocks``): feature maps
are rarely a power of two wide, and 84 columns (1344 pixels with DC5) as 64 + 32 instead of 128
spare a third of the padded work. The height is a loop bound only: one build serves every height.
docs/performance.md has the kernel's measurements.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from anchordetr_trt.errors import InputError

from . import _common, reference
from .masked_softmax import softmax_numerators, softmax_scale

_OP = "rcda_aggregate"
# The best of 24 configurations at 1216x1344 and within 31% of the best at 800x800 (BLOCK_Q 64/128,
# BLOCK_H 1/2/4, 4/8 warps, 2/3 stages; batch 1 and 8: docs/performance.md).
BLOCK_Q = 128
# Queries per program where BLOCK_Q's grid gives the SMs few programs (``_common.few_programs``):
# more programs fill the SMs. Kernel alone on an H100 (132 SMs) at 50x50, 8 heads, fp16, 128 -> 64:
# batch 1 decoder (64 programs at 128) 19.6 -> 13.6 us, encoder (160) 25.7 -> 21.9 us; batch 8 decoder
# (512) 51.2 -> 59.3 us, encoder (1280) 131.9 -> 140.0 us.
SMALL_GRID_BLOCK_Q = 64
NUM_WARPS = 4
BLOCK_H = 2  # rows h per product (its K is BLOCK_H * W); 1 where two rows pass SHARED_BUDGET
MAX_STAGES = 3
# Shared memory for the joint weights (the product's left-hand side) and the pipelined value tiles
# (an H100 block may have 227 KiB; the rest is left for Triton's layout conversions). A bound, not
# what a build takes: Triton 3.8's sm_90 fp16 build keeps the joint weights in registers (16 KiB of
# shared memory at W = 84, 32 KiB at 256; ptxas, read on the CPU: not the GPU machine's Triton 3.6).
SHARED_BUDGET = 160 * 1024
# Registers for the [BLOCK_Q, W] row probabilities, which every step reads.
ROW_PROBABILITIES_BUDGET = 64 * 1024
COL_CHUNK = 32  # rows h per product of the column scores (a tensor-core N is at least 16)


@triton.jit
def _key_scores(
    query, key_ptr, mask_ptr, n, batch, length, head_dim, k, d, d_ok, DOT_PRECISION: tl.constexpr
):
    """(query [BLOCK_Q, BLOCK_D] . key[n, k] in float32, -inf where key k is padded or past ``length``:
    [BLOCK_Q, len(k)]; the keys that are neither: [1, len(k)]), for the row keys (k = columns w) or
    the column keys (k = rows h). Validity is returned, not read back from -inf: a NaN score must stay
    NaN (as in the reference), not pass for padding."""
    k_ok = k < length
    key = tl.load(
        key_ptr + (n * length + k)[:, None] * head_dim + d[None, :],
        mask=k_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    scores = tl.dot(query, tl.trans(key), input_precision=DOT_PRECISION)
    padded = tl.load(mask_ptr + batch * length + k, mask=k_ok, other=1)
    valid = (padded == 0)[None, :]
    return tl.where(valid, scores, float("-inf")), valid


@triton.jit
def _projected_queries(queries_ptr, query_offsets, term_ptr, term_offsets, d, ok, scale):
    """(queries + term) * scale for a [BLOCK_Q, BLOCK_D] tile, in float32, rounded to the queries'
    dtype (the products' input): the row or column queries of one head, from their projection and
    their position term at the given element offsets."""
    projected = tl.load(queries_ptr + query_offsets[:, None] + d[None, :], mask=ok, other=0.0)
    term = tl.load(term_ptr + term_offsets[:, None] + d[None, :], mask=ok, other=0.0)
    return ((projected.to(tl.float32) + term.to(tl.float32)) * scale).to(queries_ptr.dtype.element_ty)


@triton.jit
def _term_offsets(batch, q, map_width, stride_b, stride_y, stride_x):
    """Element offsets of query q's position term, q at (q // map_width, q % map_width) of its map
    (strides 0 along the dims a term is broadcast over)."""
    return (
        batch * stride_b + (q // map_width).to(tl.int64) * stride_y + (q % map_width).to(tl.int64) * stride_x
    )


@triton.jit
def _column_probabilities(
    q_col,
    k_col_ptr,
    mask_col_ptr,
    probs_col_ptr,
    row_index,
    q_ok,
    n,
    batch,
    height,
    head_dim,
    d,
    d_ok,
    BLOCK_Q: tl.constexpr,
    COL_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Write probs_col[row_index, :height] (the masked softmax over rows h of q_col . k_col, in
    float32, stored in probs_col's dtype) for the program's queries q_col [BLOCK_Q, BLOCK_D]: a
    running max and sum over chunks of COL_CHUNK rows, then the probabilities chunk by chunk."""
    chunk = tl.arange(0, COL_CHUNK)
    col_max = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for h_start in range(0, height, COL_CHUNK):
        scores, valid = _key_scores(
            q_col,
            k_col_ptr,
            mask_col_ptr,
            n,
            batch,
            height,
            head_dim,
            h_start + chunk,
            d,
            d_ok,
            DOT_PRECISION,
        )
        new_max = tl.maximum(col_max, tl.max(scores, axis=1))
        # The sum so far, rescaled to the new max (shifted by 0 while every row seen is padded: the
        # max is -inf, and -inf - -inf is NaN); 0 before the first unpadded row.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        kept = tl.exp2((col_max - shift) * 1.4426950408889634)
        total = total * kept + tl.sum(softmax_numerators(scores, valid, new_max), axis=1)
        col_max = new_max
    scale = softmax_scale(total)[:, None]
    for h_start in range(0, height, COL_CHUNK):
        h = h_start + chunk
        scores, valid = _key_scores(
            q_col, k_col_ptr, mask_col_ptr, n, batch, height, head_dim, h, d, d_ok, DOT_PRECISION
        )
        probs = softmax_numerators(scores, valid, col_max) * scale
        tl.store(
            probs_col_ptr + row_index[:, None] * height + h[None, :],
            probs.to(probs_col_ptr.dtype.element_ty),
            mask=q_ok[:, None] & (h < height)[None, :],
        )


@triton.jit
def _value_rows(
    value_base,
    h,
    h_ok,
    w,
    d,
    d_ok,
    width,
    value_channels,
    BLOCK_W: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """value[h, w, d] of one step as the [BLOCK_H * BLOCK_W, BLOCK_D] right-hand side of a product
    (rows of ``value_channels`` elements). Offsets from value_base, an image's first value, are 32-bit
    (an image's H * W * Cv is far below 2**31): they are the loop's address arithmetic."""
    value = tl.load(
        value_base + (h[:, None, None] * width + w[None, :, None]) * value_channels + d[None, None, :],
        mask=h_ok[:, None, None] & (w < width)[None, :, None] & d_ok[None, None, :],
        other=0.0,
    )
    return tl.reshape(value, (BLOCK_H * BLOCK_W, BLOCK_D))


@triton.jit
def _column_weights(probs_col_ptr, row_index, q_ok, h, height):
    """probs_col[row_index, h] as [BLOCK_Q, BLOCK_H] (0 for rows h past ``height`` and for queries not
    ``q_ok``): one step's column probabilities, read back from the program's buffer."""
    return tl.load(
        probs_col_ptr + row_index[:, None] * height + h[None, :],
        mask=q_ok[:, None] & (h < height)[None, :],
        other=0.0,
    )


@triton.jit
def _joint_weights(probs_row, p_col, BLOCK_Q: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """probs_col[q, h] * probs_row[q, w] for one step's rows h: [BLOCK_Q, BLOCK_H * BLOCK_W], the
    left-hand side of its product (in value's dtype: the product of two 16-bit floats, rounded once, is
    the float32 product rounded)."""
    return tl.reshape(probs_row[:, None, :] * p_col[:, :, None], (BLOCK_Q, BLOCK_H * BLOCK_W))


# Sizes that vary per image are not specialized: one build serves all. The terms' strides are: they
# are multiples of the channels (0 where broadcast), so their divisibility by 16, which vectorizes the
# terms' loads, holds for every image of a model whose channels are a multiple of 16.
@triton.jit(do_not_specialize=["num_queries", "height", "width", "map_width"])
def rcda_aggregate_kernel(
    queries_ptr,
    row_term_ptr,
    col_term_ptr,
    k_col_ptr,
    mask_col_ptr,
    k_row_ptr,
    mask_row_ptr,
    values_ptr,
    out_ptr,
    probs_col_ptr,
    num_queries,
    heads,
    height,
    width,
    head_dim,
    query_channels,
    map_width,
    row_term_stride_b,
    row_term_stride_y,
    row_term_stride_x,
    col_term_stride_b,
    col_term_stride_y,
    col_term_stride_x,
    value_channels,
    value_channel,
    scale,
    BLOCK_Q: tl.constexpr,
    BLOCK_W: tl.constexpr,
    TAIL_W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    COL_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid (cdiv(num_queries, BLOCK_Q), N). queries [B, Lq, query_channels] (row queries in channels
    [0, C), column queries in [C, 2C), C = heads * head_dim), query q at (q // map_width, q % map_width)
    of its map, whose row and column terms are at the given element strides (0 where broadcast), last
    dim contiguous; values [B, H, W, value_channels], this attention's at value_channel; out [B, Lq, C].
    First the column probabilities of the program's queries, written to probs_col [N, Lq, H] (a
    buffer of the call) and read back after a barrier; then the row probabilities, in registers; then
    each step takes BLOCK_H rows h: the joint weights probs_col[q, h] * probs_row[q, w],
    [BLOCK_Q, BLOCK_H * W], times value[h:h + BLOCK_H] as [BLOCK_H * W, D], accumulated in float32. W
    is covered by BLOCK_W columns, then TAIL_W more if TAIL_W > 0 (a second product into the same
    sum). mask_col [B, H] and mask_row [B, W] uint8, nonzero = padded row or column."""
    n = tl.program_id(1).to(tl.int64)
    batch, head = n // heads, n % heads
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    w = tl.arange(0, BLOCK_W)
    d = tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_H)
    q_ok, d_ok = q < num_queries, d < head_dim
    ok = q_ok[:, None] & d_ok[None, :]
    channels = heads * head_dim
    query_rows = batch * num_queries + q  # of queries and out
    query_offsets = query_rows * query_channels + head * head_dim
    head_offset = head * head_dim
    q_col = _projected_queries(
        queries_ptr + channels,
        query_offsets,
        col_term_ptr,
        _term_offsets(batch, q, map_width, col_term_stride_b, col_term_stride_y, col_term_stride_x)
        + head_offset,
        d,
        ok,
        scale,
    )
    row_index = n * num_queries + q
    _column_probabilities(
        q_col, k_col_ptr, mask_col_ptr, probs_col_ptr, row_index, q_ok, n, batch, height, head_dim,
        d, d_ok, BLOCK_Q, COL_CHUNK, DOT_PRECISION,
    )  # fmt: skip
    tl.debug_barrier()  # the whole program's stores, before any thread reads them back
    q_row = _projected_queries(
        queries_ptr,
        query_offsets,
        row_term_ptr,
        _term_offsets(batch, q, map_width, row_term_stride_b, row_term_stride_y, row_term_stride_x)
        + head_offset,
        d,
        ok,
        scale,
    )
    scores, valid = _key_scores(
        q_row, k_row_ptr, mask_row_ptr, n, batch, width, head_dim, w, d, d_ok, DOT_PRECISION
    )
    row_max = tl.max(scores, axis=1)
    if TAIL_W > 0:
        w_tail = BLOCK_W + tl.arange(0, TAIL_W)
        scores_tail, valid_tail = _key_scores(
            q_row, k_row_ptr, mask_row_ptr, n, batch, width, head_dim, w_tail, d, d_ok, DOT_PRECISION
        )
        row_max = tl.maximum(row_max, tl.max(scores_tail, axis=1))
    numerators = softmax_numerators(scores, valid, row_max)
    total = tl.sum(numerators, axis=1)
    if TAIL_W > 0:
        numerators_tail = softmax_numerators(scores_tail, valid_tail, row_max)
        total += tl.sum(numerators_tail, axis=1)
    row_scale = softmax_scale(total)[:, None]
    probs_row = (numerators * row_scale).to(values_ptr.dtype.element_ty)
    if TAIL_W > 0:
        probs_row_tail = (numerators_tail * row_scale).to(values_ptr.dtype.element_ty)
    value_base = values_ptr + batch * height * width * value_channels + value_channel + head_offset
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    p_col = _column_weights(probs_col_ptr, row_index, q_ok, rows, height)
    for h_start in range(0, height, BLOCK_H):
        h = h_start + rows
        h_ok = h < height
        # The next step's column probabilities, loaded a step ahead: a load used in its own step
        # stalls the step for the cache's latency (Triton does not pipeline loads that feed a
        # product's operand through arithmetic).
        p_next = _column_weights(probs_col_ptr, row_index, q_ok, h + BLOCK_H, height)
        acc = tl.dot(
            _joint_weights(probs_row, p_col, BLOCK_Q, BLOCK_H, BLOCK_W),
            _value_rows(value_base, h, h_ok, w, d, d_ok, width, value_channels, BLOCK_W, BLOCK_H, BLOCK_D),
            acc=acc,
            input_precision=DOT_PRECISION,
        )
        if TAIL_W > 0:
            acc = tl.dot(
                _joint_weights(probs_row_tail, p_col, BLOCK_Q, BLOCK_H, TAIL_W),
                _value_rows(
                    value_base, h, h_ok, w_tail, d, d_ok, width, value_channels, TAIL_W, BLOCK_H, BLOCK_D
                ),
                acc=acc,
                input_precision=DOT_PRECISION,
            )
        p_col = p_next
    # Columns past the kernel's BLOCK_W + TAIL_W would be left out: all NaN instead, never silent.
    acc = tl.where(width > BLOCK_W + TAIL_W, float("nan"), acc)
    out_ptrs = out_ptr + (query_rows * channels + head_offset)[:, None] + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def width_blocks(width: int) -> tuple[int, int]:
    """(BLOCK_W, TAIL_W): ``width`` columns covered by one power of two (TAIL_W 0) or by the largest
    power of two below it and a second one for the rest, whichever is narrower; blocks are at least
    16 wide (the tensor cores' K)."""
    whole = _common.row_block(width)
    if width <= 16:
        return whole, 0
    lead = whole // 2
    tail = _common.row_block(width - lead)
    return (lead, tail) if tail < lead else (whole, 0)


def rcda_aggregate_launch_config(
    num_queries: int,
    batch_heads: int,
    width: int,
    head_dim: int,
    element_size: int,
    sm_count: int | None = None,
    block_q: int | None = None,
) -> tuple:
    """(grid, meta) for the kernel on ``element_size``-byte floats: meta holds the constexpr blocks,
    num_warps and num_stages. A kernel built for BLOCK_W + TAIL_W serves every width up to it. Queries
    per program: ``block_q`` if given (SMALL_GRID_BLOCK_Q or BLOCK_Q), else SMALL_GRID_BLOCK_Q where
    BLOCK_Q's grid would give ``sm_count`` SMs few programs (``_common.few_programs``), else BLOCK_Q
    (always without ``sm_count``)."""
    if block_q is None:
        programs = triton.cdiv(num_queries, BLOCK_Q) * batch_heads
        block_q = SMALL_GRID_BLOCK_Q if _common.few_programs(programs, sm_count) else BLOCK_Q
    block_d, (block_w, tail_w) = _common.row_block(head_dim), width_blocks(width)
    row_bytes = _row_step_bytes(block_w + tail_w, block_q, block_d, element_size)
    block_h = BLOCK_H if BLOCK_H * row_bytes <= SHARED_BUDGET else 1
    step_bytes = block_h * (block_w + tail_w) * block_d * element_size  # one step's value rows
    resident_bytes = block_q * block_h * (block_w + tail_w) * element_size  # one step's joint weights
    meta = {
        "BLOCK_Q": block_q,
        "BLOCK_W": block_w,
        "TAIL_W": tail_w,
        "BLOCK_D": block_d,
        "BLOCK_H": block_h,
        "COL_CHUNK": COL_CHUNK,
        "num_warps": NUM_WARPS,
        "num_stages": max(1, min(MAX_STAGES, (SHARED_BUDGET - resident_bytes) // step_bytes)),
    }
    return (triton.cdiv(num_queries, block_q), batch_heads), meta


def max_kernel_width(element_size: int, head_dim: int) -> int:
    """The widest rows the kernel takes for ``element_size``-byte floats and heads of ``head_dim``: the
    row probabilities [BLOCK_Q, W] must fit ROW_PROBABILITIES_BUDGET and a step of one row h, its joint
    weights [BLOCK_Q, W] and value [W, D], SHARED_BUDGET (with heads of 32: 256 in 16-bit floats, 128 in
    float32, i.e. images up to 8192 pixels wide for C5 and 4096 for DC5 in 16-bit floats). Wider rows
    could fail at launch (Triton's OutOfResources): the op runs the reference for them. Narrower ones
    may still spill registers (Triton 3.8's sm_90 fp16 build spills 124 bytes at W = 84 and 2.7 KB at
    256, as the kernel before the joint weights did: slower, not wrong). Bounds at BLOCK_Q, the larger
    query block: they hold for SMALL_GRID_BLOCK_Q too."""
    widest = min(
        ROW_PROBABILITIES_BUDGET // (BLOCK_Q * element_size),
        SHARED_BUDGET // _row_step_bytes(1, BLOCK_Q, _common.row_block(head_dim), element_size),
    )
    return 1 << (widest.bit_length() - 1)


def _row_step_bytes(width: int, block_q: int, block_d: int, element_size: int) -> int:
    """Shared memory for one row h of a step, ``width`` columns: its joint weights and value."""
    return width * (block_q + block_d) * element_size


def column_buffer_shape(batch_heads: Any, num_queries: Any, height: Any) -> tuple:
    """The shape of the buffer the kernel writes its column probabilities to: [N, Lq, H] (sizes may be
    TensorRT's symbolic ones)."""
    return (batch_heads, num_queries, height)


def check_inputs(
    queries: Tensor,
    row_term: Tensor,
    col_term: Tensor,
    k_col: Tensor,
    mask_col: Tensor,
    k_row: Tensor,
    mask_row: Tensor,
    values: Tensor,
    value_channel: int,
    scale: float,
) -> None:
    """Raise InputError unless queries [B, Lq, Cq] or [B, Hq, Wq, Cq], row_term and col_term of its rank
    with C channels and each other dim 1 or the queries', k_col [N, H, D], k_row [N, W, D] and values
    [B, H, W, Cv] are float tensors of one dtype, mask_col [B, H] and mask_row [B, W] are bool, N is a
    multiple of B (N / B heads, C = heads * D), Cq >= 2C, value_channel + C <= Cv, all on one device."""
    _common.check_tensor(_OP, "values", values, 4, _common.FLOAT_DTYPES, "[B, H, W, Cv]")
    _common.check_tensor(
        _OP, "queries", queries, None, _common.FLOAT_DTYPES, "[B, Lq, Cq] or [B, Hq, Wq, Cq]"
    )
    if queries.dim() not in (3, 4):
        raise InputError(
            f"{_OP}: queries must be 3-d [B, Lq, Cq] or 4-d [B, Hq, Wq, Cq], got shape {list(queries.shape)}"
        )
    rank = queries.dim()
    for name, tensor in (("row_term", row_term), ("col_term", col_term)):
        layout = "[B or 1, Lq or 1, C]" if rank == 3 else "[B or 1, Hq or 1, Wq or 1, C]"
        _common.check_tensor(_OP, name, tensor, rank, _common.FLOAT_DTYPES, layout)
    for name, tensor, layout in (("k_col", k_col, "[N, H, D]"), ("k_row", k_row, "[N, W, D]")):
        _common.check_tensor(_OP, name, tensor, 3, _common.FLOAT_DTYPES, layout)
    _common.check_tensor(_OP, "mask_col", mask_col, 2, (torch.bool,), "[B, H]")
    _common.check_tensor(_OP, "mask_row", mask_row, 2, (torch.bool,), "[B, W]")
    floats = {"queries": queries, "row_term": row_term, "col_term": col_term, "k_col": k_col}
    floats |= {"k_row": k_row, "values": values}
    _common.check_same_device(_OP, **floats, mask_col=mask_col, mask_row=mask_row)
    _common.check_same_dtype(_OP, **floats)
    batch, (n, height, head_dim), width = queries.shape[0], k_col.shape, k_row.shape[1]
    _common.check_size(_OP, "k_row.shape[0] (N)", k_row.shape[0], n)
    _common.check_size(_OP, "k_row.shape[2] (D)", k_row.shape[2], head_dim)
    _common.check_size(_OP, "values.shape[0] (B)", values.shape[0], batch)
    _common.check_size(_OP, "values.shape[1] (H)", values.shape[1], height)
    _common.check_size(_OP, "values.shape[2] (W)", values.shape[2], width)
    _common.check_size(_OP, "mask_col.shape[0] (B)", mask_col.shape[0], batch)
    _common.check_size(_OP, "mask_row.shape[0] (B)", mask_row.shape[0], batch)
    _common.check_size(_OP, "mask_col.shape[1] (H)", mask_col.shape[1], height)
    _common.check_size(_OP, "mask_row.shape[1] (W)", mask_row.shape[1], width)
    if isinstance(n, int) and isinstance(batch, int) and (batch == 0 or n % batch):
        raise InputError(
            f"{_OP}: N = {n} (k_col.shape[0]) is not a multiple of the batch {batch} (queries.shape[0]): "
            "N must be batch * heads"
        )
    channels = n // batch * head_dim if isinstance(n, int) and isinstance(batch, int) else None
    if not isinstance(value_channel, int) or isinstance(value_channel, bool) or value_channel < 0:
        raise InputError(f"{_OP}: value_channel must be an int >= 0, got {value_channel!r}")
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not math.isfinite(scale):
        raise InputError(f"{_OP}: scale must be a finite float, got {scale!r}")
    if channels is None:
        return
    for name, tensor in (("row_term", row_term), ("col_term", col_term)):
        _common.check_size(_OP, f"{name}.shape[-1] (C = heads * D)", tensor.shape[-1], channels)
        for dim, (size, query_size) in enumerate(zip(tensor.shape[:-1], queries.shape[:-1], strict=True)):
            if isinstance(size, int) and isinstance(query_size, int) and size not in (1, query_size):
                raise InputError(
                    f"{_OP}: {name}.shape[{dim}] is {size}, which does not broadcast to the queries' "
                    f"{query_size}: give it size 1 or {query_size}"
                )
    if isinstance(queries.shape[-1], int) and queries.shape[-1] < 2 * channels:
        raise InputError(
            f"{_OP}: queries have {queries.shape[-1]} channels, fewer than the 2 * C = {2 * channels} "
            "of the row and column queries"
        )
    if isinstance(values.shape[3], int) and value_channel + channels > values.shape[3]:
        raise InputError(
            f"{_OP}: value_channel {value_channel} + C = {channels} passes values' {values.shape[3]} channels"
        )


def term_strides(sizes: Sequence[Any], strides: Sequence[Any]) -> tuple[Any, Any, Any]:
    """(batch, map row, map column) element strides of a position term of ``sizes`` [Bt, Lq or 1, C]
    or [Bt, Hq or 1, Wq or 1, C] laid out at ``strides``, 0 along its dims of size 1 (broadcast), the
    row stride 0 for tokens. Ints, or TensorRT shape expressions (the plugin's dense buffers), alike."""
    kept = _common.broadcast_strides(sizes, strides)
    return (kept[0], 0, kept[1]) if len(sizes) == 3 else tuple(kept)


def runs_kernel(dtype: torch.dtype, width: int, head_dim: int, image_values: int = 0) -> bool:
    """Whether the op runs the kernel on CUDA for ``dtype`` inputs ``width`` wide with heads of
    ``head_dim`` and ``image_values`` (H * W * Cv) values per image, not the reference. float32: the
    kernel's products would run on the CUDA cores, several times slower than the whole model on cuBLAS
    (docs/performance.md); its three-TF32 variant needs more shared memory than an H100 has at that
    width. fp32 is the reference precision. The kernel's offsets within an image's values are 32-bit."""
    return (
        dtype != torch.float32
        and width <= max_kernel_width(dtype.itemsize, head_dim)
        and image_values < 2**31
    )


def warm(width: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
    """Compile the kernel for feature maps ``width`` wide (any of its ``width_blocks`` class) of a
    model of ``heads`` heads of ``head_dim`` in ``dtype``: one launch per query block on a zero map one
    row high, whatever block the launch config would pick (it depends on the batch, the map and the
    GPU). The model's calls run these builds: beyond the blocks, Triton specializes on dtypes,
    pointers' 16-byte alignment and ints' divisibility by 16 (or being 1), all shared with the
    encoder's and decoder's calls (every channel count, offset and stride there is a multiple of C,
    which must be a multiple of 16). Does nothing where the op runs the reference (``runs_kernel``)."""
    if not runs_kernel(dtype, width, head_dim):
        return
    channels = heads * head_dim
    zeros = functools.partial(torch.zeros, dtype=dtype, device=device)
    padding = functools.partial(torch.zeros, dtype=torch.bool, device=device)
    for block_q in (SMALL_GRID_BLOCK_Q, BLOCK_Q):
        rcda_aggregate_triton(
            zeros(1, 1, width, 2 * channels),
            zeros(1, 1, width, channels),
            zeros(1, 1, 1, channels),
            zeros(heads, 1, head_dim),
            padding(1, 1),
            zeros(heads, width, head_dim),
            padding(1, width),
            zeros(1, 1, width, channels),
            0,
            head_dim**-0.5,
            block_q=block_q,
        )


def rcda_aggregate_triton(
    queries: Tensor,
    row_term: Tensor,
    col_term: Tensor,
    k_col: Tensor,
    mask_col: Tensor,
    k_row: Tensor,
    mask_row: Tensor,
    values: Tensor,
    value_channel: int,
    scale: float,
    out: Tensor | None = None,
    block_q: int | None = None,
) -> Tensor:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); inputs other than the terms are
    copied contiguous first, the terms only if their channels are strided. Writes ``out`` (new if None,
    else contiguous [*queries.shape[:-1], C] of the queries' dtype). Queries per program: ``block_q``,
    or None for the launch config's choice for the device's SMs."""
    check_inputs(queries, row_term, col_term, k_col, mask_col, k_row, mask_row, values, value_channel, scale)
    return _launch(
        queries,
        row_term,
        col_term,
        k_col,
        mask_col,
        k_row,
        mask_row,
        values,
        value_channel,
        scale,
        out,
        block_q,
    )


def _launch(
    queries: Tensor,
    row_term: Tensor,
    col_term: Tensor,
    k_col: Tensor,
    mask_col: Tensor,
    k_row: Tensor,
    mask_row: Tensor,
    values: Tensor,
    value_channel: int,
    scale: float,
    out: Tensor | None,
    block_q: int | None,
) -> Tensor:
    """``rcda_aggregate_triton`` on inputs ``check_inputs`` has passed."""
    n, height, head_dim = k_col.shape
    width, batch = k_row.shape[1], queries.shape[0]
    heads = n // batch
    shape = (*queries.shape[:-1], heads * head_dim)
    if out is None:
        out = queries.new_empty(shape)
    else:
        _common.check_out(_OP, out, shape, queries.dtype, queries.device)
    if out.numel() == 0:
        return out
    num_queries = math.prod(queries.shape[1:-1])
    map_width = queries.shape[2] if queries.dim() == 4 else num_queries
    terms = [term if term.stride(-1) == 1 else term.contiguous() for term in (row_term, col_term)]
    strides = [term_strides(term.shape, term.stride()) for term in terms]
    sm_count = _common.sm_count(values.device.index) if values.is_cuda else None
    grid, meta = rcda_aggregate_launch_config(
        num_queries, n, width, head_dim, values.element_size(), sm_count=sm_count, block_q=block_q
    )
    with _common.launch_context(_OP, rcda_aggregate_kernel, values):
        rcda_aggregate_kernel[grid](
            queries.contiguous(),
            *terms,
            k_col.contiguous(),
            mask_col.contiguous().view(torch.uint8),
            k_row.contiguous(),
            mask_row.contiguous().view(torch.uint8),
            values.contiguous(),
            out,
            values.new_empty(column_buffer_shape(n, num_queries, height)),  # the kernel's own
            num_queries,
            heads,
            height,
            width,
            head_dim,
            queries.shape[-1],
            map_width,
            *strides[0],
            *strides[1],
            values.shape[3],
            value_channel,
            float(scale),
            DOT_PRECISION=_common.dot_precision(values.dtype),
            **meta,
        )
    return out


@torch.library.custom_op("anchordetr::rcda_aggregate", mutates_args=())
def rcda_aggregate(
    queries: Tensor,
    row_term: Tensor,
    col_term: Tensor,
    k_col: Tensor,
    mask_col: Tensor,
    k_row: Tensor,
    mask_row: Tensor,
    values: Tensor,
    value_channel: int,
    scale: float,
) -> Tensor:
    """queries [B, *S, Cq] (S: Lq, or Hq, Wq), row_term and col_term broadcastable to [B, *S, C], k_col
    [N, H, D], mask_col [B, H] bool, k_row [N, W, D], mask_row [B, W] bool (True = padded, N = B *
    heads, C = heads * D), values [B, H, W, Cv] (this attention's from value_channel) -> [B, *S, C].
    PyTorch reference off CUDA."""
    args = (queries, row_term, col_term, k_col, mask_col, k_row, mask_row, values, value_channel, scale)
    check_inputs(*args)
    return reference.rcda_aggregate(*args).contiguous()  # dense, like the fake


@rcda_aggregate.register_kernel("cuda")
def _(
    queries: Tensor,
    row_term: Tensor,
    col_term: Tensor,
    k_col: Tensor,
    mask_col: Tensor,
    k_row: Tensor,
    mask_row: Tensor,
    values: Tensor,
    value_channel: int,
    scale: float,
) -> Tensor:
    args = (queries, row_term, col_term, k_col, mask_col, k_row, mask_row, values, value_channel, scale)
    check_inputs(*args)  # once: the launch below does not check again
    if not runs_kernel(values.dtype, k_row.shape[1], k_row.shape[2], values.shape[1:].numel()):
        return reference.rcda_aggregate(*args).contiguous()
    return _launch(*args, out=None, block_q=None)


@rcda_aggregate.register_fake
def _(
    queries: Tensor,
    row_term: Tensor,
    col_term: Tensor,
    k_col: Tensor,
    mask_col: Tensor,
    k_row: Tensor,
    mask_row: Tensor,
    values: Tensor,
    value_channel: int,
    scale: float,
) -> Tensor:
    check_inputs(queries, row_term, col_term, k_col, mask_col, k_row, mask_row, values, value_channel, scale)
    heads = k_col.shape[0] // queries.shape[0]
    return queries.new_empty((*queries.shape[:-1], heads * k_col.shape[2]))
