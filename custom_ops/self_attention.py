"""``anchordetr::self_attention``: the decoder's multi-head self-attention from its packed projection,
position terms added and heads merged in the kernel.

packed [B, L, 3C] holds the projected queries, keys and values (channels [0, C), [C, 2C), [2C, 3C),
C = heads * D) as one GEMM leaves them; position_terms [1 or B, L, 2C] are added to the queries and
keys (in float32, rounded to the input dtype, as the float16 sum is). out[b, l, head] = softmax over
keys j of scale * q[l] . k[j], times v, for each head: [B, L, C]. Done with PyTorch's
``scaled_dot_product_attention`` (``reference.self_attention``), the terms' add and the heads' split
into contiguous copies run in kernels before it and the heads' merge in one after it; here one launch
reads the GEMM's output and writes the merged heads.

A program takes BLOCK_M queries of one head (LARGE_GRID_BLOCK_M where the grid gives every SM enough
programs) and runs over the keys BLOCK_N at a time, flash-style: scores on the tensor cores in
float32, a running max and sum in float32, the probabilities rounded to the values' dtype for their
product with the values, accumulated in float32, divided by the sum at the end. The running max is
of the unscaled scores and the scale is applied inside each exponent (one fused multiply-add per
score), and only the last, partial step masks its scores: a fifth fewer instructions per step than
scaling and masking every score. Each step's keys, key terms and values are loaded one step ahead
(Triton does not pipeline loads whose values pass through arithmetic before a product, as the keys
do; the key terms as a second product, which lets it pipeline them, measured slower:
docs/transformer_performance.md).
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from anchordetr_trt.errors import InputError

from . import _common, reference

_OP = "self_attention"
BLOCK_M = 64  # queries per program
BLOCK_N = 64  # keys per step
NUM_WARPS = 4
# Queries per program and warps where their grid gives every SM enough programs (not
# ``_common.few_programs``). Kernel alone on an H100 (132 SMs), 900 queries, 8 heads of 32, fp16:
# batch 8 (512 programs at 128) 42.2 us at 64 queries and 4 warps, 38.6 at 128 and 8; batch 1 (64
# programs at 128) 11.3 against 15.2 (results/h100/ops_microbench_648a63e.json; at batches 4 and 5, either
# side of the switch, the other launch is about 2 us faster: docs/transformer_performance.md).
LARGE_GRID_BLOCK_M = 128
LARGE_GRID_NUM_WARPS = 8
NUM_STAGES = 2
_LOG2E = 1.4426950408889634
MAX_GRID_Y = 65535  # B * heads: the grid's second axis, which CUDA limits to 65535 blocks
MAX_HEAD_DIM = 256  # channels per head: the [BLOCK_M, D] accumulator and tiles live in registers


@triton.jit
def _values(packed_ptr, rows, channel, row_ok, d, d_ok):
    """packed[rows, channel + d]: [len(rows), BLOCK_D], 0 outside ``row_ok`` and ``d_ok``."""
    return tl.load(
        packed_ptr + (rows + channel)[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0
    )


@triton.jit
def _with_terms(packed_ptr, rows, channel, row_ok, term_ptr, term_rows, term_channel, d, d_ok):
    """packed[rows, channel + d] + term[term_rows, term_channel + d], in float32 rounded to packed's
    dtype (as their 16-bit sum is): the queries or keys of one head, [len(rows), BLOCK_D]. Row offsets
    are in elements (packed's rows and the terms' have their own strides, applied by the caller)."""
    x = _values(packed_ptr, rows, channel, row_ok, d, d_ok)
    term = _values(term_ptr, term_rows, term_channel, row_ok, d, d_ok)
    return (x.to(tl.float32) + term.to(tl.float32)).to(packed_ptr.dtype.element_ty)


@triton.jit
def _attend(
    q, k, v, j_ok, row_max, total, acc, scale_log2, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr
):
    """One step of the online softmax over keys k and values v [BLOCK_N, BLOCK_D] (keys not ``j_ok``
    left out if MASKED): (row_max, total, acc) updated. The max is taken of the unscaled scores (the
    scale is positive) and the scale applied inside each exponent, one fused multiply-add."""
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASKED:
        scores = tl.where(j_ok[None, :], scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, axis=1))  # finite: every step has a key
    shift = new_max * scale_log2
    kept = tl.exp2(row_max * scale_log2 - shift)
    probs = tl.exp2(scores * scale_log2 - shift[:, None])
    total = total * kept + tl.sum(probs, axis=1)
    acc = tl.dot(probs.to(v.dtype), v, acc=acc * kept[:, None], input_precision=DOT_PRECISION)
    return new_max, total, acc


@triton.jit(do_not_specialize=["length"])  # one build serves every sequence length
def self_attention_kernel(
    packed_ptr,
    term_ptr,
    out_ptr,
    length,
    heads,
    head_dim,
    term_stride_b,
    term_stride_l,
    scale_log2,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid (cdiv(length, BLOCK_M), B * heads). packed [B, length, 3C] contiguous, term [Bt, length, 2C]
    at element strides term_stride_b (0 where broadcast) and term_stride_l, its channels contiguous;
    out [B, length, C] contiguous (C = heads * head_dim). scale_log2 = scale * log2(e): the scores'
    factor before exp2."""
    n = tl.program_id(1).to(tl.int64)
    batch, head = n // heads, n % heads
    channels = heads * head_dim
    head_offset = head * head_dim
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < length
    image = packed_ptr + batch * length * 3 * channels  # 64-bit image start, 32-bit offsets within
    terms = term_ptr + batch * term_stride_b
    q = _with_terms(
        image, m * 3 * channels, head_offset, m_ok, terms, m * term_stride_l, head_offset, d, d_ok
    )
    key, value = channels + head_offset, 2 * channels + head_offset  # this head's channels of packed
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # of the unscaled scores
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    step = tl.arange(0, BLOCK_N)
    j_ok = step < length
    k = _with_terms(image, step * 3 * channels, key, j_ok, terms, step * term_stride_l, key, d, d_ok)
    v = _values(image, step * 3 * channels, value, j_ok, d, d_ok)
    # Whole steps need no mask on their scores; the last, partial one (if any) does.
    whole = length - length % BLOCK_N
    for start in range(0, whole, BLOCK_N):
        # The next step's keys and values, loaded before this step's products need the registers'
        # current ones (past the end: masked, never read).
        j = start + BLOCK_N + step
        next_ok = j < length
        k_next = _with_terms(image, j * 3 * channels, key, next_ok, terms, j * term_stride_l, key, d, d_ok)
        v_next = _values(image, j * 3 * channels, value, next_ok, d, d_ok)
        row_max, total, acc = _attend(q, k, v, j_ok, row_max, total, acc, scale_log2, False, DOT_PRECISION)
        k, v, j_ok = k_next, v_next, next_ok
    if whole < length:
        row_max, total, acc = _attend(q, k, v, j_ok, row_max, total, acc, scale_log2, True, DOT_PRECISION)
    out = acc / total[:, None]
    out_ptrs = out_ptr + ((batch * length + m) * channels + head_offset)[:, None] + d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def self_attention_launch_config(
    length: int,
    batch_heads: int,
    head_dim: int,
    sm_count: int | None = None,
    block_m: int | None = None,
) -> tuple:
    """(grid, meta) for ``length`` tokens of ``batch_heads`` heads of ``head_dim``: meta holds the
    constexpr blocks, num_warps and num_stages. Queries per program and warps: ``block_m`` if given
    (BLOCK_M or LARGE_GRID_BLOCK_M, with their warps), else LARGE_GRID_BLOCK_M where its grid gives
    ``sm_count`` SMs enough programs (not ``_common.few_programs``), else BLOCK_M (always without
    ``sm_count``). Two builds per head size serve every length and batch."""
    if block_m is None:
        programs = triton.cdiv(length, LARGE_GRID_BLOCK_M) * batch_heads
        few = sm_count is None or _common.few_programs(programs, sm_count)
        block_m = BLOCK_M if few else LARGE_GRID_BLOCK_M
    meta = {
        "BLOCK_M": block_m,
        "BLOCK_N": BLOCK_N,
        "BLOCK_D": _common.row_block(head_dim),
        "num_warps": LARGE_GRID_NUM_WARPS if block_m == LARGE_GRID_BLOCK_M else NUM_WARPS,
        "num_stages": NUM_STAGES,
    }
    return (triton.cdiv(length, block_m), batch_heads), meta


def check_inputs(packed: Tensor, position_terms: Tensor, num_heads: int, scale: float) -> None:
    """Raise InputError unless packed [B, L, 3C] and position_terms [1 or B, L, 2C] are float tensors of
    one dtype on one device, num_heads an int >= 1 dividing C, scale a finite float >= 1e-38."""
    _common.check_tensor(_OP, "packed", packed, 3, _common.FLOAT_DTYPES, "[B, L, 3C]")
    _common.check_tensor(_OP, "position_terms", position_terms, 3, _common.FLOAT_DTYPES, "[1 or B, L, 2C]")
    _common.check_same_device(_OP, packed=packed, position_terms=position_terms)
    _common.check_same_dtype(_OP, packed=packed, position_terms=position_terms)
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise InputError(f"{_OP}: num_heads must be an int >= 1, got {num_heads!r}")
    # The kernel takes the max of unscaled scores: a positive scale whose factor (``score_factor``) is
    # a normal float32 (a factor of 0 would make NaN of the padded keys' -inf).
    finite = isinstance(scale, int | float) and not isinstance(scale, bool) and math.isfinite(scale)
    if not finite or scale < 1e-38:
        raise InputError(f"{_OP}: scale must be a finite float of at least 1e-38, got {scale!r}")
    batch, length, packed_channels = packed.shape
    term_batch, term_length, term_channels = position_terms.shape
    if isinstance(packed_channels, int) and packed_channels % (3 * num_heads):
        raise InputError(
            f"{_OP}: packed has {packed_channels} channels, not 3 * C with C a multiple of the "
            f"{num_heads} heads: pass the queries', keys' and values' projections side by side"
        )
    channels = packed_channels // 3 if isinstance(packed_channels, int) else None
    if channels is not None:
        _common.check_size(_OP, "position_terms.shape[2] (2C)", term_channels, 2 * channels)
    _common.check_size(_OP, "position_terms.shape[1] (L)", term_length, length)
    if isinstance(term_batch, int) and isinstance(batch, int) and term_batch not in (1, batch):
        raise InputError(
            f"{_OP}: position_terms.shape[0] is {term_batch}, which does not broadcast to the batch "
            f"{batch}: give it size 1 or {batch}"
        )


def term_strides(sizes: Sequence[Any], strides: Sequence[Any]) -> tuple[Any, Any]:
    """(batch, token) element strides of position terms of ``sizes`` [Bt, L, 2C] laid out at
    ``strides``, the batch's 0 where Bt is 1 (broadcast; the token's too where L is 1). Ints, or
    TensorRT shape expressions (the plugin's dense buffers), alike."""
    stride_b, stride_l = _common.broadcast_strides(sizes, strides)
    return stride_b, stride_l


def score_factor(scale: float) -> float:
    """The kernel's factor of the scores before exp2: ``scale`` * log2(e)."""
    return float(scale) * _LOG2E


def self_attention_triton(
    packed: Tensor,
    position_terms: Tensor,
    num_heads: int,
    scale: float,
    out: Tensor | None = None,
    block_m: int | None = None,
) -> Tensor:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); packed is copied contiguous first,
    the terms only if their channels are strided. Writes ``out`` (new if None, else contiguous
    [B, L, C] of packed's dtype). ``block_m``: queries per program, BLOCK_M or LARGE_GRID_BLOCK_M
    (default: as ``self_attention_launch_config`` picks for the grid and the GPU)."""
    check_inputs(packed, position_terms, num_heads, scale)
    return _launch(packed, position_terms, num_heads, scale, out, block_m)


def warm(heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
    """Compile the kernel for heads of ``head_dim`` in ``dtype``, at both of its query blocks: one
    launch each on a zero input of one token per head, whatever block the launch config would pick
    (it depends on the batch, the number of tokens and the GPU). Beyond the blocks, Triton specializes
    on dtypes, pointers' 16-byte alignment and ints' divisibility by 16 (or being 1), which the model's
    calls share (channels and strides are multiples of C, which must be a multiple of 16; the number of
    tokens is not specialized). Does nothing where the op runs the reference (``runs_kernel``)."""
    channels = heads * head_dim
    packed = torch.zeros(1, 1, 3 * channels, dtype=dtype, device=device)
    terms = torch.zeros(1, 1, 2 * channels, dtype=dtype, device=device)
    if not runs_kernel(packed, terms, heads):
        return
    for block_m in (BLOCK_M, LARGE_GRID_BLOCK_M):
        self_attention_triton(packed, terms, heads, head_dim**-0.5, block_m=block_m)


def _launch(
    packed: Tensor,
    position_terms: Tensor,
    num_heads: int,
    scale: float,
    out: Tensor | None,
    block_m: int | None = None,
) -> Tensor:
    """``self_attention_triton`` on checked inputs."""
    batch, length, packed_channels = packed.shape
    channels = packed_channels // 3
    shape = (batch, length, channels)
    out = packed.new_empty(shape) if out is None else out
    _common.check_out(_OP, out, shape, packed.dtype, packed.device)
    if out.numel() == 0:
        return out
    terms = position_terms if position_terms.stride(-1) == 1 else position_terms.contiguous()
    head_dim = channels // num_heads
    sm_count = _common.sm_count(packed.device.index) if packed.is_cuda else None
    grid, meta = self_attention_launch_config(
        length, batch * num_heads, head_dim, sm_count=sm_count, block_m=block_m
    )
    with _common.launch_context(_OP, self_attention_kernel, packed):
        self_attention_kernel[grid](
            packed.contiguous(),
            terms,
            out,
            length,
            num_heads,
            head_dim,
            *term_strides(terms.shape, terms.stride()),
            score_factor(scale),
            DOT_PRECISION=_common.dot_precision(packed.dtype),
            **meta,
        )
    return out


def fits_kernel(head_dim: int, batch_heads: int, image_elements: int) -> bool:
    """Whether the kernel takes heads of ``head_dim`` channels, ``batch_heads`` (B * heads) of them and
    images whose packed projection and position terms span ``image_elements`` elements: heads of at
    most MAX_HEAD_DIM channels, B * heads within the grid's second axis (MAX_GRID_Y), offsets within
    an image below 2**31 (they are 32-bit)."""
    return head_dim <= MAX_HEAD_DIM and batch_heads <= MAX_GRID_Y and image_elements < 2**31


def runs_kernel(packed: Tensor, position_terms: Tensor, num_heads: int) -> bool:
    """Whether the op runs the kernel on CUDA for these inputs, not the reference: 16-bit floats
    (float32 products would run on the CUDA cores, slower than cuBLAS; float32 is the reference
    precision) within the kernel's limits (``fits_kernel``)."""
    batch, length, packed_channels = packed.shape
    extent = max(length * packed_channels, length * position_terms.stride(1) + position_terms.shape[2])
    return packed.dtype != torch.float32 and fits_kernel(
        packed_channels // 3 // num_heads, batch * num_heads, extent
    )


@torch.library.custom_op("anchordetr::self_attention", mutates_args=())
def self_attention(packed: Tensor, position_terms: Tensor, num_heads: int, scale: float) -> Tensor:
    """packed [B, L, 3C] (queries, keys, values), position_terms [1 or B, L, 2C] (added to the queries
    and keys) -> [B, L, C]: multi-head attention of ``num_heads`` heads with scores scaled by
    ``scale`` (>= 1e-38), heads merged (``reference.self_attention``). PyTorch reference off CUDA."""
    check_inputs(packed, position_terms, num_heads, scale)
    return reference.self_attention(packed, position_terms, num_heads, scale).contiguous()


@self_attention.register_kernel("cuda")
def _(packed: Tensor, position_terms: Tensor, num_heads: int, scale: float) -> Tensor:
    check_inputs(packed, position_terms, num_heads, scale)  # once: the launch below does not check again
    if not runs_kernel(packed, position_terms, num_heads):
        return reference.self_attention(packed, position_terms, num_heads, scale).contiguous()
    return _launch(packed, position_terms, num_heads, scale, out=None)


@self_attention.register_fake
def _(packed: Tensor, position_terms: Tensor, num_heads: int, scale: float) -> Tensor:
    check_inputs(packed, position_terms, num_heads, scale)
    batch, length, packed_channels = packed.shape
    return packed.new_empty((batch, length, packed_channels // 3))
