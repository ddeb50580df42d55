"""``anchordetr::layer_norm``: LayerNorm of ``x`` or of ``x + residual`` over the last dim, in one pass.

Replaces the residual add and the norm (with the float32 casts of the reference, five kernels). A
program normalizes a [BLOCK_R, BLOCK_C] tile of rows (C = 256 in AnchorDETR): the rows stay in
registers, so the statistics are exact two-pass ones (mean, then mean of squared deviations) at the
cost of one read.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from anchordetr_trt.errors import InputError

from . import _common, reference

_OP = "layer_norm"


@triton.jit(do_not_specialize=["num_rows"])  # sizes vary per image: one build serves all
def layer_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    bias_ptr,
    out_ptr,
    num_rows,
    row_length,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Rows of ``row_length`` <= BLOCK_C channels; ``residual_ptr`` is read only if HAS_RESIDUAL
    (pass x_ptr otherwise). Contiguous inputs and output; weight and bias [row_length]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < row_length
    in_bounds = (rows < num_rows)[:, None] & col_ok[None, :]
    offsets = rows[:, None] * row_length + cols[None, :]
    h = tl.load(x_ptr + offsets, mask=in_bounds, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(residual_ptr + offsets, mask=in_bounds, other=0.0).to(tl.float32)
    mean = tl.sum(h, axis=1) / row_length
    centered = tl.where(in_bounds, h - mean[:, None], 0.0)
    variance = tl.sum(centered * centered, axis=1) / row_length
    inv_std = 1.0 / tl.sqrt(variance + eps)
    weight = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = centered * inv_std[:, None] * weight[None, :] + bias[None, :]
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=in_bounds)


def layer_norm_launch_config(num_rows: int, row_length: int) -> tuple[tuple[int], dict]:
    """(grid, meta) for ``num_rows`` rows of ``row_length`` channels: meta holds BLOCK_R, BLOCK_C and
    num_warps. A kernel built with BLOCK_C serves every row_length <= BLOCK_C, any num_rows."""
    block_c = _common.row_block(row_length)
    block_r, warps = _common.row_tile(block_c)
    return (triton.cdiv(num_rows, block_r),), {"BLOCK_R": block_r, "BLOCK_C": block_c, "num_warps": warps}


def check_inputs(x: Tensor, weight: Tensor, bias: Tensor, eps: float, residual: Tensor | None) -> None:
    """Raise InputError unless x [..., C] float, weight and bias [C], residual None or like x."""
    _common.check_tensor(_OP, "x", x, None, _common.FLOAT_DTYPES, "[..., C]")
    _common.check_tensor(_OP, "weight", weight, 1, _common.FLOAT_DTYPES, "[C]")
    _common.check_tensor(_OP, "bias", bias, 1, _common.FLOAT_DTYPES, "[C]")
    _common.check_same_dtype(_OP, weight=weight, bias=bias)
    tensors = {"x": x, "weight": weight, "bias": bias}
    if residual is not None:
        _common.check_tensor(_OP, "residual", residual, x.dim(), (x.dtype,), "(like x)")
        _common.check_shape(_OP, "residual", residual.shape, x.shape, "(like x)")
        tensors["residual"] = residual
    _common.check_same_device(_OP, **tensors)
    _common.check_size(_OP, "weight.shape[0] (channels)", weight.shape[0], x.shape[-1])
    _common.check_size(_OP, "bias.shape[0] (channels)", bias.shape[0], x.shape[-1])
    if not eps >= 0:
        raise InputError(f"{_OP}: eps must be a float >= 0, got {eps!r}")


def layer_norm_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    residual: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Launch the kernel on CUDA (or CPU under TRITON_INTERPRET=1); non-contiguous inputs are copied
    contiguous first. Writes ``out`` (new if None, else contiguous, x's shape and dtype)."""
    check_inputs(x, weight, bias, eps, residual)
    channels = x.shape[-1]
    if channels > _common.MAX_ROW_BLOCK:
        raise InputError(
            f"{_OP}: rows of {channels} channels exceed {_common.MAX_ROW_BLOCK}: use the reference"
        )
    out = x.new_empty(x.shape) if out is None else out
    _common.check_out(_OP, out, x.shape, x.dtype, x.device)
    if out.numel() == 0:
        return out
    num_rows = x.numel() // channels
    grid, meta = layer_norm_launch_config(num_rows, channels)
    x = x.contiguous()
    with _common.launch_context(_OP, layer_norm_kernel, x):
        layer_norm_kernel[grid](
            x,
            x if residual is None else residual.contiguous(),
            weight.contiguous(),
            bias.contiguous(),
            out,
            num_rows,
            channels,
            eps,
            HAS_RESIDUAL=residual is not None,
            **meta,
        )
    return out


@torch.library.custom_op("anchordetr::layer_norm", mutates_args=())
def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    """LayerNorm(x) or LayerNorm(x + residual) over the last dim: x [..., C], weight and bias [C];
    float32 statistics, x's dtype out. PyTorch reference off CUDA."""
    check_inputs(x, weight, bias, eps, residual)
    return reference.layer_norm(x, weight, bias, eps, residual).contiguous()  # dense, like the fake


@layer_norm.register_kernel("cuda")
def _(x: Tensor, weight: Tensor, bias: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    if x.shape[-1] > _common.MAX_ROW_BLOCK:
        return reference.layer_norm(
            x, weight, bias, eps, residual
        ).contiguous()  # rows too long for registers
    return layer_norm_triton(x, weight, bias, eps, residual)


@layer_norm.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    check_inputs(x, weight, bias, eps, residual)
    return x.new_empty(x.shape)
