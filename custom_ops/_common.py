"""Input checks and launch helpers shared by the fused ops.

The checks run in three places: the Triton launchers, the ops' eager implementations and their fake
implementations (so that ``torch.export`` and ``torch.compile`` reject bad inputs while tracing).
They look at static properties only (rank, dtype, device, concrete sizes); a size that is symbolic
while tracing is not compared, so checking never adds a shape guard.
"""

import contextlib
import functools
from collections.abc import Sequence

import torch
import triton
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from anchordetr_trt.errors import InputError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Launch heuristic shared by the row-wise kernels: a warp holds ELEMENTS_PER_WARP elements (32 per
# thread, in registers).
ELEMENTS_PER_WARP = 1024
MAX_ROW_BLOCK = 16384  # longest row a row-wise kernel holds in registers (BLOCK of the last dim)


def check_tensor(
    op: str, name: str, value: object, ndim: int | None, dtypes: Sequence[torch.dtype], layout: str
) -> Tensor:
    """Raise InputError unless ``value`` is a tensor of rank ``ndim`` (None: any rank but 0) with a
    dtype in ``dtypes``; ``layout`` names the dims in messages, e.g. "[B, heads, Lq, Lk]"."""
    if not isinstance(value, Tensor):
        raise InputError(f"{op}: {name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.dim() == 0 if ndim is None else value.dim() != ndim:
        rank = "at least 1-d" if ndim is None else f"{ndim}-d"
        raise InputError(
            f"{op}: {name} must be {rank} {layout}, got shape {list(value.shape)}: reshape it to {layout}"
        )
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise InputError(
            f"{op}: {name} has dtype {value.dtype}, expected one of {allowed}: convert it with .to()"
        )
    return value


def check_same_device(op: str, **tensors: Tensor) -> None:
    """Raise InputError unless every tensor is on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise InputError(f"{op}: inputs are on different devices ({listed}): move them to one device")


def check_same_dtype(op: str, **tensors: Tensor) -> None:
    """Raise InputError unless every tensor has one dtype."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {str(dtype).removeprefix('torch.')}" for name, dtype in dtypes.items())
        raise InputError(f"{op}: inputs must share one dtype, got {listed}: convert them with .to()")


def check_size(op: str, what: str, actual: object, expected: object) -> None:
    """Raise InputError if two concrete sizes differ; symbolic sizes (while tracing) are not compared."""
    if isinstance(actual, int) and isinstance(expected, int) and actual != expected:
        raise InputError(f"{op}: {what} is {actual} but must be {expected}")


def check_shape(op: str, name: str, actual: Sequence, expected: Sequence, layout: str) -> None:
    """Raise InputError unless two shapes have one rank and equal concrete sizes."""
    mismatch = len(actual) != len(expected) or any(
        isinstance(a, int) and isinstance(e, int) and a != e for a, e in zip(actual, expected, strict=False)
    )
    if mismatch:
        raise InputError(f"{op}: {name} must have shape {list(expected)} {layout}, got {list(actual)}")


def check_out(op: str, out: Tensor, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Raise InputError unless ``out`` is a contiguous tensor of the given shape, dtype and device."""
    if (
        not isinstance(out, Tensor)
        or list(out.shape) != list(shape)
        or out.dtype != dtype
        or out.device != device
    ):
        got = (
            f"{list(out.shape)} {out.dtype} on {out.device}"
            if isinstance(out, Tensor)
            else type(out).__name__
        )
        raise InputError(
            f"{op}: out must be a tensor {list(shape)} {dtype} on {device}, got {got}: pass out=None to allocate it"
        )
    if not out.is_contiguous():
        raise InputError(
            f"{op}: out must be contiguous (kernels write it densely): pass out.contiguous() or None"
        )
    return out


def check_out_pair(
    op: str,
    out: object,
    names: str,
    shapes: Sequence[Sequence[int]],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """The two outputs of ``shapes`` (named ``names``, e.g. "y, x"): new if ``out`` is None, else
    ``out`` if it is a pair of tensors that ``check_out`` accepts."""
    if out is None:
        return tuple(torch.empty(shape, dtype=dtype, device=device) for shape in shapes)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise InputError(f"{op}: out must be a pair of tensors ({names}) or None, got {type(out).__name__}")
    return tuple(check_out(op, o, shape, dtype, device) for o, shape in zip(out, shapes, strict=True))


def launch_context(op: str, kernel: object, tensor: Tensor) -> contextlib.AbstractContextManager:
    """The device context for launching ``kernel`` on ``tensor``'s device; raises InputError where
    Triton cannot run it (CPU tensors need the interpreter: TRITON_INTERPRET=1 before import)."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    if tensor.device.type == "cpu" and isinstance(kernel, InterpretedFunction):
        return contextlib.nullcontext()
    raise InputError(
        f"{op}: the Triton kernel cannot run on {tensor.device}: use CUDA tensors, the op "
        "torch.ops.anchordetr.* (PyTorch reference off CUDA), or set TRITON_INTERPRET=1 before importing"
    )


# A grid with fewer programs than this per SM leaves SMs idle, or a single program on an SM with none
# to hide its latencies behind: the ops whose block sizes depend on the grid (rcda_aggregate's
# queries per program, self_attention's) take their smaller block there (``few_programs``).
PROGRAMS_PER_SM = 2


@functools.cache
def sm_count(device_index: int) -> int:
    """The number of SMs of CUDA device ``device_index``."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def few_programs(programs: int, sms: int | None) -> bool:
    """Whether a grid of ``programs`` gives ``sms`` SMs fewer than PROGRAMS_PER_SM programs each. False
    where the SM count is unknown (a TensorRT engine's kernel, compiled before any GPU is seen): each
    op's launch config says which block it takes then."""
    return sms is not None and programs < PROGRAMS_PER_SM * sms


def row_tile(row_block: int) -> tuple[int, int]:
    """(rows per program, num_warps) for rows of ``row_block`` elements held in registers.

    A warp per ELEMENTS_PER_WARP elements of a row: a short row lies within one warp, whose max and
    sum then need no shared memory or barrier. Rows per program fill the warps. Both depend on the row
    length alone, never on the number of rows: each distinct tile is a Triton compile (about a second),
    and the row lengths a compiled model meets are few and known in advance (``warm_kernels``), its
    row counts are not.
    """
    warps = max(1, min(8, row_block // ELEMENTS_PER_WARP))
    return max(1, ELEMENTS_PER_WARP * warps // row_block), warps


def num_warps(tile: int) -> int:
    """Warps for a tile of ``tile`` elements: ELEMENTS_PER_WARP each, 1 to 8."""
    return max(1, min(8, tile // ELEMENTS_PER_WARP))


def row_block(length: int) -> int:
    """The constexpr block of a row of ``length`` elements (a power of two, at least 16)."""
    return max(16, triton.next_power_of_2(length))


def dot_precision(dtype: torch.dtype) -> str:
    """A kernel's tl.dot precision for ``dtype`` inputs: float32 stays float32 ("ieee", on the CUDA
    cores: exact but slow); 16-bit inputs multiply natively with float32 accumulation."""
    return "ieee" if dtype == torch.float32 else "tf32"


def broadcast_strides(sizes: Sequence, strides: Sequence) -> list:
    """Element strides of every dim but the last of a tensor of ``sizes`` laid out at ``strides``, 0
    along dims of size 1 (broadcast there). Ints, or TensorRT shape expressions (which have ``<`` and
    no truth value), alike."""
    return [stride - stride * (size < 2) for size, stride in zip(sizes[:-1], strides[:-1], strict=True)]
