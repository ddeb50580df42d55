"""The device rule shared by every entry point: the one asked for, else the GPU when there is one."""

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device; None means "cuda" where a GPU is visible, else "cpu"."""
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
