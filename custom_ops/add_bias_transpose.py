"""``anchordetr::add_bias_transpose``: bias, scale and the split into heads of a projection, in one pass.

Replaces add -> mul -> view -> transpose -> reshape (three kernels, the last a strided copy). A
program reads a [BLOCK_L, BLOCK_C] tile of x row by row and writes each head's [BLOCK_L, head_dim]
slice of it as one contiguous run of the output.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from anchordetr_trt.errors import InputError

from . import _common, reference

_OP = "add_bias_transpose"
MAX_BLOCK_C = 256


@triton.jit(do_not_specialize=["length"])  # sizes vary per image: one build serves all
def add_bias_transpose_kernel(
    x_ptr,
    bias_ptr,
    out_ptr,
    length,
    channels,
    head_dim,
    scale,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid (cdiv(length, BLOCK_L), cdiv(channels, BLOCK_C), batch); x [batch, length, channels]
    and out [batch * channels // head_dim, length, head_dim] contiguous, bias [channels]."""
    batch = tl.program_id(2).to(tl.int64)
    positions = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < channels
    in_bounds = (positions < length)[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + (batch * length + positions)[:, None] * channels + cols[None, :], mask=in_bounds)
    bias = tl.load(bias_ptr + cols, mask=col_ok)
    # Round the sum to the storage dtype before scaling, as the unfused eager graph does (bit-exact on
    # GPUs; the interpreter truncates float32 -> bfloat16).
    biased = (x.to(tl.float32) + bias.to(tl.float32)[None, :]).to(out_ptr.dtype.element_ty)
    y = biased.to(tl.float32) * scale
    head, within = cols // head_dim, cols % head_dim
    num_heads = channels // head_dim
    out_rows = (batch * num_heads + head[None, :]) * length + positions[:, None]
    tl.store(
        out_ptr + out_rows * head_dim + within[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=in_bounds,
    )


def add_bias_transpose_launch_config(
    batch: int, length: int, channels: int
) -> tuple[tuple[int, int, int], dict]:
    """(grid, meta) for x [batch, length, channels]: meta holds BLOCK_L, BLOCK_C and num_warps. Any
    sizes work with any blocks; the grid covers channels in blocks of BLOCK_C."""
    block_c = min(_common.row_block(channels), MAX_BLOCK_C)
    block_l, warps = _common.row_tile(block_c)
    grid = (triton.cdiv(length, block_l), triton.cdiv(channels, block_c), batch)
    return grid, {"BLOCK_L": block_l, "BLOCK_C": block_c, "num_warps": warps}


def check_inputs(x: Tensor, bias: Tensor, num_heads: int, scale: float) -> None:
    """Raise InputError unless x [B, L, C] float, bias [C] of x's dtype, C divisible by num_heads."""
    _common.check_tensor(_OP, "x", x, 3, _common.FLOAT_DTYPES, "[B, L, C]")
    _common.check_tensor(_OP, "bias", bias, 1, (x.dtype,), "[C] (x's dtype)")
    _common.check_same_device(_OP, x=x, bias=bias)
    _common.check_size(_OP, "bias.shape[0] (channels)", bias.shape[0], x.shape[2])
    if not isinstance(num_heads, int) or num_heads < 1:
        raise InputError(f"{_OP}: num_heads must be a positive int, got {num_heads!r}")
    channels = x.shape[2]
    if isinstance(channels, int) and channels % num_heads:
        raise InputError(f"{_OP}: channels {channels} are not divisible by num_heads {num_heads}")
    if not isinstance(scale, int | float):
        raise InputError(f"{_OP}: scale must be a float, got {type(scale).__name__}")


def add_bias_transpose_triton(
    x: Tensor, bias: Tensor, num_heads: int, scale: float, out: Tensor | None = None
) -> Tensor:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); non-contiguous inputs are copied
    contiguous first. Writes ``out`` (new if None, else contiguous [B * heads, L, C // heads], x's dtype)."""
    check_inputs(x, bias, num_heads, scale)
    batch, length, channels = x.shape
    shape = (batch * num_heads, length, channels // num_heads)
    out = x.new_empty(shape) if out is None else out
    _common.check_out(_OP, out, shape, x.dtype, x.device)
    if out.numel() == 0:
        return out
    grid, meta = add_bias_transpose_launch_config(batch, length, channels)
    with _common.launch_context(_OP, add_bias_transpose_kernel, x):
        add_bias_transpose_kernel[grid](
            x.contiguous(),
            bias.contiguous(),
            out,
            length,
            channels,
            channels // num_heads,
            float(scale),
            **meta,
        )
    return out


@torch.library.custom_op("anchordetr::add_bias_transpose", mutates_args=())
def add_bias_transpose(x: Tensor, bias: Tensor, num_heads: int, scale: float) -> Tensor:
    """((x + bias) * scale) split into heads: x [B, L, C], bias [C] -> [B * num_heads, L, C // num_heads].
    PyTorch reference off CUDA."""
    check_inputs(x, bias, num_heads, scale)
    return reference.add_bias_transpose(x, bias, num_heads, scale).contiguous()  # dense, like the fake


@add_bias_transpose.register_kernel("cuda")
def _(x: Tensor, bias: Tensor, num_heads: int, scale: float) -> Tensor:
    return add_bias_transpose_triton(x, bias, num_heads, scale)


@add_bias_transpose.register_fake
def _(x: Tensor, bias: Tensor, num_heads: int, scale: float) -> Tensor:
    check_inputs(x, bias, num_heads, scale)
    batch, length, channels = x.shape
    return x.new_empty((batch * num_heads, length, channels // num_heads))
