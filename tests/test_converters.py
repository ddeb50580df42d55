"""The TensorRT plugins of the anchordetr ops, checked without TensorRT.

Every op registered in ``torch.ops.anchordetr`` must have a plugin spec. For each plugin: the spec's
launch contract (scalars, constexprs chosen for the largest shapes, grid) drives the op's Triton
kernel to the reference result, under the interpreter on CPU and compiled on a GPU (``gpu`` tests,
through Triton and through the CUDA driver exactly as TensorRT launches AOT kernels); its shape
expressions use only what TensorRT's symbolic ``ShapeExpr`` offers; its output shapes and dtypes are
those of the op's fake kernel; its kernel compiles ahead of time to PTX whose parameters, read back
from the assembled cubin, are in TensorRT's order. Exported graphs' op nodes bind to plugins, and the
tensorrt backend fails with a clear error where TensorRT is missing.
"""

import collections
import importlib
import importlib.machinery
import json
import logging
import operator
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import triton
from conftest import H100_SHARED_PER_BLOCK, needs_interpreter
from plugin_launch import launch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import anchordetr_trt as at
from anchordetr_trt.backends import tensorrt as trt_backend
from anchordetr_trt.converters.aot import AotError, _check_launchable, reorder_entry_params, triton_signature
from anchordetr_trt.converters.specs import NAMESPACE, PLUGINS, all_plugins, bind, check_node, op_name
from anchordetr_trt.custom_ops import reference
from anchordetr_trt.custom_ops.rcda_aggregate import column_buffer_shape, max_kernel_width, term_strides
from anchordetr_trt.errors import BackendUnavailableError, InputError
from anchordetr_trt.export import export_model
from anchordetr_trt.spec import CompileSpec, default_precision


def registered_ops() -> list[str]:
    """Names of every op registered in the ``anchordetr`` namespace, after importing every module of
    ``anchordetr_trt.custom_ops`` (each op module registers its op)."""
    package = importlib.import_module("anchordetr_trt.custom_ops")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    prefix = f"{NAMESPACE}::"
    return sorted(
        name.removeprefix(prefix) for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)
    )


F16, F32 = torch.float16, torch.float32
REGISTERED_OPS = registered_ops()  # imports every op module
ops = torch.ops.anchordetr
PLUGIN_SPECS = {spec.name: spec for spec in all_plugins()}
TOLERANCE = {F32: {"atol": 3e-5, "rtol": 1e-4}, F16: {"atol": 2e-3, "rtol": 1e-2}}  # fp32: sin, cos on a GPU

SMALL = {"batch": 2, "heads": 4, "height": 5, "width": 7, "channels": 32, "queries": 11}
# The largest shapes of the default engine range (8, 1344, 1344) with DC5 (stride 16): 84 x 84 features.
ENGINE_MAX = {"batch": 8, "heads": 8, "height": 84, "width": 84, "channels": 256, "queries": 84 * 84}


def image_mask(size: dict, device) -> torch.Tensor:
    """[B, H, W] padding at the bottom and right of every image but the first, as preprocess pads."""
    batch, height, width = size["batch"], size["height"], size["width"]
    rows = (
        torch.arange(height, device=device)[None] >= torch.linspace(height, 1, batch, device=device)[:, None]
    )
    cols = torch.arange(width, device=device)[None] >= torch.linspace(width, 2, batch, device=device)[:, None]
    return rows[:, :, None] | cols[:, None, :]


# Example name -> the plugin its call binds to: one per plugin variant, rcda_aggregate once per rank.
EXAMPLES = {
    "masked_softmax": "masked_softmax",
    "layer_norm": "layer_norm",
    "layer_norm_with_residual": "layer_norm_with_residual",
    "add_bias_transpose": "add_bias_transpose",
    "mask2pos": "mask2pos",
    "mask2posemb": "mask2posemb",
    "rcda_aggregate_encoder": "rcda_aggregate",
    "rcda_aggregate_decoder": "rcda_aggregate",
    "key_means": "key_means",
    "self_attention": "self_attention",
    "self_attention_batch_terms": "self_attention",
}
RCDA_EXAMPLES = [name for name, plugin in EXAMPLES.items() if plugin == "rcda_aggregate"]


def example_args(example: str, size: dict, dtype: torch.dtype, device="cpu") -> tuple:
    """Arguments of a call of the op of plugin ``EXAMPLES[example]``, dense as a plugin's buffers are.
    rcda_aggregate as the encoder calls it (queries [B, H, W, 2C], the row term [B, 1, W, C] and the
    column term [B, H, 1, C] broadcast over the map, values [B, H, W, C]) and as the decoder does
    (queries [B, Lq, 2C], the row term [1, Lq, C] shared by the batch, the column term [B, Lq, C],
    the values a middle slice of [B, H, W, 3C])."""
    b, h, hh, w, c, q = (size[k] for k in ("batch", "heads", "height", "width", "channels", "queries"))

    def randn(*shape):
        return torch.randn(shape, device=device).to(dtype)

    mask = image_mask(size, device)
    return {
        "masked_softmax": lambda: (randn(b, h, q, w) * 4, mask[:, 0, :].contiguous()),
        "layer_norm": lambda: (randn(b, hh, w, c), 1 + randn(c) / 5, randn(c) / 5, 1e-5),
        "layer_norm_with_residual": lambda: (
            randn(b, q, c),
            1 + randn(c) / 5,
            randn(c) / 5,
            1e-5,
            randn(b, q, c),
        ),
        "add_bias_transpose": lambda: (randn(b, q, c), randn(c), h, (c // h) ** -0.5),
        "mask2pos": lambda: (mask,),
        "mask2posemb": lambda: (mask, c, 10000.0),
        "rcda_aggregate_encoder": lambda: rcda_call(
            size,
            randn,
            device,
            (randn(b, hh, w, 2 * c), randn(b, hh, w, c)),
            randn(b, 1, w, c),
            randn(b, hh, 1, c),
            0,
        ),
        "key_means": lambda: (randn(b, hh, w, c), randn(b, w, c), randn(b, hh, c)),
        # The decoder's self-attention: position terms shared by the batch, or one per image.
        "self_attention": lambda: (randn(b, q, 3 * c), randn(1, q, 2 * c), h, (c // h) ** -0.5),
        "self_attention_batch_terms": lambda: (randn(b, q, 3 * c), randn(b, q, 2 * c), h, (c // h) ** -0.5),
        "rcda_aggregate_decoder": lambda: rcda_call(
            size,
            randn,
            device,
            (randn(b, q, 2 * c), randn(b, hh, w, 3 * c)),
            randn(1, q, c),
            randn(b, q, c),
            c,
        ),
    }[example]()


def rcda_call(
    size: dict, randn, device, queries_values: tuple, row_term, col_term, value_channel: int
) -> tuple:
    """rcda_aggregate's arguments: these queries, values and terms, keys and masks of ``size``."""
    b, h, hh, w, c = (size[k] for k in ("batch", "heads", "height", "width", "channels"))
    mask = image_mask(size, device)
    queries, values = queries_values
    keys = (
        randn(b * h, hh, c // h),
        mask[:, :, 0].contiguous(),
        randn(b * h, w, c // h),
        mask[:, 0, :].contiguous(),
    )
    return (queries, row_term, col_term, *keys, values, value_channel, (c // h) ** -0.5)


def bound_example(example: str, size: dict, dtype: torch.dtype, device="cpu"):
    """(args, the call bound to its plugin) of an example."""
    args = example_args(example, size, dtype, device)
    return args, bind(PLUGIN_SPECS[EXAMPLES[example]].op, args, {})


def reference_outputs(op: str, args: tuple) -> tuple[torch.Tensor, ...]:
    out = getattr(reference, op)(*args)
    return out if isinstance(out, tuple) else (out,)


def nan_outputs(spec, call) -> list[torch.Tensor]:
    """The plugin's output buffers, the workspace included, filled with NaN: an element the kernel
    should write and does not fails the comparison."""
    shapes, dtypes = shapes_of(spec, call), dtypes_of(spec, call)
    device = call.tensors[0].device
    return [
        torch.full(shape, float("nan"), dtype=dtype, device=device)
        for shape, dtype in zip(
            spec.output_shapes(shapes, call.attrs), spec.output_dtypes(dtypes), strict=True
        )
    ]


def shapes_of(spec, call) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in zip(spec.tensors, call.tensors, strict=True)}


def dtypes_of(spec, call) -> dict[str, torch.dtype]:
    return {name: t.dtype for name, t in zip(spec.tensors, call.tensors, strict=True)}


# ---------------------------------------------------------------------------------------------------
# Registry


def test_every_anchordetr_op_has_a_plugin():
    assert sorted(PLUGINS) == REGISTERED_OPS


def test_examples_cover_every_plugin():
    assert set(EXAMPLES.values()) == set(PLUGIN_SPECS)
    for example, plugin in EXAMPLES.items():
        assert bound_example(example, SMALL, F32)[1].spec.name == plugin


def test_plugin_ids_are_distinct_and_valid_for_tensorrt():
    ids = [spec.plugin_id for spec in all_plugins()]
    assert len(set(ids)) == len(ids)
    for plugin_id in ids:
        namespace, name = plugin_id.split("::")  # QDP ids are "namespace::name" without dots
        assert namespace == "anchordetr" and re.fullmatch(r"[a-z0-9_]+", name)


# ---------------------------------------------------------------------------------------------------
# Binding converter arguments


@pytest.mark.parametrize(
    ("op", "args", "kwargs", "plugin", "attrs"),
    [
        ("layer_norm", ("x", "w", "b", 1e-5), {}, "layer_norm", {"eps": 1e-5}),
        ("layer_norm", ("x", "w", "b", 1e-5, None), {}, "layer_norm", {"eps": 1e-5}),
        (
            "layer_norm",
            ("x", "w", "b"),
            {"eps": 1e-6, "residual": "r"},
            "layer_norm_with_residual",
            {"eps": 1e-6},
        ),
        ("layer_norm", ("x", "w", "b", np.float32(0.5)), {}, "layer_norm", {"eps": 0.5}),
        (
            "add_bias_transpose",
            ("x", "b", np.int64(8), 1),
            {},
            "add_bias_transpose",
            {"num_heads": 8, "scale": 1.0},
        ),
        (
            "mask2posemb",
            ("m",),
            {"num_pos_feats": 128, "temperature": 20},
            "mask2posemb",
            {"num_pos_feats": 128, "temperature": 20.0},
        ),
        (
            "rcda_aggregate",
            ("q", "rt", "ct", "kc", "mc"),
            {"k_row": "k", "mask_row": "m", "values": "v", "value_channel": np.int64(512), "scale": 1},
            "rcda_aggregate",
            {"value_channel": 512, "scale": 1.0},
        ),
        ("key_means", ("s",), {"posemb_row": "r", "posemb_col": "c"}, "key_means", {}),
    ],
)
def test_bind_fills_defaults_picks_the_variant_and_coerces_attributes(op, args, kwargs, plugin, attrs):
    call = bind(op, args, kwargs)
    assert call.spec.name == plugin
    assert call.attrs == attrs
    # TensorRT serializes attributes by their exact Python type: numpy scalars or ints for floats fail.
    assert [type(v) for v in call.attrs.values()] == [type(v) for v in attrs.values()]
    assert all(isinstance(t, str) for t in call.tensors) and len(call.tensors) == len(call.spec.tensors)


@pytest.mark.parametrize(
    ("op", "args", "kwargs", "message"),
    [
        ("layer_norm", ("x", "w"), {}, "missing argument 'bias'"),
        ("layer_norm", ("x", "w", "b", 1e-5), {"eps": 1e-5}, "unexpected or repeated"),
        ("layer_norm", ("x", "w", "b", 1e-5), {"gamma": 1}, "unexpected"),
        ("layer_norm", ("x", "w", "b", 1e-5, None, None), {}, "positional arguments"),
        ("layer_norm", ("x", "w", "b", float("nan")), {}, "finite"),
        ("add_bias_transpose", ("x", "b", True, 1.0), {}, "must be an int"),
        ("add_bias_transpose", ("x", "b", 2.5, 1.0), {}, "must be an int"),
        ("rcda_aggregate", ("q", "rt", "ct", "kc", "mc", "kr", "mr", "v", 1.5, 0.2), {}, "must be an int"),
        ("softmax", ("x",), {}, "no TensorRT plugin"),
    ],
)
def test_bind_rejects_bad_calls(op, args, kwargs, message):
    with pytest.raises(InputError, match=message):
        bind(op, args, kwargs)


@pytest.mark.parametrize(
    ("plugin", "dtypes", "message"),
    [
        ("masked_softmax", {"scores": torch.float64, "key_padding_mask": torch.bool}, "float64"),
        (
            "masked_softmax",
            {"scores": F16, "key_padding_mask": torch.uint8},
            "key_padding_mask of dtype uint8",
        ),
        ("rcda_aggregate", {"queries": F16, "row_term": F32, "values": F16}, "one float dtype"),
        ("rcda_aggregate", {"queries": F16, "mask_col": torch.uint8}, "mask_col of dtype uint8"),
        ("layer_norm_with_residual", {"x": F32, "residual": torch.bfloat16}, "bfloat16"),
    ],
)
def test_unsupported_dtypes_are_refused(plugin, dtypes, message):
    with pytest.raises(InputError, match=message):
        PLUGIN_SPECS[plugin].check_dtypes(dtypes)


# ---------------------------------------------------------------------------------------------------
# Launch contract, output shapes and dtypes


@needs_interpreter
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("headroom", [1, 3], ids=["at_max", "below_max"])
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_plugin_contract_computes_the_reference(example, headroom, dtype):
    """The kernel launched as the engine launches it, with blocks for shapes up to ``headroom`` times
    these, gives the reference; outputs start as NaN so that an unwritten element fails (for
    rcda_aggregate, broadcast position terms read at the spec's strides)."""
    args, call = bound_example(example, SMALL, dtype)
    spec = call.spec
    expected = reference_outputs(spec.op, args)
    outputs = dict(zip(spec.outputs, nan_outputs(spec, call), strict=True))
    max_shapes = {name: tuple(d * headroom for d in shape) for name, shape in shapes_of(spec, call).items()}
    launch(
        spec, dict(zip(spec.tensors, call.tensors, strict=True)), outputs, call.attrs, max_shapes=max_shapes
    )
    for got, want in zip((outputs[name] for name in spec.returns), expected, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE[want.dtype])


@needs_interpreter
@pytest.mark.parametrize("example", ["masked_softmax", *RCDA_EXAMPLES])
def test_a_kernel_built_for_narrower_rows_refuses_wider_ones_with_nan(example):
    """A kernel whose blocks cover fewer columns than it is given (an engine built for a narrower width)
    puts NaN in every output row, which spreads to the detections, instead of leaving columns out."""
    size = {**SMALL, "width": 40}
    _, call = bound_example(example, size, F32)
    spec = call.spec
    outputs = dict(zip(spec.outputs, nan_outputs(spec, call), strict=True))
    for out in outputs.values():
        out.zero_()
    narrower = {
        name: tuple(20 if d == 40 else d for d in shape) for name, shape in shapes_of(spec, call).items()
    }
    launch(spec, dict(zip(spec.tensors, call.tensors, strict=True)), outputs, call.attrs, max_shapes=narrower)
    assert torch.isnan(outputs[spec.returns[0]]).any(dim=-1).all()


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_output_shapes_and_dtypes_are_the_fake_kernels(example):
    with FakeTensorMode() as mode:
        args = tuple(
            mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
            for a in example_args(example, SMALL, F16)
        )
        call = bind(PLUGIN_SPECS[EXAMPLES[example]].op, args, {})
        spec = call.spec
        fake = getattr(torch.ops.anchordetr, spec.op)(*args)
    fake = fake if isinstance(fake, tuple) else (fake,)
    returned = len(spec.returns)  # the workspace follows: the kernel's own, not the op's
    assert spec.output_shapes(shapes_of(spec, call), call.attrs)[:returned] == tuple(
        tuple(f.shape) for f in fake
    )
    assert spec.output_dtypes(dtypes_of(spec, call))[:returned] == tuple(f.dtype for f in fake)


@pytest.mark.parametrize(
    ("example", "num_queries"), [("rcda_aggregate_encoder", 27), ("rcda_aggregate_decoder", 11)]
)
def test_rcda_aggregate_workspace_is_the_kernels_column_buffer(example, num_queries):
    """The buffer the kernel writes its column probabilities to, [N, Lq, H] (Lq: all of an encoder
    map's queries): at a map taller than wide, a buffer sized by W would be too small."""
    size = {**SMALL, "height": 9, "width": 3}
    _, call = bound_example(example, size, F16, device="meta")
    spec, shapes = call.spec, shapes_of(call.spec, call)
    declared = dict(zip(spec.outputs, spec.output_shapes(shapes, call.attrs), strict=True))
    assert spec.workspace == ("probs_col",)
    assert declared["probs_col"] == column_buffer_shape(SMALL["batch"] * SMALL["heads"], num_queries, 9)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", [SMALL, ENGINE_MAX], ids=["small", "engine_max"])
@pytest.mark.parametrize("example", RCDA_EXAMPLES)
def test_rcda_aggregate_scalars_are_the_launchers_for_dense_terms(example, size, batch):
    """The plugin's term strides (from the dense terms' shapes, 0 along broadcast dims) and map width
    are the ones the op's launcher passes for the same dense terms: a [B, 1, W, C] row term and a
    [B, H, 1, C] column term over the encoder's map, a [1, Lq, C] and a [B, Lq, C] term over the
    decoder's queries; a batch of 1 broadcasts too."""
    _, call = bound_example(example, {**size, "batch": batch}, F16, device="meta")
    tensors = dict(zip(call.spec.tensors, call.tensors, strict=True))
    queries = tensors["queries"]
    scalars = call.spec.scalars(shapes_of(call.spec, call), call.attrs)
    for term in ("row_term", "col_term"):
        got = tuple(scalars[f"{term}_stride_{axis}"] for axis in "byx")
        assert got == term_strides(tensors[term].shape, tensors[term].stride()), term
    assert scalars["map_width"] == (queries.shape[2] if queries.dim() == 4 else queries.shape[1])
    assert scalars["num_queries"] == queries.shape[1:-1].numel()
    assert (scalars["query_channels"], scalars["value_channels"]) == (
        queries.shape[-1],
        tensors["values"].shape[-1],
    )


class SymbolicDim:
    """A dimension as TensorRT's ``ShapeExpr`` offers it: ``+ - * // <`` with itself on the left, no
    reflected operators, no truth value; it computes the int it stands for."""

    def __init__(self, value: int):
        self.value = value

    def _apply(self, other, function):
        if isinstance(other, bool) or not isinstance(other, SymbolicDim | int):
            return NotImplemented
        return SymbolicDim(int(function(self.value, getattr(other, "value", other))))

    def __add__(self, other):
        return self._apply(other, operator.add)

    def __sub__(self, other):
        return self._apply(other, operator.sub)

    def __mul__(self, other):
        return self._apply(other, operator.mul)

    def __floordiv__(self, other):
        return self._apply(other, operator.floordiv)

    def __lt__(self, other):
        return self._apply(other, operator.lt)

    def __bool__(self):
        raise TypeError("a symbolic dimension has no truth value")


def concrete(value):
    if isinstance(value, tuple | list):
        return tuple(concrete(v) for v in value)
    if isinstance(value, dict):
        return {k: concrete(v) for k, v in value.items()}
    return value.value if isinstance(value, SymbolicDim) else value


@pytest.mark.parametrize("size", [SMALL, {**SMALL, "height": 9, "width": 3}], ids=["wide", "tall"])
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_shape_expressions_work_on_tensorrt_shape_expressions(example, size):
    _, call = bound_example(example, size, F16, device="meta")
    spec = call.spec
    shapes = shapes_of(spec, call)
    symbolic = {name: tuple(SymbolicDim(d) for d in shape) for name, shape in shapes.items()}
    constexprs, _ = spec.launch_meta(shapes, dtypes_of(spec, call), call.attrs)
    for expression in (spec.output_shapes, spec.scalars):
        assert concrete(expression(symbolic, call.attrs)) == expression(shapes, call.attrs)
    assert concrete(spec.grid(symbolic, call.attrs, constexprs)) == spec.grid(shapes, call.attrs, constexprs)


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time compilation


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_triton_signature_covers_the_kernel_parameters(example):
    _, call = bound_example(example, ENGINE_MAX, F16, device="meta")
    spec = call.spec
    signature, constexprs, _ = triton_signature(
        spec, dtypes_of(spec, call), call.attrs, shapes_of(spec, call)
    )
    kernel = spec.kernel_fn()
    assert list(signature) == list(kernel.arg_names)
    declared_constexprs = [p.name for p in inspect_parameters(kernel) if "constexpr" in str(p.annotation)]
    assert all(signature[name] == "constexpr" for name in declared_constexprs)
    assert set(constexprs) == {name for name, kind in signature.items() if kind == "constexpr"}
    pointer_types = {spec.pointers[n]: t for n, t in signature.items() if t.startswith("*")}
    all_dtypes = spec.all_dtypes(dtypes_of(spec, call))
    expected = {"float16": "*fp16", "float32": "*fp32", "uint8": "*u8"}
    assert pointer_types == {
        name: expected[str(all_dtypes[name]).removeprefix("torch.")] for name in pointer_types
    }
    assert set(pointer_types) == set(spec.tensors) | set(spec.outputs)


@pytest.mark.parametrize("example", RCDA_EXAMPLES)
def test_rcda_aggregate_scale_is_compiled_in_and_value_channel_passed_at_launch(example):
    """TensorRT passes int32 scalars only and keeps no attributes in the engine: scale, a float, is
    fixed as a constant of the AOT build; value_channel is an int32 argument, so that the decoder's
    layers (one value_channel each) share one kernel."""
    _, call = bound_example(example, ENGINE_MAX, F16, device="meta")
    spec = call.spec
    signature, constexprs, _ = triton_signature(
        spec, dtypes_of(spec, call), call.attrs, shapes_of(spec, call)
    )
    assert signature["scale"] == "constexpr" and constexprs["scale"] == call.attrs["scale"]
    assert type(constexprs["scale"]) is float
    assert signature["value_channel"] == "i32"
    assert spec.scalars(shapes_of(spec, call), call.attrs)["value_channel"] == call.attrs["value_channel"]


def inspect_parameters(kernel):
    import inspect

    return inspect.signature(getattr(kernel, "fn", kernel)).parameters.values()


PTX = """//
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u64 .ptr .global .align 1 k_param_1,
\t.param .u32 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3,
\t.param .u64 .ptr .global .align 1 k_param_4
)
{
\tld.param.u64 %rd1, [k_param_0];
\tld.param.u64 %rd2, [k_param_1];
\tld.param.u32 %r1, [k_param_2];
BODY
}
"""


def entry_params(ptx: str) -> list[str]:
    header = re.search(r"\.entry k\(([^)]*)\)", ptx)[1]
    return re.findall(r"k_param_\d+", header)


def test_reorder_entry_params_permutes_and_drops_unread_hidden_params():
    ptx = reorder_entry_params(PTX.replace("BODY", ""), "k", [0, 2, 1])
    assert entry_params(ptx) == ["k_param_0", "k_param_2", "k_param_1"]
    assert ptx.count("ld.param") == 3  # the body is untouched


@pytest.mark.parametrize(
    ("body", "name", "order", "message"),
    [
        ("ld.param.u64 %rd3, [k_param_3];", "k", [0, 2, 1], "hidden parameter 3"),
        ("", "other", [0, 1, 2], "no .entry other"),
        ("", "k", [0, 2, 2], "not a permutation"),
    ],
)
def test_reorder_entry_params_refuses_what_tensorrt_cannot_launch(body, name, order, message):
    with pytest.raises(AotError, match=message):
        reorder_entry_params(PTX.replace("BODY", body), name, order)


@pytest.mark.parametrize(
    ("needs", "message"),
    [
        ({"global_scratch_size": 128}, "global scratch"),
        ({"num_ctas": 2}, "cluster"),
        ({"launch_pdl": True}, "dependent"),
    ],
)
def test_kernels_needing_more_than_a_plain_launch_are_refused(needs, message):
    with pytest.raises(AotError, match=message):
        _check_launchable(PLUGIN_SPECS["mask2pos"], SimpleNamespace(**needs))


AOT_SCRIPT = """
import json, sys, torch
from triton.backends.compiler import GPUTarget
from anchordetr_trt.converters.aot import compile_kernel
from anchordetr_trt.converters.specs import PLUGINS
results = {}
for name, case in json.loads(sys.argv[1]).items():
    spec = PLUGINS[case["op"]].variant(frozenset(case["present"]))
    dtypes = {n: getattr(torch, d) for n, d in case["dtypes"].items()}
    kernel = compile_kernel(spec, dtypes, case["attrs"], case["shapes"], target=GPUTarget("cuda", 90, 32))
    results[name] = {
        "name": kernel.name, "ptx": kernel.ptx, "params": kernel.params, "scalars": kernel.scalars,
        "shared": kernel.shared,
    }
print(json.dumps(results))
"""


def kernel_param_sizes(cubin: Path, kernel: str) -> list[int]:
    """Parameter sizes in bytes by ordinal, from the cubin's EIATTR_KPARAM_INFO records."""
    cuobjdump = Path(triton.knobs.nvidia.ptxas.path).parent / "cuobjdump"
    elf = subprocess.run([cuobjdump, "--dump-elf", cubin], capture_output=True, text=True, check=True).stdout
    section = elf[elf.index(f".nv.info.{kernel}") :]
    info = re.findall(
        r"Ordinal\s*:\s*0x([0-9a-f]+)\s+Offset\s*:\s*0x[0-9a-f]+\s+Size\s*:\s*0x([0-9a-f]+)", section
    )
    sizes = {int(ordinal, 16): int(size, 16) for ordinal, size in info}
    return [sizes[i] for i in range(len(sizes))]


def widest_rcda(dtype: torch.dtype) -> dict:
    """ENGINE_MAX with features as wide as the rcda_aggregate kernel takes in ``dtype``."""
    head_dim = ENGINE_MAX["channels"] // ENGINE_MAX["heads"]
    return {**ENGINE_MAX, "width": max_kernel_width(dtype.itemsize, head_dim)}


@pytest.mark.slow
def test_kernels_compile_ahead_of_time_with_tensorrts_parameter_order(tmp_path):
    """Each plugin's kernel compiled for sm_90 at the engine's largest shapes (in a process without the
    interpreter), assembled by ptxas: input pointers (8 bytes), int32 scalars (4), output pointers (8);
    its shared memory fits an H100 block, the widest rcda_aggregate kernel's too."""
    cases = {}
    plugins = [
        *((name, F16, ENGINE_MAX) for name in EXAMPLES),
        *((name, F32, ENGINE_MAX) for name in RCDA_EXAMPLES),
        *(("rcda_aggregate_encoder", dtype, widest_rcda(dtype)) for dtype in (F16, F32)),
    ]
    for example, dtype, size in plugins:
        _, call = bound_example(example, size, dtype, device="meta")
        spec = call.spec
        cases[f"{example}-{dtype}-{size['width']}"] = {
            "op": spec.op,
            "present": [n for n in spec.optional if n not in spec.absent],
            "dtypes": {n: str(d).removeprefix("torch.") for n, d in dtypes_of(spec, call).items()},
            "attrs": call.attrs,
            "shapes": shapes_of(spec, call),
        }
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for case, kernel in json.loads(run.stdout).items():
        (tmp_path / f"{case}.ptx").write_text(kernel["ptx"])
        cubin = tmp_path / f"{case}.cubin"
        subprocess.run(
            [triton.knobs.nvidia.ptxas.path, "--gpu-name=sm_90a", tmp_path / f"{case}.ptx", "-o", cubin],
            check=True,
        )
        spec = PLUGINS[cases[case]["op"]].variant(frozenset(cases[case]["present"]))
        param_of = {tensor: param for param, tensor in spec.pointers.items()}
        assert kernel["params"] == [
            *(param_of[n] for n in spec.tensors),
            *kernel["scalars"],
            *(param_of[n] for n in spec.outputs),
        ]
        expected_sizes = [4 if p in kernel["scalars"] else 8 for p in kernel["params"]]
        assert kernel_param_sizes(cubin, kernel["name"]) == expected_sizes, case
        assert kernel["shared"] <= H100_SHARED_PER_BLOCK, case


@pytest.mark.parametrize("dtype", [F16, F32])
def test_rcda_aggregate_wider_than_its_kernel_is_refused_naming_max_shape(dtype):
    """Past the widest kernel (shared memory), building a plugin is an InputError at compile time, not a
    launch failure in the engine."""
    size = {**widest_rcda(dtype), "width": widest_rcda(dtype)["width"] + 1}
    _, call = bound_example("rcda_aggregate_decoder", size, dtype, device="meta")
    with pytest.raises(InputError, match=r"wide .* smaller max_shape width"):
        call.spec.launch_meta(shapes_of(call.spec, call), dtypes_of(call.spec, call), call.attrs)


@pytest.mark.parametrize(
    ("height", "width", "channels"), [(1, 65535, 16), (32768, 32768, 2)]
)  # past the grid's 65535 lines; at 2**31 values per image
def test_key_means_past_its_kernel_is_refused_naming_max_shape(height, width, channels):
    size = {**ENGINE_MAX, "height": height, "width": width, "channels": channels}
    _, call = bound_example("key_means", size, F16, device="meta")
    with pytest.raises(InputError, match=r"key_means: feature maps .* compile a smaller max_shape"):
        call.spec.launch_meta(shapes_of(call.spec, call), dtypes_of(call.spec, call), call.attrs)


@pytest.mark.parametrize(
    ("example", "key", "module", "batch"),
    [
        ("self_attention", "BLOCK_M", "self_attention", 8),  # an H100's inductor launch: 128 queries
        ("rcda_aggregate_decoder", "BLOCK_Q", "rcda_aggregate", 1),  # an H100's inductor launch: 64
    ],
)
def test_plugins_of_grid_dependent_ops_keep_one_query_block(example, key, module, batch):
    """An engine's kernel is compiled before any GPU is seen and serves every batch of its range: it
    keeps the block the launch config gives without an SM count (self_attention's 64 queries and 4
    warps, rcda_aggregate's 128 and 4), where the inductor backend on an H100 would pick the other at
    this batch of 900 queries."""
    ops = importlib.import_module(f"anchordetr_trt.custom_ops.{module}")
    size = {**ENGINE_MAX, "batch": batch, "queries": 900}
    _, call = bound_example(example, size, F16, device="meta")
    meta, options = call.spec.launch_meta(shapes_of(call.spec, call), dtypes_of(call.spec, call), call.attrs)
    assert (meta[key], options["num_warps"]) == (getattr(ops, key), ops.NUM_WARPS)


def test_self_attention_past_its_kernel_is_refused_naming_max_shape():
    """Past the grid's B * heads (an engine's max batch of 8192 at 8 heads), building the plugin is an
    InputError at compile time, not a launch failure in the engine."""
    _, call = bound_example(
        "self_attention", {**ENGINE_MAX, "batch": 8192, "queries": 900}, F16, device="meta"
    )
    with pytest.raises(InputError, match=r"self_attention: .* compile a smaller max_shape batch"):
        call.spec.launch_meta(shapes_of(call.spec, call), dtypes_of(call.spec, call), call.attrs)


def test_self_attention_heads_past_its_kernel_are_refused_naming_the_model():
    """Heads wider than the kernel's registers hold: no max_shape fixes that, and the error says so."""
    _, call = bound_example("self_attention", {**ENGINE_MAX, "heads": 1, "channels": 512}, F16, device="meta")
    with pytest.raises(
        InputError, match=r"heads of 512 channels are past the kernel's 256: use the inductor"
    ):
        call.spec.launch_meta(shapes_of(call.spec, call), dtypes_of(call.spec, call), call.attrs)


# ---------------------------------------------------------------------------------------------------
# Exported graphs


class AllOps(nn.Module):
    """Every anchordetr op once or more, wired as AnchorDETR wires them: x [B, H, W, C], mask [B, H, W]."""

    def __init__(self, channels: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x, mask):
        batch, channels = x.shape[0], x.shape[3]
        pos_y, pos_x = ops.mask2pos(mask)
        emb_y, emb_x = ops.mask2posemb(mask, channels, 10000.0)
        x = ops.layer_norm(x, self.weight, self.bias, 1e-5)
        x = ops.layer_norm(x, self.weight, self.bias, 1e-5, emb_y[:, :, None, :])
        tokens = x.flatten(1, 2)

        def heads(t, scale=1.0):
            return ops.add_bias_transpose(t, self.bias, self.heads, scale)

        mask_col, mask_row = mask[:, :, 0], mask[:, 0, :]
        key_row, key_col = ops.key_means(x, emb_x, emb_y)
        keys = heads(key_col), mask_col, heads(key_row), mask_row
        packed = torch.cat((x, x, x), -1)  # [B, H, W, 3C]: row queries, column queries, values
        # The encoder's call: queries over the map, terms broadcast over its rows and its columns.
        encoded = ops.rcda_aggregate(
            packed, emb_x[:, None], emb_y[:, :, None], *keys, packed, 2 * channels, 0.5
        )
        # The decoder's: a sequence of queries, a row term shared by the batch.
        decoded = ops.rcda_aggregate(
            packed.flatten(1, 2)[..., : 2 * channels],
            tokens.mean(0, keepdim=True),
            tokens,
            *keys,
            packed,
            channels,
            0.5,
        )
        # Not in AnchorDETR since rcda_aggregate computes both softmaxes; still an op with a plugin.
        scores = torch.bmm(heads(tokens, 0.5), heads(key_col).transpose(1, 2))
        probs_col = ops.masked_softmax(scores.unflatten(0, (batch, self.heads)), mask_col)
        # The decoder's self-attention, over the map's tokens, its position terms shared by the batch.
        terms = tokens.mean(0, keepdim=True)
        attended = ops.self_attention(packed.flatten(1, 2), torch.cat((terms, terms), -1), self.heads, 0.5)
        return encoded, decoded, probs_col, pos_y, pos_x, attended


ALL_OPS_COUNTS = {
    "layer_norm": 2,
    "mask2pos": 1,
    "mask2posemb": 1,
    "add_bias_transpose": 4,
    "masked_softmax": 1,
    "rcda_aggregate": 2,
    "key_means": 1,
    "self_attention": 1,
}


def exported_op_nodes(exported):
    return [node for node in exported.graph.nodes if node.op == "call_function" and op_name(node.target)]


def test_exported_graph_nodes_bind_to_plugins():
    size = {**SMALL, "batch": 2, "height": 6, "width": 9}
    x, mask = torch.randn(2, 6, 9, 32), image_mask(size, "cpu")
    batch, height, width = (torch.export.Dim(n, min=2, max=64) for n in ("batch", "height", "width"))
    dynamic = {"x": {0: batch, 1: height, 2: width}, "mask": {0: batch, 1: height, 2: width}}
    exported = torch.export.export(AllOps(), (x, mask), dynamic_shapes=dynamic)
    nodes = exported_op_nodes(exported)
    assert collections.Counter(op_name(n.target) for n in nodes) == ALL_OPS_COUNTS
    variants = collections.Counter()
    for node in nodes:
        call = check_node(node)
        variants[call.spec.name] += 1
        assert all(isinstance(t, torch.fx.Node) for t in call.tensors)
        assert all(
            type(v) is kind for v, kind in zip(call.attrs.values(), call.spec.attrs().values(), strict=True)
        )
    assert variants["layer_norm"] == variants["layer_norm_with_residual"] == 1
    assert trt_backend.ops_outside_tensorrt(exported.module()) == sorted(op_name(n.target) for n in nodes)


class MaskedSoftmax(nn.Module):
    def forward(self, scores, mask):
        return ops.masked_softmax(scores, mask)


def test_a_node_of_an_unsupported_dtype_stays_in_pytorch():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    exported = torch.export.export(MaskedSoftmax(), (torch.randn(2, 1, 4, 3, dtype=torch.bfloat16), mask))
    (node,) = exported_op_nodes(exported)
    with pytest.raises(InputError, match="bfloat16"):
        check_node(node)


def expected_model_ops(config: at.AnchorDETRConfig) -> dict[str, int]:
    """anchordetr op calls of AnchorDETR's forward: RCDA in every layer (the encoder's projects its two
    keys into heads; its map's three projections are one GEMM, and the decoder's projections split
    into heads by plain tensor ops), then 1 aggregation with both softmaxes; the row and column keys
    of the map, once per encoder layer and once of the decoder's memory; the decoder's
    self-attention, one per layer; a residual norm after each attention and FFN, one position
    embedding of the mask."""
    encoder, decoder = config.num_encoder_layers, config.num_decoder_layers
    return {
        "add_bias_transpose": 2 * encoder,
        "rcda_aggregate": encoder + decoder,
        "layer_norm": 2 * encoder + 3 * decoder,
        "mask2posemb": 1,
        "key_means": encoder + 1,
        "self_attention": decoder,
    }


@pytest.mark.slow
def test_exported_model_holds_exactly_the_expected_plugin_nodes():
    torch.manual_seed(0)
    model = at.build_model(at.VARIANTS["r50-c5"]).set_fused_ops(True)
    exported = export_model(model, min_shape=(1, 64, 64), max_shape=(2, 128, 128))
    nodes = exported_op_nodes(exported)
    assert collections.Counter(op_name(n.target) for n in nodes) == expected_model_ops(model.config)
    assert {check_node(n).spec.name for n in nodes if op_name(n.target) == "layer_norm"} == {
        "layer_norm_with_residual"
    }


# ---------------------------------------------------------------------------------------------------
# The tensorrt backend where TensorRT is missing


@pytest.fixture
def without_torch_tensorrt(monkeypatch):
    """This process as if torch_tensorrt were not installed (None in sys.modules fails its import)."""
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    trt_backend._import_status.cache_clear()
    yield
    trt_backend._import_status.cache_clear()


def test_tensorrt_status_names_what_is_missing(without_torch_tensorrt, monkeypatch):
    # The fix names the release of torch's own minor version: the package's [tensorrt] extra would let
    # pip replace torch with the newest Torch-TensorRT's.
    monkeypatch.setattr(torch, "__version__", "2.13.1+cu130")
    available, reason = trt_backend.status(torch.device("cuda"))
    assert not available
    assert reason.startswith("torch_tensorrt")
    assert reason.endswith(
        "not installed: pip install 'torch-tensorrt==2.13.*' (the release for torch 2.13.1+cu130)"
    )


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compile_tensorrt_without_tensorrt_says_what_to_use_instead(without_torch_tensorrt, device):
    with pytest.raises(BackendUnavailableError, match=r"torch_tensorrt.*backend='inductor'.*backend='eager'"):
        trt_backend.build(
            nn.Linear(1, 1),
            CompileSpec(
                precision=default_precision(torch.device(device)),
                device=torch.device(device),
                min_shape=(1, 64, 64),
                opt_shape=(1, 64, 64),
                max_shape=(1, 64, 64),
            ),
        )


def test_compile_with_backend_tensorrt_without_tensorrt_is_a_clear_error(without_torch_tensorrt):
    model = at.build_model(at.VARIANTS["r50-c5"])
    with pytest.raises(BackendUnavailableError, match=r"tensorrt.*torch_tensorrt.*backend='eager'"):
        at.compile(model, backend="tensorrt", device="cpu", precision="fp32")


@pytest.fixture
def installed_versions(monkeypatch):
    """Set the installed torch_tensorrt and torch versions: stand-in tensorrt and torch_tensorrt modules
    that import, a visible GPU, then ``_import_status`` recomputed."""

    def install(torch_tensorrt_version: str, torch_version: str) -> tuple[bool, str]:
        versions = {"tensorrt": "10.16.1", "tensorrt.plugin": None, "torch_tensorrt": torch_tensorrt_version}
        for name, version in versions.items():
            module = ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            if version is not None:
                module.__version__ = version
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(torch, "__version__", torch_version)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        trt_backend._import_status.cache_clear()
        return trt_backend.status(torch.device("cuda"))

    yield install
    trt_backend._import_status.cache_clear()


@pytest.mark.parametrize(
    "torch_tensorrt_version, torch_version",
    [
        ("2.11.0+cu130", "2.11.0+cu130"),
        ("2.12.1", "2.12.0"),
        ("2.13.0", "2.13.1+cu132"),
        ("2.14.0.dev20260901+cu132", "2.14.1"),
    ],
)
def test_supported_torch_tensorrt_versions_are_accepted(
    installed_versions, torch_tensorrt_version, torch_version
):
    available, reason = installed_versions(torch_tensorrt_version, torch_version)
    assert available, reason
    assert reason == f"Torch-TensorRT {torch_tensorrt_version} with TensorRT 10.16.1"


@pytest.mark.parametrize(
    "torch_tensorrt_version, torch_version, message",
    [
        (
            "2.10.0",
            "2.10.0",
            r"^Torch-TensorRT 2\.10\.0 is installed; backend='tensorrt' supports 2\.11 to 2\.14: "
            r"install torch and torch-tensorrt of one minor version from 2\.11 to 2\.14$",
        ),
        (
            "2.15.0",
            "2.14.1",
            r"^Torch-TensorRT 2\.15\.0 is installed; backend='tensorrt' supports 2\.11 to 2\.14: "
            r"pip install 'torch-tensorrt==2\.14\.\*' \(the release for torch 2\.14\.1\)$",
        ),
        (
            "2.13.0",
            "2.14.1",
            r"^Torch-TensorRT 2\.13\.0 is built for torch 2\.13, but torch 2\.14\.1 is installed: "
            r"pip install 'torch-tensorrt==2\.14\.\*'",
        ),
        (
            "2.14.0",
            "2.11.0+cu130",
            r"built for torch 2\.14, but torch 2\.11\.0\+cu130 is installed: "
            r"pip install 'torch-tensorrt==2\.11\.\*'",
        ),
        (
            "2.12.0",
            "2.15.0",
            r"built for torch 2\.12, but torch 2\.15\.0 is installed: install torch and "
            r"torch-tensorrt of one minor version from 2\.11 to 2\.14$",
        ),
        ("unknown", "2.13.0", r"^Torch-TensorRT unknown is installed; .*torch-tensorrt==2\.13\.\*"),
    ],
    ids=["older", "newer", "older_than_torch", "newer_than_torch", "torch_unsupported", "unparsable"],
)
def test_other_torch_tensorrt_versions_are_refused_with_the_fix(
    installed_versions, torch_tensorrt_version, torch_version, message
):
    available, reason = installed_versions(torch_tensorrt_version, torch_version)
    assert not available
    assert re.search(message, reason), reason
    assert "\n" not in reason


def test_compile_with_an_unsupported_torch_tensorrt_names_versions_and_fix(installed_versions):
    installed_versions("2.13.0", "2.14.1")
    spec = CompileSpec("fp16", torch.device("cuda"), (1, 64, 64), (1, 64, 64), (1, 64, 64))
    with pytest.raises(
        BackendUnavailableError, match=r"Torch-TensorRT 2\.13\.0 .*torch 2\.14\.1.*==2\.14\.\*"
    ):
        trt_backend.build(nn.Linear(1, 1), spec)


# ---------------------------------------------------------------------------------------------------
# Engine cache key


def test_cache_key_changes_with_everything_an_engine_depends_on():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    shapes = ((1, 320, 320), (1, 800, 800), (8, 1344, 1344))
    versions = {"tensorrt": "10.13", "kernels": "abc"}
    key = trt_backend.cache_key(model, "fp16", shapes, versions)
    same_weights, changed_weights = nn.Linear(4, 2), nn.Linear(4, 2)
    same_weights.load_state_dict(model.state_dict())
    assert key == trt_backend.cache_key(same_weights, "fp16", shapes, versions)
    others = [
        trt_backend.cache_key(changed_weights, "fp16", shapes, versions),
        trt_backend.cache_key(model, "fp32", shapes, versions),
        trt_backend.cache_key(model, "fp16", ((1, 320, 320), (1, 800, 800), (4, 1344, 1344)), versions),
        trt_backend.cache_key(model, "fp16", shapes, {**versions, "tensorrt": "10.14"}),
    ]
    assert len({key, *others}) == 5


@pytest.mark.parametrize(
    ("version", "warned"),
    [("10.15.1.29", False), ("11.0.0.114", False), ("11.1.0.106", True), ("11.4.0", True)],
)
def test_the_aot_plugin_leak_is_named_for_the_tensorrt_versions_it_affects(version, warned):
    issues = trt_backend.known_issues(version)
    assert bool(issues) == warned
    assert all("NVIDIA/TensorRT#4849" in line and version in line for line in issues)


def test_library_versions_cover_the_libraries_and_the_kernel_sources():
    """The engine cache key covers all of the package's source: a change to the model (transformer.py)
    invalidates a cached engine as a change to a kernel or plugin does."""
    from anchordetr_trt.cache import source_digest, source_files

    versions = trt_backend.library_versions()
    assert {"torch", "torch_tensorrt", "tensorrt", "triton", "anchordetr_trt", "source"} <= set(versions)
    assert torch.__version__.startswith(versions["torch"])
    assert versions["source"] == source_digest()
    names = {name for name, _ in source_files()}
    assert {"anchordetr_trt/transformer.py", "custom_ops/rcda_aggregate.py", "converters/qdp.py"} <= names


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 31, 64), (1, 64, 2000)])
def test_inputs_outside_the_engine_range_are_input_errors(shape):
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 32, 32), (1, 32, 32), (2, 1344, 1344))
    with pytest.raises(InputError, match=r"outside the compiled range"):
        spec.check_contains(shape)


# ---------------------------------------------------------------------------------------------------
# GPU: the AOT kernels on raw device pointers and a CUDA stream


GPU_SIZE = {"batch": 2, "heads": 8, "height": 25, "width": 38, "channels": 256, "queries": 900}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, F32])
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_aot_kernels_on_device_pointers_match_the_reference(example, dtype):
    """The AOT kernel (PTX loaded and launched through the CUDA driver, as TensorRT does, built for
    twice these shapes) on raw pointers and a side stream, for every plugin (rcda_aggregate as the
    encoder and as the decoder call it)."""
    from cuda_driver import launch_aot

    from anchordetr_trt.converters.aot import compile_kernel

    args, call = bound_example(example, GPU_SIZE, dtype, device="cuda")
    spec = call.spec
    expected = reference_outputs(spec.op, args)
    shapes = shapes_of(spec, call)
    kernel = compile_kernel(
        spec, dtypes_of(spec, call), call.attrs, {n: tuple(2 * d for d in s) for n, s in shapes.items()}
    )
    stream = torch.cuda.Stream()
    outputs = nan_outputs(spec, call)
    torch.cuda.current_stream().synchronize()  # inputs and outputs are ready before the side stream runs
    pointers = [t.data_ptr() for t in call.tensors], [o.data_ptr() for o in outputs]
    launch_aot(spec, kernel, *pointers, shapes, call.attrs, stream.cuda_stream)
    stream.synchronize()
    for got, want in zip(outputs[: len(spec.returns)], expected, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE[want.dtype])


@pytest.mark.slow
def test_a_module_that_runs_ops_in_pytorch_is_refused():
    """The exported model itself is all PyTorch: every anchordetr op and a hundred others outside TensorRT."""
    torch.manual_seed(0)
    model = at.build_model(at.VARIANTS["r50-c5"]).set_fused_ops(True)
    exported = export_model(model, min_shape=(1, 64, 64), max_shape=(2, 128, 128))
    with pytest.raises(
        BackendUnavailableError, match=r"left \d+ op\(s\) to PyTorch .*anchordetr ops among them: \['"
    ):
        trt_backend.check_no_fallback(exported.module())
    glue_only = torch.fx.symbolic_trace(lambda x: x.view(-1)[0])
    trt_backend.check_no_fallback(glue_only)  # nothing to report


def test_an_engine_that_cannot_be_saved_is_kept_and_the_partial_file_removed(tmp_path, monkeypatch, caplog):
    def save(module, path, **kwargs):
        pathlib.Path(path).write_text("half an engine")
        raise OSError("No space left on device")

    monkeypatch.setitem(sys.modules, "torch_tensorrt", types.SimpleNamespace(save=save))
    with caplog.at_level(logging.WARNING, logger="anchordetr_trt.backends.tensorrt"):
        trt_backend._save(nn.Linear(1, 1), tmp_path / "engine.pt2")
    assert list(tmp_path.iterdir()) == []
    assert "could not save" in caplog.text and "No space left on device" in caplog.text
