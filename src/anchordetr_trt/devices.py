"""The device rule shared by every entry point: the one asked for, else the GPU when there is one."""

import torch

from .errors import BackendUnavailableError, InputError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device; None means "cuda" where a GPU is visible, else "cpu".

    InputError for anything but a CPU or CUDA device, BackendUnavailableError for a GPU that is not
    there: both say what to pass instead.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device={device!r} is not a device: use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device={device!r} is not supported: use 'cpu' or 'cuda' (or 'cuda:N')")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BackendUnavailableError(
                f"device={str(device)!r} was asked for but no CUDA GPU is visible: use device='cpu'"
            )
        if resolved.index is not None and resolved.index >= count:
            raise InputError(
                f"device={str(device)!r}: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}"
            )
    return resolved
