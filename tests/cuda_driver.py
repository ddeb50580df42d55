"""Launching an ahead-of-time plugin kernel the way TensorRT does, through the CUDA driver.

TensorRT loads an AOT plugin's PTX with the driver (which compiles it for the GPU) and launches it
with input pointers, int32 scalars and output pointers, ``num_warps * 32`` threads a block and the
kernel's shared memory, on the engine's stream. ``launch_aot`` does the same on raw device pointers,
which checks an engine's kernels, their parameter order and launch geometry, without TensorRT.
A test helper: the package launches AOT kernels only through TensorRT.
"""

import ctypes
import functools
from collections.abc import Sequence

import torch

from anchordetr_trt.converters.aot import AotKernel, launch_geometry
from anchordetr_trt.converters.specs import Attrs, PluginSpec, Shapes

_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CUfunction_attribute
_DEFAULT_SHARED_LIMIT = 48 * 1024  # more needs the attribute above


def launch_aot(
    spec: PluginSpec,
    kernel: AotKernel,
    inputs: Sequence[int],
    outputs: Sequence[int],
    shapes: Shapes,
    attrs: Attrs,
    stream: int,
) -> None:
    """Launch ``kernel`` on device pointers ``inputs`` and ``outputs`` (the plugin's tensors in order)
    holding inputs of ``shapes``, on the CUDA stream handle ``stream``."""
    grid, scalars = launch_geometry(spec, kernel, shapes, attrs)
    values = [*inputs, *scalars, *outputs]
    if len(values) != len(kernel.params):
        raise ValueError(f"{spec.name}: {len(values)} launch arguments for parameters {kernel.params}")
    args = [
        ctypes.c_int32(v) if name in kernel.scalars else ctypes.c_uint64(v)
        for name, v in zip(kernel.params, values, strict=True)
    ]
    pointers = (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))
    driver = _driver()
    _check(
        driver,
        driver.cuLaunchKernel(
            _function(kernel.name, kernel.ptx, kernel.shared),
            *(ctypes.c_uint(int(g)) for g in grid),
            ctypes.c_uint(kernel.num_warps * 32),
            ctypes.c_uint(1),
            ctypes.c_uint(1),
            ctypes.c_uint(kernel.shared),
            ctypes.c_void_p(stream),
            pointers,
            None,
        ),
    )


@functools.cache
def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _check(driver: ctypes.CDLL, result: int) -> None:
    if result != 0:
        message = ctypes.c_char_p()
        driver.cuGetErrorString(result, ctypes.byref(message))
        raise RuntimeError(f"CUDA driver error {result}: {(message.value or b'?').decode()}")


@functools.cache
def _function(name: str, ptx: str, shared: int) -> ctypes.c_void_p:
    # The module is loaded into the current context, PyTorch's primary context of the current device.
    torch.cuda.init()
    torch.cuda.synchronize()  # makes PyTorch's context current on this thread
    driver = _driver()
    module, function = ctypes.c_void_p(), ctypes.c_void_p()
    _check(driver, driver.cuModuleLoadData(ctypes.byref(module), ptx.encode() + b"\0"))
    _check(driver, driver.cuModuleGetFunction(ctypes.byref(function), module, name.encode()))
    if shared > _DEFAULT_SHARED_LIMIT:
        _check(
            driver, driver.cuFuncSetAttribute(function, _MAX_DYNAMIC_SHARED_SIZE_BYTES, ctypes.c_int(shared))
        )
    return function
