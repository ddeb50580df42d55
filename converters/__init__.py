"""Torch-TensorRT converters lowering the ``torch.ops.anchordetr`` ops to TensorRT plugins whose kernels
are this package's Triton kernels, compiled ahead of time into the engine.

- ``specs``: one ``PluginSpec`` per op (kernel, launch contract, output shapes and dtypes), pure Python.
- ``aot``: the kernels compiled ahead of time to PTX in TensorRT's parameter order (Triton only).
- ``qdp``, ``dynamo``: the TensorRT plugins and the Torch-TensorRT converters; they import TensorRT
  and are loaded by ``register_converters`` only.
"""


def register_converters() -> None:
    """Register the plugins with TensorRT and the converters with Torch-TensorRT (idempotent)."""
    from . import dynamo, qdp

    qdp.register_plugins()
    dynamo.register_converters()
