"""The anchordetr plugins in TensorRT's Python plugin API (``tensorrt.plugin``, "quickly deployable
plugins"), ahead of time.

Each ``PluginSpec`` variant becomes the plugin ``anchordetr::<name>``: a description (output shapes
and dtypes as shape expressions of the inputs) and an ``aot_impl`` that compiles the op's Triton kernel
to PTX for the engine's largest shapes. TensorRT embeds the PTX in the engine and launches it itself:
the engine runs without Python and without these registrations. Every TensorRT that the accepted
Torch-TensorRT releases require (10.15 for 2.11 up to 11.1 for 2.14) has ``aot_impl``.

TensorRT validates the functions' signatures by parameter names and annotations (``_validate.py`` of
``tensorrt.plugin``): tensors are ``TensorDesc`` in both functions, attributes are ``str``. Each
function gets an explicit ``__signature__`` built from the spec (Torch-TensorRT's ``generate_plugin``
compiles generated source to the same end).

Why attributes are JSON strings: TensorRT's ``_TemplatePluginCreator.create_plugin`` turns a numeric
attribute back into a Python scalar with ``float(array)`` on a one-element 1-D array, a TypeError since
NumPy 2.4; NumPy-array annotations avoid that but trip TensorRT's unguarded ``issubclass`` on Python
3.13 and its origin check on NumPy 2.5's ``NDArray`` alias (Torch-TensorRT 2.14 patches TensorRT's
validator module for both). A ``str`` attribute goes through ``bytes.decode`` alone on every Python and
NumPy; ``encode_attrs`` and ``decode_attrs`` keep the exact value (``json`` round-trips floats) and
the spec's Python type.

Imported only when TensorRT is used.
"""

import functools
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import tensorrt as trt
import tensorrt.plugin as trtp
import torch

from .aot import compile_kernel, launch_geometry
from .specs import NAMESPACE, Attrs, PluginSpec, all_plugins, coerce_attr

logger = logging.getLogger(__name__)

_TRT_DTYPES = {
    torch.float16: trt.float16,
    torch.float32: trt.float32,
    torch.bool: trt.bool,
    torch.int32: trt.int32,
}
_TORCH_DTYPES = {trt_dtype: dtype for dtype, trt_dtype in _TRT_DTYPES.items()}
_P = inspect.Parameter.POSITIONAL_OR_KEYWORD


def register_plugins() -> None:
    """Register every anchordetr plugin with TensorRT. Idempotent, also after a failure halfway: a plugin
    already described keeps its description and gets its ``aot_impl`` (again)."""
    plugins = all_plugins()
    for spec in plugins:
        _register(spec)
    logger.info(
        "TensorRT %s: %d %s plugins registered (ahead of time)", trt.__version__, len(plugins), NAMESPACE
    )


def encode_attrs(spec: PluginSpec, attrs: Attrs) -> dict[str, str]:
    """The plugin attributes as TensorRT receives them: JSON strings, in the op's schema order."""
    return {
        name: json.dumps(coerce_attr(spec.op, name, kind, attrs[name])) for name, kind in spec.attrs().items()
    }


def decode_attrs(spec: PluginSpec, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes TensorRT hands back (JSON strings, maybe NUL-terminated) as the spec's Python types."""
    return {
        name: coerce_attr(spec.op, name, kind, json.loads(arguments[name].rstrip("\0")))
        for name, kind in spec.attrs().items()
    }


def _register(spec: PluginSpec) -> None:
    tensors = [inspect.Parameter(name, _P, annotation=trtp.TensorDesc) for name in spec.tensors]
    attrs = [inspect.Parameter(name, _P, annotation=str) for name in spec.attrs()]
    if not hasattr(getattr(trtp.op, NAMESPACE, None), spec.name):
        outputs = tuple[(trtp.TensorDesc,) * len(spec.outputs)]
        trtp.register(spec.plugin_id)(
            _with_signature(functools.partial(_describe, spec), tensors + attrs, outputs)
        )
    build = [inspect.Parameter("outputs", _P), inspect.Parameter("tactic", _P, annotation=int)]
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
    attrs = decode_attrs(spec, arguments)
    return tuple(
        trtp.from_shape_expr(tuple(shape), dtype=_TRT_DTYPES[dtype])
        for shape, dtype in zip(spec.output_shapes(shapes, attrs), spec.output_dtypes(dtypes), strict=True)
    )


def _compile(spec: PluginSpec, *, outputs: Any, tactic: int, **arguments: Any) -> tuple:
    descs = {name: arguments[name] for name in spec.tensors}
    attrs = decode_attrs(spec, arguments)
    dtypes = {name: _TORCH_DTYPES[desc.dtype] for name, desc in descs.items()}
    # Block sizes come from the largest shapes of the engine's profile; the kernel serves all smaller
    # ones, and one built for less refuses wider inputs (NaN outputs) rather than skipping columns.
    max_shapes = {name: upper_bounds(desc.shape) for name, desc in descs.items()}
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


def upper_bounds(shape: Any) -> tuple[int, ...]:
    """The largest dims a ``tensorrt.plugin.Shape`` takes in the engine's profile: the ``max`` of the
    ``DynamicPluginTensorDesc`` that TensorRT describes the tensor with, whether or not it marks the
    runtime dims as -1. ``Shape.max`` answers only where it does, so the descriptor is read directly
    (``Shape._desc`` in tensorrt/plugin/_tensor.py, 10.15 to 11.1: the contract tests run that code); a
    shape built without one (fixed dims) is its own bound."""
    desc = getattr(shape, "_desc", None)
    return tuple(int(d) for d in (desc.max if desc is not None else shape))
