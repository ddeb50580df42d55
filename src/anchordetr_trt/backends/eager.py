"""The "eager" backend: the model itself at the requested precision. Runs anywhere; the reference."""

import torch
from torch import nn

from ..spec import CompileSpec
from .warm import warm_kernels

PADDED = False  # nothing is compiled: inputs run at their own size, exactly as load_model's model


def status(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA GPU is visible"
    return True, "plain PyTorch: runs anywhere (fp32 on the CPU)"


def build(model: nn.Module, spec: CompileSpec) -> nn.Module:
    """``model`` (an AnchorDETR) at ``spec``'s device and precision, the fused ops on CUDA."""
    model = model.to(spec.device).set_precision(spec.dtype).set_fused_ops(spec.device.type == "cuda")
    if spec.device.type == "cuda":
        # cuDNN, cuBLAS and the Triton kernels initialize at their first call: here, not in the user's.
        from ..export import example_inputs

        with torch.no_grad():
            model(*example_inputs(spec.min_shape, spec.device, spec.dtype))
        warm_kernels(model, spec)  # and every other kernel variant the range reaches
    return model
