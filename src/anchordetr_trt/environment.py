"""What this machine has (versions, GPU) and which backends of ``compile`` can run on it, and why not."""

import importlib.metadata
import importlib.util
import os
import platform

import torch

from . import __version__
from .devices import resolve_device

# Tried in this order by compile(backend="auto").
BACKEND_ORDER = ("tensorrt", "inductor", "eager")


def environment() -> dict:
    """Versions of the stack and the GPU (None where absent), for reports and ``anchordetr-trt info``."""
    env = {
        "anchordetr_trt": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **{name: _installed_version(name) for name in ("triton", "torch_tensorrt", "tensorrt")},
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env |= {
            "gpu": props.name,
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_count": torch.cuda.device_count(),
        }
    return env


def backend_status(device: str | torch.device | None = None) -> dict[str, tuple[bool, str]]:
    """For each backend of ``compile``: (can it run on ``device``, why or why not). ``device`` defaults
    to the GPU when there is one."""
    from .backends.tensorrt import tensorrt_status

    device = resolve_device(device)
    on_gpu = device.type == "cuda" and torch.cuda.is_available()
    no_gpu = "needs a CUDA GPU" + ("" if device.type == "cuda" else f" (device is {device})")
    trt_ok, trt_reason = tensorrt_status()
    status = {
        "eager": (True, "plain PyTorch: runs anywhere (fp32 on the CPU)"),
        "inductor": (on_gpu, "torch.compile with Triton kernels and CUDA graphs" if on_gpu else no_gpu),
        "tensorrt": (on_gpu and trt_ok, trt_reason if not trt_ok else (trt_reason if on_gpu else no_gpu)),
    }
    if on_gpu and importlib.util.find_spec("triton") is None:
        status["inductor"] = (False, "triton is not installed: pip install triton")
    return status


def auto_backend(status: dict[str, tuple[bool, str]]) -> str:
    """The backend ``compile(backend="auto")`` picks given ``backend_status()``: the first that runs."""
    return next(name for name in BACKEND_ORDER if status[name][0])


def _installed_version(distribution: str) -> str | None:
    # Package metadata only: importing torch_tensorrt without a CUDA driver can fail or take seconds.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
