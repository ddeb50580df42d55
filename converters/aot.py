"""Ahead-of-time compilation of a plugin's Triton kernel to the PTX that TensorRT embeds in the engine.

TensorRT launches an AOT plugin's kernel with the input pointers first, then the int32 "extra"
arguments, then the output pointers. Triton orders a kernel's parameters as the kernel declares them
(constexprs removed) and appends hidden scratch-buffer pointers (Triton >= 3.3). ``compile_kernel``
rewrites the PTX entry's parameter list into TensorRT's order and drops the hidden parameters, after
checking that the kernel never reads them; kernels that need scratch memory, thread-block clusters
or cooperative launches are refused, since TensorRT launches none of those.

What TensorRT expects (``tensorrt.plugin.aot_impl`` in python/packaging/bindings_wheel/tensorrt/plugin
of NVIDIA/TensorRT, 10.9 to 11.0): the function returns (kernel name, PTX, ``KernelLaunchParams``,
``SymIntExprs``); the extra arguments sit between the input and output pointers and must all be
``SymInt32`` (``_TemplateAOTPlugin.get_launch_params`` refuses others); one PTX is kept per
(I/O dtypes, formats, tactic); plugin attributes are not serialized into the engine. So float
attributes (eps, scale, log2 temperature) are constexprs compiled into the PTX (int attributes can be
int32 scalars: rcda_aggregate's value_channel is), and block sizes come from the profile's largest
shapes, since one kernel serves the whole range.

Upstream has no Triton AOT compiler that fits: Torch-TensorRT's examples/dynamo/aot_plugin.py
(2.11 to main) compiles by hand inside ``aot_impl`` a kernel declared (inputs, scalars, outputs);
``torch_tensorrt.kernels.ptx_op`` (2.13, experimental) takes one PTX fixed at registration and goes
through ``generate_plugin`` (see ``specs``), whereas these PTX depend on dtypes, largest shapes and
attributes known only when the engine is built; ``triton_op`` (pytorch/TensorRT#4435, branch
triton_kernel_op, not merged) also compiles once at registration and strips Triton's trailing
scratch parameters from the PTX entry itself (``_strip_trailing_scratch_params``).

Declaring the kernels' parameters in TensorRT's order would not remove the rewrite, only shrink it:
the permutation would go, the dropping of Triton's hidden scratch pointers (which TensorRT never
passes) would stay. Today the kernels declare (inputs, outputs, scalars), layer_norm's residual
second, and their PyTorch launchers pass that order; reordering six kernels and launchers to save
the permutation is a change only the GPU tests can check.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.compiler import ASTSource
from triton.runtime.interpreter import InterpretedFunction

from .specs import Attrs, Dtypes, PluginSpec, Shapes

_TRITON_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.uint8: "u8",
    torch.int32: "i32",
    torch.int64: "i64",
}


class AotError(RuntimeError):
    """A kernel that TensorRT cannot launch as an ahead-of-time plugin."""


@dataclass(frozen=True)
class AotKernel:
    """A compiled kernel as TensorRT launches it: ``params`` in launch order (input pointers, int32
    scalars, output pointers), ``num_warps * 32`` threads a block, ``shared`` bytes of shared memory."""

    name: str
    ptx: str
    num_warps: int
    shared: int
    params: tuple[str, ...]
    scalars: tuple[str, ...]
    constexprs: Mapping[str, Any]


def triton_signature(
    spec: PluginSpec, dtypes: Dtypes, attrs: Attrs, max_shapes: Shapes
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """(signature, constexprs, compile options) of the kernel for inputs of ``dtypes`` up to
    ``max_shapes``; every kernel parameter is a pointer, an int32 scalar or a constexpr."""
    spec.check_dtypes(dtypes)
    constexprs, options = spec.launch_meta(max_shapes, dtypes, attrs)
    scalars = spec.scalars(max_shapes, attrs)
    pointers = {p: t for p, t in spec.pointers.items() if t not in spec.absent}
    tensor_dtypes = spec.all_dtypes(dtypes)
    kinds: dict[str, list[str]] = {}
    for kind, names in (("constexpr", constexprs), ("scalar", scalars), ("pointer", pointers)):
        for name in names:
            kinds.setdefault(name, []).append(kind)
    arg_names = spec.kernel_fn().arg_names
    wrong = {
        n: kinds.get(n, []) for n in {*arg_names, *kinds} if n not in arg_names or len(kinds.get(n, [])) != 1
    }
    if wrong:
        raise AotError(f"{spec.name}: kernel parameters not declared exactly once by the spec: {wrong}")
    signature = {}
    for name in arg_names:
        if kinds[name] == ["constexpr"]:
            signature[name] = "constexpr"
        elif kinds[name] == ["scalar"]:
            signature[name] = "i32"
        else:
            signature[name] = "*" + _TRITON_TYPES[tensor_dtypes[pointers[name]]]
    return signature, constexprs, options


def compile_kernel(
    spec: PluginSpec, dtypes: Dtypes, attrs: Attrs, max_shapes: Shapes, target: Any = None
) -> AotKernel:
    """Compile the plugin's kernel to PTX for ``target`` (default: the current GPU) with TensorRT's
    parameter order."""
    kernel = spec.kernel_fn()
    if isinstance(kernel, InterpretedFunction):
        raise AotError(
            "Triton kernels are interpreted (TRITON_INTERPRET=1 was set when they were imported) and cannot "
            "be compiled ahead of time: unset TRITON_INTERPRET"
        )
    signature, constexprs, options = triton_signature(spec, dtypes, attrs, max_shapes)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=target, options=options)
    _check_launchable(spec, compiled.metadata)
    runtime = [name for name, kind in signature.items() if kind != "constexpr"]
    param_of = {tensor: param for param, tensor in spec.pointers.items()}
    scalars = tuple(name for name in runtime if signature[name] == "i32")
    order = (*(param_of[n] for n in spec.tensors), *scalars, *(param_of[n] for n in spec.outputs))
    ptx = reorder_entry_params(compiled.asm["ptx"], compiled.metadata.name, [runtime.index(n) for n in order])
    return AotKernel(
        name=compiled.metadata.name,
        ptx=ptx,
        num_warps=compiled.metadata.num_warps,
        shared=compiled.metadata.shared,
        params=order,
        scalars=scalars,
        constexprs=constexprs,
    )


def launch_geometry(
    spec: PluginSpec, kernel: AotKernel, shapes: Shapes, attrs: Attrs
) -> tuple[tuple[Any, Any, Any], list[Any]]:
    """(grid x, y, z; scalar arguments in launch order) for inputs of ``shapes``: ints, or TensorRT
    shape expressions when the engine is built."""
    grid = (*spec.grid(shapes, attrs, kernel.constexprs), 1, 1)[:3]
    scalars = spec.scalars(shapes, attrs)
    return grid, [scalars[name] for name in kernel.scalars]


def reorder_entry_params(ptx: str, name: str, order: list[int]) -> str:
    """PTX whose entry ``name`` declares its parameters in ``order`` (indices into the compiled
    parameter list); parameters past ``len(order)`` are dropped, if the kernel body never reads them."""
    header = re.search(rf"\.entry\s+{re.escape(name)}\s*\((?P<params>[^)]*)\)", ptx)
    if header is None:
        raise AotError(f"no .entry {name} in the compiled PTX")
    params = [p.strip() for p in header["params"].split(",") if p.strip()]
    for index, param in enumerate(params):
        if not param.endswith(f"{name}_param_{index}"):
            raise AotError(f"unexpected PTX parameter {param!r} at position {index} of {name}")
    if sorted(order) != list(range(len(order))) or len(order) > len(params):
        raise AotError(f"{name}: launch order {order} is not a permutation of its first parameters")
    body = ptx[header.end() :]
    for index in range(len(order), len(params)):
        if re.search(rf"\b{name}_param_{index}\b", body):
            raise AotError(
                f"{name} reads the hidden parameter {index} (Triton scratch memory), which TensorRT cannot pass"
            )
    declared = ",\n".join(f"\t{params[i]}" for i in order)
    return f"{ptx[: header.start('params')]}\n{declared}\n{ptx[header.end('params') :]}"


def _check_launchable(spec: PluginSpec, metadata: Any) -> None:
    needs = {
        "global scratch memory": getattr(metadata, "global_scratch_size", 0),
        "profile scratch memory": getattr(metadata, "profile_scratch_size", 0),
        "a thread-block cluster": max(
            getattr(metadata, "num_ctas", 1), *getattr(metadata, "cluster_dims", (1,))
        )
        > 1,
        "a cooperative launch": getattr(metadata, "launch_cooperative_grid", False),
        "programmatic dependent launch": getattr(metadata, "launch_pdl", False),
    }
    missing = [what for what, needed in needs.items() if needed]
    if missing:
        raise AotError(
            f"{spec.name}: the compiled kernel needs {', '.join(missing)}, which TensorRT does not provide"
        )
