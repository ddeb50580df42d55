"""What this machine has: versions of the stack and the GPU (which backends run: ``backends.backend_status``)."""

import importlib.metadata
import os
import platform

import torch

from . import __version__


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
        **{name: installed_version(name) for name in ("triton", "torch_tensorrt", "tensorrt")},
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


def installed_version(distribution: str) -> str | None:
    """``distribution``'s installed version, None if it is not installed. Package metadata only:
    importing torch_tensorrt without a CUDA driver can fail or take seconds."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
