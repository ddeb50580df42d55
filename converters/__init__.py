"""Torch-TensorRT converters lowering the ``torch.ops.anchordetr`` ops to TensorRT plugins whose kernels
are this package's Triton kernels.

- ``specs``: one ``PluginSpec`` per op (kernel, launch contract, output shapes and dtypes), pure Python.
- ``aot``: the kernels compiled ahead of time to PTX in TensorRT's parameter order (Triton only).
- ``launch``: a plugin's kernel run on raw device pointers and a stream through Triton (the
  Python-runtime plugin). The tests launch the AOT kernels through the CUDA driver as TensorRT does
  (tests/cuda_driver.py).
- ``qdp``, ``dynamo``: the TensorRT plugins and the Torch-TensorRT converters; they import TensorRT
  and are loaded by ``register_converters`` only.
"""


def register_converters() -> str:
    """Register the plugins with TensorRT and the converters with Torch-TensorRT (once per process);
    returns the plugin route, "aot" (kernels embedded in the engine) or "jit" (launched from Python)."""
    from . import dynamo, qdp

    route = qdp.register_plugins()
    dynamo.register_converters(aot=route == "aot")
    return route
