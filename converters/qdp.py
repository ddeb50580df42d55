"""The anchordetr plugins in TensorRT's Python plugin API (``tensorrt.plugin``, "quickly deployable plugins").

Each ``PluginSpec`` variant becomes the plugin ``anchordetr::<name>``: a description (output shapes
and dtypes as shape expressions of the inputs) and two implementations. ``aot_impl`` compiles the
op's Triton kernel to PTX for the engine's largest shapes; TensorRT embeds it in the engine and
launches it itself, so the engine runs without Python. ``impl`` launches the kernel through Triton
from Python (``launch.run_plugin``); it is used only where TensorRT has no AOT plugins, and then the
engine needs these registrations (this module imported) wherever it is deserialized.

TensorRT validates the implementations' signatures by parameter names and annotations, so each
function gets an explicit ``__signature__`` built from the spec (Torch-TensorRT's ``generate_plugin``
and ``torch_tensorrt.kernels`` do the same by compiling generated source). Imported only when
TensorRT is used.
"""

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import tensorrt as trt
import tensorrt.plugin as trtp
import torch

from .aot import compile_kernel, launch_geometry
from .launch import DeviceBuffer, run_plugin
from .specs import NAMESPACE, PluginSpec, all_plugins

logger = logging.getLogger(__name__)

_TRT_DTYPES = {
    torch.float16: trt.float16,
    torch.float32: trt.float32,
    torch.bool: trt.bool,
    torch.int32: trt.int32,
}
_TORCH_DTYPES = {trt_dtype: dtype for dtype, trt_dtype in _TRT_DTYPES.items()}
_P = inspect.Parameter.POSITIONAL_OR_KEYWORD


def plugin_route() -> tuple[str, str]:
    """("aot" or "jit", why): the ahead-of-time route wherever this TensorRT has it."""
    if hasattr(trtp, "aot_impl") and hasattr(trt, "QuickPluginCreationRequest"):
        return "aot", f"TensorRT {trt.__version__} embeds the plugins' compiled Triton kernels in the engine"
    return "jit", (
        f"TensorRT {trt.__version__} has no ahead-of-time Python plugins (tensorrt.plugin.aot_impl): the "
        "engine calls back into Python to launch the Triton kernels"
    )


@functools.cache
def register_plugins() -> str:
    """Register every anchordetr plugin with TensorRT (once per process); returns the plugin route."""
    route, reason = plugin_route()
    for spec in all_plugins():
        _register(spec, aot=route == "aot")
    log = logger.info if route == "aot" else logger.warning
    log("TensorRT plugins for %s use the %s route: %s", NAMESPACE, route.upper(), reason)
    return route


def _register(spec: PluginSpec, aot: bool) -> None:
    tensors = [inspect.Parameter(name, _P, annotation=trtp.TensorDesc) for name in spec.tensors]
    attrs = [inspect.Parameter(name, _P, annotation=kind) for name, kind in spec.attrs().items()]
    outputs = tuple[(trtp.TensorDesc,) * len(spec.outputs)]
    trtp.register(spec.plugin_id)(
        _with_signature(functools.partial(_describe, spec), tensors + attrs, outputs)
    )
    # The JIT implementation is always registered: it is the fallback that add_plugin(aot=False) takes.
    runtime = [inspect.Parameter("outputs", _P), inspect.Parameter("stream", _P)]
    trtp.impl(spec.plugin_id)(_with_signature(functools.partial(_run, spec), tensors + attrs + runtime, None))
    if aot:
        build = [inspect.Parameter("outputs", _P), inspect.Parameter("tactic", _P)]
        returns = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]
        trtp.aot_impl(spec.plugin_id)(
            _with_signature(functools.partial(_compile, spec), tensors + attrs + build, returns)
        )


def _with_signature(function: Callable, parameters: list[inspect.Parameter], returns: Any) -> Callable:
    def bound(*args: Any, **kwargs: Any) -> Any:
        return function(**signature.bind(*args, **kwargs).arguments)

    signature = inspect.Signature(parameters, return_annotation=returns)
    bound.__signature__ = signature
    return bound


def _describe(spec: PluginSpec, **arguments: Any) -> tuple:
    shapes = {name: tuple(arguments[name].shape_expr) for name in spec.tensors}
    dtypes = {name: _TORCH_DTYPES[arguments[name].dtype] for name in spec.tensors}
    attrs = {name: arguments[name] for name in spec.attrs()}
    return tuple(
        trtp.from_shape_expr(tuple(shape), dtype=_TRT_DTYPES[dtype])
        for shape, dtype in zip(spec.output_shapes(shapes, attrs), spec.output_dtypes(dtypes), strict=True)
    )


def _compile(spec: PluginSpec, *, outputs: Any, tactic: int, **arguments: Any) -> tuple:
    descs = {name: arguments[name] for name in spec.tensors}
    attrs = {name: arguments[name] for name in spec.attrs()}
    dtypes = {name: _TORCH_DTYPES[desc.dtype] for name, desc in descs.items()}
    # Block sizes come from the largest shapes of the engine's range; the kernel serves all smaller ones.
    max_shapes = {name: _upper_bounds(desc.shape) for name, desc in descs.items()}
    kernel = compile_kernel(spec, dtypes, attrs, max_shapes)
    grid, scalars = launch_geometry(spec, kernel, {n: tuple(d.shape_expr) for n, d in descs.items()}, attrs)
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = grid
    params.block_x = kernel.num_warps * 32
    params.shared_mem = kernel.shared
    logger.debug(
        "%s: AOT kernel %s for max shapes %s, %s", spec.plugin_id, kernel.name, max_shapes, kernel.constexprs
    )
    return kernel.name, kernel.ptx, params, trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in scalars])


def _run(spec: PluginSpec, *, outputs: Any, stream: int, **arguments: Any) -> None:
    run_plugin(
        spec,
        [_buffer(arguments[name]) for name in spec.tensors],
        [_buffer(tensor) for tensor in outputs],
        {name: arguments[name] for name in spec.attrs()},
        stream,
    )


def _buffer(tensor: Any) -> DeviceBuffer:
    return DeviceBuffer(tensor.data_ptr, tuple(tensor.shape), _TORCH_DTYPES[tensor.dtype])


def _upper_bounds(shape: Any) -> tuple[int, ...]:
    return tuple(shape.max) if shape.is_dynamic else tuple(shape)
