"""Launching a plugin's kernel through Triton with the plugin's contract (the spec's constexprs, scalars
and grid): the entry of the Python-runtime plugin, which TensorRT calls with raw device pointers and a
CUDA stream, and the same launch on tensors (CPU tensors under TRITON_INTERPRET=1).

Why not upstream's JIT impl: the one ``generate_plugin`` registers (``_generic_plugin_impl`` in
pytorch/TensorRT py/torch_tensorrt/dynamo/conversion/plugins/_generate_plugin.py, 2.11 to main)
calls the PyTorch op on TensorRT's stream and copies each result into TensorRT's output buffer: one
allocation and copy per output, block sizes chosen for the current shapes, not the engine's.
``run_plugin`` launches the kernel with the AOT route's contract straight into TensorRT's buffers,
so both routes compute the same, and the CPU tests check that contract under the interpreter.
``tensorrt.plugin.Tensor`` has a ``__cuda_array_interface__`` too; ``DeviceBuffer`` is the same view
built from a raw pointer, so ``run_plugin`` runs in tests without TensorRT.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .specs import Attrs, PluginSpec, Shapes

_TYPESTR = {
    torch.float16: "<f2",
    torch.float32: "<f4",
    torch.bool: "|b1",
    torch.uint8: "|u1",
    torch.int32: "<i4",
    torch.int64: "<i8",
}


@dataclass(frozen=True)
class DeviceBuffer:
    """A contiguous tensor as TensorRT hands it to a plugin: device address, shape and dtype."""

    ptr: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": _TYPESTR[self.dtype], "data": (self.ptr, False), "version": 3}

    def as_tensor(self) -> Tensor:
        """A tensor viewing the buffer (no copy)."""
        return torch.as_tensor(self, device="cuda")


def run_plugin(
    spec: PluginSpec,
    inputs: Sequence[DeviceBuffer],
    outputs: Sequence[DeviceBuffer],
    attrs: Attrs,
    stream: int,
) -> None:
    """Compute the plugin on ``stream``: the runtime entry of the Python (JIT) plugin."""
    if not (len(inputs) == len(spec.tensors) and len(outputs) == len(spec.outputs)):
        raise ValueError(f"{spec.name}: expects {len(spec.tensors)} inputs and {len(spec.outputs)} outputs")
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        launch(
            spec,
            {name: buffer.as_tensor() for name, buffer in zip(spec.tensors, inputs, strict=True)},
            {name: buffer.as_tensor() for name, buffer in zip(spec.outputs, outputs, strict=True)},
            attrs,
        )


def launch(
    spec: PluginSpec,
    inputs: Mapping[str, Tensor],
    outputs: Mapping[str, Tensor],
    attrs: Attrs,
    max_shapes: Shapes | None = None,
) -> None:
    """Launch the plugin's kernel on contiguous tensors with block sizes chosen for ``max_shapes``
    (default: these inputs), as the TensorRT engine does for every input up to its largest."""
    tensors = {**inputs, **outputs}
    if not all(t.is_contiguous() for t in tensors.values()):
        raise ValueError(f"{spec.name}: plugin buffers are dense; got a non-contiguous tensor")
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    dtypes = {name: t.dtype for name, t in inputs.items()}
    spec.check_dtypes(dtypes)
    constexprs, options = spec.launch_meta(max_shapes or shapes, dtypes, attrs)
    pointers = {
        param: tensors[name].view(spec.pointer_dtypes.get(name, tensors[name].dtype))
        for param, name in spec.pointers.items()
        if name not in spec.absent
    }
    grid = spec.grid(shapes, attrs, constexprs)
    spec.kernel_fn()[grid](**pointers, **spec.scalars(shapes, attrs), **constexprs, **options)
