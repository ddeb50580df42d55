"""``anchordetr::rcda_aggregate``: the value aggregation of row-column decoupled attention.

out[n, q] = sum_h sum_w probs_col[n, q, h] * probs_row[n, q, w] * value[n, h, w]. Done as two
batched matmuls, it materializes an [N, W, Lq, D] intermediate (64 MB per image and layer in fp16 at
800x800); the kernel keeps it in registers: for each row h it multiplies the [BLOCK_Q, W] row
probabilities with value[h] on the tensor cores and accumulates the [BLOCK_Q, D] result scaled by
probs_col[:, h], in float32.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common, reference

_OP = "rcda_aggregate"
BLOCK_Q = 64
NUM_STAGES = 3  # best of a sweep over BLOCK_Q 32..128, 4/8 warps, 1..3 stages on an H100 (800x800, b1 and b8)


@triton.jit
def rcda_aggregate_kernel(
    probs_col_ptr,
    probs_row_ptr,
    value_ptr,
    out_ptr,
    num_queries,
    height,
    width,
    head_dim,
    BLOCK_Q: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    w = tl.arange(0, BLOCK_W)
    d = tl.arange(0, BLOCK_D)
    q_ok, w_ok, d_ok = q < num_queries, w < width, d < head_dim
    row_index = n * num_queries + q
    probs_row = tl.load(
        probs_row_ptr + row_index[:, None] * width + w[None, :], mask=q_ok[:, None] & w_ok[None, :], other=0.0
    )
    col_ptrs = probs_col_ptr + row_index * height
    value_ptrs = value_ptr + n * height * width * head_dim + w[:, None] * head_dim + d[None, :]
    value_ok = w_ok[:, None] & d_ok[None, :]
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for h in range(height):
        p_col = tl.load(col_ptrs + h, mask=q_ok, other=0.0).to(tl.float32)
        value = tl.load(value_ptrs + h * width * head_dim, mask=value_ok, other=0.0)
        acc += p_col[:, None] * tl.dot(probs_row, value, input_precision=DOT_PRECISION)
    out_ptrs = out_ptr + row_index[:, None] * head_dim + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


def rcda_aggregate_launch_config(num_queries: int, batch_heads: int, width: int, head_dim: int) -> tuple:
    """(grid, constexpr meta) for the kernel; a kernel built for BLOCK_W serves every width <= BLOCK_W."""
    meta = {
        "BLOCK_Q": BLOCK_Q,
        "BLOCK_W": max(16, triton.next_power_of_2(width)),
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
    }
    return (triton.cdiv(num_queries, BLOCK_Q), batch_heads), meta


def dot_precision(dtype: torch.dtype) -> str:
    """The kernel's tl.dot precision: float32 stays float32 on the tensor cores (no TF32) since that
    path is the accuracy reference; 16-bit inputs multiply natively with float32 accumulation."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_inputs(probs_col: Tensor, probs_row: Tensor, value: Tensor) -> None:
    """Raise InputError unless probs_col [N, Lq, H], probs_row [N, Lq, W] and value [N, H, W, D] are
    float tensors of one dtype and device with matching sizes."""
    _common.check_tensor(_OP, "value", value, 4, _common.FLOAT_DTYPES, "[N, H, W, D]")
    _common.check_tensor(_OP, "probs_col", probs_col, 3, _common.FLOAT_DTYPES, "[N, Lq, H]")
    _common.check_tensor(_OP, "probs_row", probs_row, 3, _common.FLOAT_DTYPES, "[N, Lq, W]")
    _common.check_same_device(_OP, probs_col=probs_col, probs_row=probs_row, value=value)
    _common.check_same_dtype(_OP, probs_col=probs_col, probs_row=probs_row, value=value)
    batch, height, width, _ = value.shape
    _common.check_size(_OP, "probs_col.shape[0] (N)", probs_col.shape[0], batch)
    _common.check_size(_OP, "probs_row.shape[0] (N)", probs_row.shape[0], batch)
    _common.check_size(_OP, "probs_row.shape[1] (queries)", probs_row.shape[1], probs_col.shape[1])
    _common.check_size(_OP, "probs_col.shape[2] (H)", probs_col.shape[2], height)
    _common.check_size(_OP, "probs_row.shape[2] (W)", probs_row.shape[2], width)


def rcda_aggregate_triton(
    probs_col: Tensor, probs_row: Tensor, value: Tensor, out: Tensor | None = None
) -> Tensor:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); non-contiguous inputs are copied
    contiguous first. Writes ``out`` (new if None, else contiguous [N, Lq, D] of value's dtype)."""
    check_inputs(probs_col, probs_row, value)
    n, num_queries, height = probs_col.shape
    width, head_dim = value.shape[2], value.shape[3]
    shape = (n, num_queries, head_dim)
    if out is None:
        out = value.new_empty(shape)
    _common.check_out(_OP, out, shape, value.dtype, value.device)
    if out.numel() == 0:
        return out
    grid, meta = rcda_aggregate_launch_config(num_queries, n, width, head_dim)
    with _common.launch_context(_OP, rcda_aggregate_kernel, value):
        rcda_aggregate_kernel[grid](
            probs_col.contiguous(),
            probs_row.contiguous(),
            value.contiguous(),
            out,
            num_queries,
            height,
            width,
            head_dim,
            DOT_PRECISION=dot_precision(value.dtype),
            num_stages=NUM_STAGES,
            **meta,
        )
    return out


@torch.library.custom_op("anchordetr::rcda_aggregate", mutates_args=())
def rcda_aggregate(probs_col: Tensor, probs_row: Tensor, value: Tensor) -> Tensor:
    """probs_col [N, Lq, H], probs_row [N, Lq, W], value [N, H, W, D] -> [N, Lq, D]. PyTorch
    reference off CUDA."""
    check_inputs(probs_col, probs_row, value)
    return reference.rcda_aggregate(probs_col, probs_row, value)


@rcda_aggregate.register_kernel("cuda")
def _(probs_col: Tensor, probs_row: Tensor, value: Tensor) -> Tensor:
    return rcda_aggregate_triton(probs_col, probs_row, value)


@rcda_aggregate.register_fake
def _(probs_col: Tensor, probs_row: Tensor, value: Tensor) -> Tensor:
    check_inputs(probs_col, probs_row, value)
    return value.new_empty((value.shape[0], probs_col.shape[1], value.shape[3]))
