"""The device rule shared by every entry point: the one asked for, else the GPU when there is one."""

import torch
from torch import Tensor, nn

from .errors import BackendUnavailableError, InputError

_DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device; None means "cuda" where a GPU is visible, else "cpu"."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.strip().lower() if isinstance(device, str) else device)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device the model can run on; InputError or BackendUnavailableError (no
    GPU visible) otherwise."""
    shown = repr(str(device) if isinstance(device, torch.device) else device)  # as the caller wrote it
    try:
        parsed = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in _DEVICE_TYPES:
        raise InputError(f"device={shown} is not supported: choose one of 'cpu', 'cuda' or 'cuda:N'")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device={shown}: no CUDA GPU is visible: use device='cpu'")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InputError(
                f"device={shown} but only {count} CUDA GPU(s) are visible: use an index below {count}"
            )
    return parsed


def check_tensor_device(value: Tensor, name: str) -> Tensor:
    """``value`` if it is a dense tensor on a device the package runs on; InputError naming ``name``
    otherwise (a tensor on "meta" has a shape but no values; a sparse one has no strides)."""
    if value.device.type not in _DEVICE_TYPES:
        raise InputError(
            f"{name} is on the {value.device.type} device, which the package does not run on"
            f"{' (it holds no values)' if value.device.type == 'meta' else ''}: pass it on the CPU or a CUDA GPU"
        )
    if value.layout != torch.strided:
        raise InputError(f"{name} is a {value.layout} tensor: pass a dense one (e.g. .to_dense())")
    return value


def check_module_device(module: nn.Module, name: str = "model") -> nn.Module:
    """``module`` if its parameters and buffers are on devices the package runs on; InputError naming
    ``name`` otherwise (a module on "meta" was built without weights)."""
    for kind, tensors in (("parameters", module.parameters()), ("buffers", module.buffers())):
        device = next((t.device for t in tensors if t.device.type not in _DEVICE_TYPES), None)
        if device is not None:
            raise InputError(
                f"{name} has {kind} on the {device.type} device"
                f"{', which holds no weights' if device.type == 'meta' else ''}: load its weights first "
                "(anchordetr_trt.load_model, or module.to_empty(device='cpu') and load_state_dict)"
            )
    return module
