"""The "engine" runner behind ``load_engine``: a serialized TensorRT (or TensorRT-RTX) engine run
with the TensorRT Python runtime on torch tensors, on the current CUDA stream.

Not one of ``compile``'s backends (it builds nothing: ``trt_engine.build_engine`` and trtexec do);
``CompiledAnchorDETR`` wraps it like them, so its inputs arrive checked, cast and padded to
multiples of 32. Runs only where the engine can execute: a CUDA GPU of the compute capabilities it
was built for, with the runtime of the library that built it.
"""

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import BackendUnavailableError, InputError, listed
from ..model import INPUTS, OUTPUTS

PADDED = True  # the ONNX, and so the engine, takes heights and widths that are multiples of 32
_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "BOOL": torch.bool}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a TensorRT DataType (float32, float16, bfloat16, bool)."""
    try:
        return _TORCH_DTYPES[trt_dtype.name]
    except KeyError:
        raise InputError(
            f"the engine has a tensor of {trt_dtype}, which this package does not feed"
        ) from None


class EngineRunner(nn.Module):
    """``forward(images [B, 3, H, W], mask [B, H, W] bool)`` -> {pred_logits, pred_boxes} from the
    engine ``data`` (serialized bytes), deserialized with the runtime of ``trt`` (tensorrt or
    tensorrt_rtx) on ``device``."""

    def __init__(self, trt: Any, data: bytes, log: Any, *, device: torch.device):
        super().__init__()
        self.device = device
        log.errors.clear()
        with torch.cuda.device(device):
            self.runtime = trt.Runtime(log)
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise BackendUnavailableError(
                    f"{trt.__name__} {trt.__version__} cannot load this engine ({listed(log.errors, 2) or 'no error logged'}): "
                    "it was built by another version or for another GPU; build it again on this machine"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(names) != sorted((*INPUTS, *OUTPUTS)):
            raise InputError(
                f"the engine's tensors are {names}, not {[*INPUTS, *OUTPUTS]}: build it from export_onnx's ONNX"
            )

    def dtype(self, name: str) -> torch.dtype:
        return torch_dtype(self.engine.get_tensor_dtype(name))

    def input_profile(self, name: str) -> list[tuple[int, ...]]:
        """(min, opt, max) shapes of input ``name`` in the engine's first optimization profile."""
        return [tuple(shape) for shape in self.engine.get_tensor_profile_shape(name, 0)]

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        context = self.context
        inputs = {"images": images.contiguous(), "mask": mask.contiguous()}
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {
            name: torch.empty(
                tuple(context.get_tensor_shape(name)), dtype=self.dtype(name), device=images.device
            )
            for name in OUTPUTS
        }
        for name, tensor in outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(images.device).cuda_stream):
            raise RuntimeError(f"the TensorRT engine failed at images {list(images.shape)}")
        return outputs
