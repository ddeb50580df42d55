"""What each ``torch.ops.anchordetr`` op becomes in TensorRT: one ``PluginSpec`` per op, no TensorRT needed.

A spec says which Triton kernel implements the op and how to launch it without PyTorch: the kernel's
pointer parameters (inputs and outputs), its runtime integer parameters as expressions of the input
shapes, its compile-time parameters (block sizes for the largest shapes the engine accepts, and the
op's float attributes, which TensorRT cannot pass at launch: a kernel's runtime parameter given a
value there is compiled in as a constant), the grid, and the output shapes and dtypes. Shape
expressions must work on ints and on TensorRT's symbolic ``ShapeExpr`` alike, so they use only
``+ - * // <`` with the shape on the left (``ShapeExpr`` has no reflected operators).

An optional tensor input (layer_norm's residual) gives one plugin per presence: the kernel is
compiled with the input's pointer fixed to None and its flag constexpr False when it is absent.
Adding an op is adding one entry to ``PLUGINS``.

Why not Torch-TensorRT's generator (pytorch/TensorRT, read at v2.11.0, v2.12.0, v2.13.0 and main
2.14.0a0): ``plugins.custom_op`` is ``generate_plugin`` then ``generate_plugin_converter``.
``generate_plugin`` (py/torch_tensorrt/dynamo/conversion/plugins/_generate_plugin.py) derives the
output shapes by running the op's fake kernel on float32 ``torch.randn`` inputs with symbolic dims,
and registers only a JIT impl. In every version it lacks, for these ops: output dtypes (each output
is ``like()`` the first tensor input: mask2pos and mask2posemb would give bool outputs for float32
ones); non-float inputs (the fake kernels of masked_softmax, mask2pos and mask2posemb refuse a float
mask); ``Tensor?`` arguments ("arg type is not handled": no layer_norm with residual); an AOT
kernel. In 2.11 and 2.12 it also keeps one output of the first input's rank, and binds every
generated shape function through module globals, so the last registered plugin's serves all (the
multi-plugin bug); 2.13 fixes both and passes scalar attributes as numpy arrays. The converter
(``_generate_plugin_converter``) takes the first ``len(input_tensor_names)`` positional arguments
as the tensors (layer_norm has ``eps`` before ``residual``), ignores the node's kwargs, maps one op
to one plugin (no variant per optional input), checks no dtypes, defaults to
``supports_dynamic_shapes=False``, and before 2.13 returns output 0 only. So ``PLUGINS``, ``bind``
and ``check_node`` stay; what upstream does provide, TensorRT's ``tensorrt.plugin`` API, ``qdp``
uses directly.
"""

import dataclasses
import importlib
import itertools
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from anchordetr_trt.errors import InputError

NAMESPACE = "anchordetr"

Shapes = Mapping[str, Sequence[Any]]  # tensor name -> dims (ints or symbolic expressions)
Dtypes = Mapping[str, torch.dtype]
Attrs = Mapping[str, Any]

FLOAT_DTYPES = (torch.float16, torch.float32)
_COMPILE_OPTIONS = ("num_warps", "num_stages")  # launch-config keys that are not kernel parameters


def cdiv(a: Any, b: int) -> Any:
    """Ceiling division with a possibly symbolic ``a`` kept on the left of every operator."""
    return (a + (b - 1)) // b


def prod(dims: Sequence[Any]) -> Any:
    """Product of dims, the first (possibly symbolic) on the left."""
    return math.prod(dims[1:], start=dims[0])


def maximum(a: Any, b: Any) -> Any:
    """max(a, b) from operators alone (``a < b`` is 0 or 1, for ints and for TensorRT shape expressions)."""
    return a + (b - a) * (a < b)


@dataclass(frozen=True)
class PluginSpec:
    """How ``torch.ops.anchordetr.<op>`` runs as one Triton kernel launch inside TensorRT."""

    op: str
    module: str  # anchordetr_trt.custom_ops.<module> holds the kernel and its launch config
    kernel: str
    inputs: tuple[str, ...]  # tensor arguments of the op, schema order
    outputs: tuple[str, ...]
    pointers: Mapping[str, str]  # kernel pointer parameter -> input or output name
    input_dtypes: Mapping[str, tuple[torch.dtype, ...]]  # floating inputs must also share one dtype
    output_dtypes: Callable[[Dtypes], tuple[torch.dtype, ...]]
    output_shapes: Callable[[Shapes, Attrs], tuple[tuple[Any, ...], ...]]
    scalars: Callable[[Shapes, Attrs], dict[str, Any]]  # runtime int32 kernel parameters
    meta: Callable[[ModuleType, Shapes, Dtypes, Attrs], dict[str, Any]]  # constexprs and compile options
    grid: Callable[[Shapes, Attrs, Mapping[str, Any]], tuple[Any, ...]]  # constexprs in the mapping
    # Buffers the kernel reads as another dtype (a bool mask as bytes).
    pointer_dtypes: Mapping[str, torch.dtype] = field(default_factory=dict)
    optional: Mapping[str, str] = field(default_factory=dict)  # optional input -> its HAS_* constexpr
    absent: tuple[str, ...] = ()  # optional inputs this plugin is built without
    # Outputs the kernel writes for itself and reads back, which the op does not return: TensorRT's
    # Python plugins (tensorrt.plugin) get no workspace, so they are plugin outputs that nothing reads.
    workspace: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Plugin name: the op, plus ``_with_<input>`` for each optional input present."""
        present = [n for n in self.optional if n not in self.absent]
        return self.op + "".join(f"_with_{n}" for n in present)

    @property
    def plugin_id(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    def __post_init__(self) -> None:
        if not set(self.workspace) <= set(self.outputs):
            raise ValueError(f"{self.op}: workspace {self.workspace} must name outputs of {self.outputs}")
        if self.outputs[: len(self.returns)] != self.returns:
            raise ValueError(f"{self.op}: workspace outputs must follow the op's outputs, got {self.outputs}")

    @property
    def returns(self) -> tuple[str, ...]:
        """The plugin outputs that are the op's outputs, in order (the workspace left out)."""
        return tuple(n for n in self.outputs if n not in self.workspace)

    @property
    def tensors(self) -> tuple[str, ...]:
        """The plugin's tensor inputs, in schema order."""
        return tuple(n for n in self.inputs if n not in self.absent)

    def variant(self, present: frozenset[str]) -> "PluginSpec":
        return dataclasses.replace(self, absent=tuple(n for n in self.optional if n not in present))

    def variants(self) -> Iterator["PluginSpec"]:
        for k in range(len(self.optional) + 1):
            for present in itertools.combinations(self.optional, k):
                yield self.variant(frozenset(present))

    def op_module(self) -> ModuleType:
        return importlib.import_module(f"anchordetr_trt.custom_ops.{self.module}")

    def kernel_fn(self) -> Any:
        return getattr(self.op_module(), self.kernel)

    def attrs(self) -> dict[str, type]:
        """Non-tensor arguments of the op (plugin attributes) in schema order, with their Python type."""
        return {
            arg.name: _ATTR_TYPES[str(arg.type)]
            for arg in op_schema(self.op).arguments
            if arg.name not in self.inputs
        }

    def launch_meta(
        self, max_shapes: Shapes, dtypes: Dtypes, attrs: Attrs
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(constexprs, compile options) of a kernel that serves every input up to ``max_shapes``."""
        meta = self.meta(self.op_module(), max_shapes, dtypes, attrs)
        options = {key: meta.pop(key) for key in _COMPILE_OPTIONS if key in meta}
        for name, flag in self.optional.items():
            meta[flag] = name not in self.absent
        for pointer, tensor in self.pointers.items():
            if tensor in self.absent:
                meta[pointer] = None
        return meta, options

    def all_dtypes(self, dtypes: Dtypes) -> dict[str, torch.dtype]:
        """Dtypes of the plugin's inputs and outputs as the kernel reads and writes them."""
        named = {**dtypes, **dict(zip(self.outputs, self.output_dtypes(dtypes), strict=True))}
        return {name: self.pointer_dtypes.get(name, dtype) for name, dtype in named.items()}

    def check_dtypes(self, dtypes: Dtypes) -> None:
        """Raise InputError unless the plugin has a kernel for these input dtypes (inputs left out of
        ``dtypes`` are not checked)."""
        for name in dtypes:
            if dtypes[name] not in self.input_dtypes[name]:
                allowed = ", ".join(_dtype_name(d) for d in self.input_dtypes[name])
                raise InputError(
                    f"{self.op}: no TensorRT plugin for {name} of dtype {_dtype_name(dtypes[name])} (supported: {allowed})"
                )
        floats = {n: _dtype_name(d) for n, d in dtypes.items() if d.is_floating_point}
        if len(set(floats.values())) > 1:
            raise InputError(f"{self.op}: the plugin needs one float dtype for all inputs, got {floats}")


@dataclass(frozen=True)
class BoundCall:
    """One call of an op: its plugin, the plugin's tensor inputs (schema order) and attributes."""

    spec: PluginSpec
    tensors: tuple[Any, ...]
    attrs: dict[str, Any]


def bind(op: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> BoundCall:
    """Bind the arguments of an ``anchordetr`` op call (as FX or Torch-TensorRT hand them over) to its
    plugin: defaults filled in, the variant chosen by which optional tensors are given, attributes
    coerced to the exact Python type TensorRT serializes."""
    spec = plugin_for(op)
    arguments = op_schema(op).arguments
    if len(args) > len(arguments):
        raise InputError(f"{op}: {len(args)} positional arguments, the op takes {len(arguments)}")
    unknown = set(kwargs) - {arg.name for arg in arguments[len(args) :]}
    if unknown:
        raise InputError(f"{op}: unexpected or repeated arguments {sorted(unknown)}")
    values = {}
    for position, arg in enumerate(arguments):
        if position < len(args):
            values[arg.name] = args[position]
        elif arg.name in kwargs:
            values[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            values[arg.name] = arg.default_value
        else:
            raise InputError(f"{op}: missing argument {arg.name!r}")
    spec = spec.variant(frozenset(n for n in spec.optional if values[n] is not None))
    attrs = {name: coerce_attr(op, name, kind, values[name]) for name, kind in spec.attrs().items()}
    return BoundCall(spec, tuple(values[name] for name in spec.tensors), attrs)


def op_name(target: object) -> str | None:
    """The op name of an FX node target that is an ``anchordetr`` op overload, else None."""
    name = getattr(getattr(target, "_schema", None), "name", "")
    return name.removeprefix(f"{NAMESPACE}::") if name.startswith(f"{NAMESPACE}::") else None


def check_node(node: torch.fx.Node) -> BoundCall:
    """Bind an ``anchordetr`` op node of an exported graph to its plugin; raise InputError unless the
    plugin has a kernel for its tensors' dtypes (read from the nodes' metadata where it is recorded)."""
    op = op_name(node.target)
    if op is None:
        raise InputError(f"{node.name} calls {node.target}, not a torch.ops.{NAMESPACE} op")
    call = bind(op, node.args, node.kwargs)
    values = {
        name: getattr(arg, "meta", {}).get("val")
        for name, arg in zip(call.spec.tensors, call.tensors, strict=True)
    }
    call.spec.check_dtypes(
        {name: value.dtype for name, value in values.items() if isinstance(value, torch.Tensor)}
    )
    return call


def plugin_for(op: str) -> PluginSpec:
    try:
        return PLUGINS[op]
    except KeyError:
        raise InputError(
            f"no TensorRT plugin for torch.ops.{NAMESPACE}.{op}: add a PluginSpec to PLUGINS"
        ) from None


def all_plugins() -> list[PluginSpec]:
    """Every plugin to register: each op's spec in each of its variants."""
    return [variant for spec in PLUGINS.values() for variant in spec.variants()]


def op_schema(op: str) -> torch.FunctionSchema:
    importlib.import_module(f"anchordetr_trt.custom_ops.{plugin_for(op).module}")
    return getattr(getattr(torch.ops, NAMESPACE), op).default._schema


_ATTR_TYPES = {"float": float, "int": int, "bool": bool}


def coerce_attr(op: str, name: str, kind: type, value: Any) -> Any:
    """``value`` as the exact Python ``kind`` of the op's attribute ``name`` (an int for a float attribute
    becomes a float; a bool is no int); InputError for a non-finite float or a non-integer int."""
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"{op}: attribute {name} must be finite, got {value}")
        return value
    if kind is bool:
        return bool(value)
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise InputError(f"{op}: attribute {name} must be an int, got {value!r}") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _mask2posemb_meta(module: ModuleType, s: Shapes, d: Dtypes, a: Attrs) -> dict[str, Any]:
    _, meta = module.mask2posemb_launch_config(*s["mask"], a["num_pos_feats"])
    return {**meta, "log2_temperature": math.log2(a["temperature"])}  # as the op's launcher passes it


def _key_means_meta(module: ModuleType, s: Shapes, d: Dtypes, a: Attrs) -> dict[str, Any]:
    if not module.runs_kernel(*s["src"][1:]):
        raise InputError(
            f"key_means: feature maps {list(s['src'][1:3])} (max_shape over the backbone's stride) are past "
            f"the kernel's limits (H * W * C < 2**31, H + W <= {module.MAX_LINES}): compile a smaller max_shape"
        )
    return module.key_means_launch_config(*s["src"])[1]  # the same for every size


def _dot_precision(dtype: torch.dtype) -> str:
    """The kernels' rule for their products' precision (``custom_ops._common.dot_precision``)."""
    return importlib.import_module("anchordetr_trt.custom_ops._common").dot_precision(dtype)


def _self_attention_meta(module: ModuleType, s: Shapes, d: Dtypes, a: Attrs) -> dict[str, Any]:
    batch, length, channels = s["packed"]
    head_dim, batch_heads = channels // 3 // a["num_heads"], batch * a["num_heads"]
    if head_dim > module.MAX_HEAD_DIM:  # the model's, whatever max_shape is
        raise InputError(
            f"self_attention: heads of {head_dim} channels are past the kernel's {module.MAX_HEAD_DIM}: "
            f"use the inductor backend for this model, or a config with more heads"
        )
    if not module.fits_kernel(head_dim, batch_heads, length * channels):
        raise InputError(
            f"self_attention: {batch} images of {length} tokens and {channels // 3} channels (max_shape's) "
            f"are past the kernel's limits (batch * heads <= {module.MAX_GRID_Y}, L * 3C < 2**31): "
            f"compile a smaller max_shape batch"
        )
    # No SM count: one kernel, compiled ahead of time, serves every batch of the engine's range, so it
    # keeps BLOCK_M rather than a block picked for one grid size.
    _, meta = module.self_attention_launch_config(length, batch_heads, head_dim)
    # The scale, a float, is compiled in (TensorRT passes no float at launch).
    return {
        **meta,
        "DOT_PRECISION": _dot_precision(d["packed"]),
        "scale_log2": module.score_factor(a["scale"]),
    }


def _self_attention_scalars(s: Shapes, a: Attrs) -> dict[str, Any]:
    _, length, channels = s["packed"]
    terms = s["position_terms"]
    module = importlib.import_module("anchordetr_trt.custom_ops.self_attention")
    stride_b, stride_l = module.term_strides(terms, _dense_strides(terms))
    return {
        "length": length,
        "heads": a["num_heads"],
        "head_dim": channels // 3 // a["num_heads"],
        "term_stride_b": stride_b,
        "term_stride_l": stride_l,
    }


def _rcda_module() -> ModuleType:
    return importlib.import_module("anchordetr_trt.custom_ops.rcda_aggregate")


_RCDA_INPUTS = ("queries", "row_term", "col_term", "k_col", "mask_col", "k_row", "mask_row", "values")


def _rcda_aggregate_meta(module: ModuleType, s: Shapes, d: Dtypes, a: Attrs) -> dict[str, Any]:
    n, _, head_dim = s["k_col"]
    width, dtype = s["k_row"][1], d["values"]
    limit = module.max_kernel_width(dtype.itemsize, head_dim)
    if width > limit:
        raise InputError(
            f"rcda_aggregate: feature maps {width} wide (max_shape's width over the backbone's stride) pass "
            f"the kernel's limit of {limit} in {_dtype_name(dtype)}: compile with a smaller max_shape width"
        )
    queries = prod(s["queries"][1:-1])
    # No SM count: one kernel, compiled ahead of time, serves every batch and map of the engine's range,
    # so it keeps BLOCK_Q rather than a block picked for one grid size.
    _, meta = module.rcda_aggregate_launch_config(queries, n, width, head_dim, dtype.itemsize)
    # scale, a float, is compiled in; value_channel is a runtime int32 (``_rcda_aggregate_scalars``),
    # so that the decoder's layers, each with its own, share one kernel.
    return {**meta, "DOT_PRECISION": _dot_precision(dtype), "scale": a["scale"]}


def _rcda_aggregate_scalars(s: Shapes, a: Attrs) -> dict[str, Any]:
    queries = s["queries"]
    row_b, row_y, row_x = _term_strides(s["row_term"])
    col_b, col_y, col_x = _term_strides(s["col_term"])
    return {
        "num_queries": prod(queries[1:-1]),
        "heads": s["k_col"][0] // queries[0],
        "height": s["k_col"][1],
        "width": s["k_row"][1],
        "head_dim": s["k_col"][2],
        "query_channels": queries[-1],
        "map_width": queries[2] if len(queries) == 4 else queries[1],  # the map's, or all Lq tokens
        "row_term_stride_b": row_b,
        "row_term_stride_y": row_y,
        "row_term_stride_x": row_x,
        "col_term_stride_b": col_b,
        "col_term_stride_y": col_y,
        "col_term_stride_x": col_x,
        "value_channels": s["values"][3],
        "value_channel": a["value_channel"],
    }


def _term_strides(term: Sequence[Any]) -> tuple[Any, Any, Any]:
    """The launcher's rule (``rcda_aggregate.term_strides``) on TensorRT's dense buffer of ``term``."""
    return _rcda_module().term_strides(term, _dense_strides(term))


def _dense_strides(shape: Sequence[Any]) -> list[Any]:
    """The element strides of TensorRT's dense buffer of ``shape``."""
    return [*(prod(shape[dim + 1 :]) for dim in range(len(shape) - 1)), 1]


PLUGINS: dict[str, PluginSpec] = {
    spec.op: spec
    for spec in (
        PluginSpec(
            op="masked_softmax",
            module="masked_softmax",
            kernel="masked_softmax_kernel",
            inputs=("scores", "key_padding_mask"),
            outputs=("out",),
            pointers={"scores_ptr": "scores", "mask_ptr": "key_padding_mask", "out_ptr": "out"},
            pointer_dtypes={"key_padding_mask": torch.uint8},  # a bool buffer, read as bytes
            input_dtypes={"scores": FLOAT_DTYPES, "key_padding_mask": (torch.bool,)},
            output_dtypes=lambda d: (d["scores"],),
            output_shapes=lambda s, a: (tuple(s["scores"]),),
            scalars=lambda s, a: {
                "num_rows": prod(s["scores"][:3]),
                "rows_per_batch": s["scores"][1] * s["scores"][2],
                "row_length": s["scores"][3],
            },
            meta=lambda m, s, d, a: m.masked_softmax_launch_config(prod(s["scores"][:3]), s["scores"][3])[1],
            grid=lambda s, a, meta: (cdiv(prod(s["scores"][:3]), meta["BLOCK_R"]),),
        ),
        PluginSpec(
            op="layer_norm",
            module="layer_norm",
            kernel="layer_norm_kernel",
            inputs=("x", "weight", "bias", "residual"),
            outputs=("out",),
            pointers={
                "x_ptr": "x",
                "residual_ptr": "residual",
                "weight_ptr": "weight",
                "bias_ptr": "bias",
                "out_ptr": "out",
            },
            optional={"residual": "HAS_RESIDUAL"},
            input_dtypes=dict.fromkeys(("x", "weight", "bias", "residual"), FLOAT_DTYPES),
            output_dtypes=lambda d: (d["x"],),
            output_shapes=lambda s, a: (tuple(s["x"]),),
            scalars=lambda s, a: {"num_rows": prod(s["x"][:-1]), "row_length": s["x"][-1]},
            meta=lambda m, s, d, a: {
                **m.layer_norm_launch_config(prod(s["x"][:-1]), s["x"][-1])[1],
                "eps": a["eps"],
            },
            grid=lambda s, a, meta: (cdiv(prod(s["x"][:-1]), meta["BLOCK_R"]),),
        ),
        PluginSpec(
            op="add_bias_transpose",
            module="add_bias_transpose",
            kernel="add_bias_transpose_kernel",
            inputs=("x", "bias"),
            outputs=("out",),
            pointers={"x_ptr": "x", "bias_ptr": "bias", "out_ptr": "out"},
            input_dtypes=dict.fromkeys(("x", "bias"), FLOAT_DTYPES),
            output_dtypes=lambda d: (d["x"],),
            output_shapes=lambda s, a: (
                (s["x"][0] * a["num_heads"], s["x"][1], s["x"][2] // a["num_heads"]),
            ),
            scalars=lambda s, a: {
                "length": s["x"][1],
                "channels": s["x"][2],
                "head_dim": s["x"][2] // a["num_heads"],
            },
            meta=lambda m, s, d, a: {**m.add_bias_transpose_launch_config(*s["x"])[1], "scale": a["scale"]},
            grid=lambda s, a, meta: (
                cdiv(s["x"][1], meta["BLOCK_L"]),
                cdiv(s["x"][2], meta["BLOCK_C"]),
                s["x"][0],
            ),
        ),
        PluginSpec(
            op="mask2pos",
            module="mask2pos",
            kernel="mask2pos_kernel",
            inputs=("mask",),
            outputs=("pos_y", "pos_x"),
            pointers={"mask_ptr": "mask", "pos_y_ptr": "pos_y", "pos_x_ptr": "pos_x"},
            pointer_dtypes={"mask": torch.uint8},  # a bool buffer, read as bytes
            input_dtypes={"mask": (torch.bool,)},
            output_dtypes=lambda d: (torch.float32, torch.float32),
            output_shapes=lambda s, a: ((s["mask"][0], s["mask"][1]), (s["mask"][0], s["mask"][2])),
            scalars=lambda s, a: {"height": s["mask"][1], "width": s["mask"][2]},
            meta=lambda m, s, d, a: m.mask2pos_launch_config(*s["mask"])[1],
            grid=lambda s, a, meta: (
                cdiv(maximum(s["mask"][1], s["mask"][2]), meta["BLOCK_L"]),
                s["mask"][0],
                2,
            ),
        ),
        PluginSpec(
            op="mask2posemb",
            module="mask2pos",
            kernel="mask2posemb_kernel",
            inputs=("mask",),
            outputs=("emb_y", "emb_x"),
            pointers={"mask_ptr": "mask", "emb_y_ptr": "emb_y", "emb_x_ptr": "emb_x"},
            pointer_dtypes={"mask": torch.uint8},
            input_dtypes={"mask": (torch.bool,)},
            output_dtypes=lambda d: (torch.float32, torch.float32),
            output_shapes=lambda s, a: (
                (s["mask"][0], s["mask"][1], a["num_pos_feats"]),
                (s["mask"][0], s["mask"][2], a["num_pos_feats"]),
            ),
            scalars=lambda s, a: {
                "height": s["mask"][1],
                "width": s["mask"][2],
                "num_feats": a["num_pos_feats"],
            },
            meta=_mask2posemb_meta,
            grid=lambda s, a, meta: (
                cdiv(maximum(s["mask"][1], s["mask"][2]), meta["BLOCK_L"]),
                s["mask"][0],
                2 * cdiv(a["num_pos_feats"], meta["BLOCK_F"]),
            ),
        ),
        PluginSpec(
            op="rcda_aggregate",
            module="rcda_aggregate",
            kernel="rcda_aggregate_kernel",
            inputs=_RCDA_INPUTS,
            outputs=("out", "probs_col"),
            workspace=("probs_col",),
            pointers={
                **{f"{name}_ptr": name for name in _RCDA_INPUTS},
                "out_ptr": "out",
                "probs_col_ptr": "probs_col",
            },
            pointer_dtypes={"mask_col": torch.uint8, "mask_row": torch.uint8},  # bool buffers, read as bytes
            input_dtypes={
                **dict.fromkeys(
                    ("queries", "row_term", "col_term", "k_col", "k_row", "values"), FLOAT_DTYPES
                ),
                "mask_col": (torch.bool,),
                "mask_row": (torch.bool,),
            },
            output_dtypes=lambda d: (d["queries"], d["values"]),
            output_shapes=lambda s, a: (
                (*s["queries"][:-1], s["row_term"][-1]),
                _rcda_module().column_buffer_shape(s["k_col"][0], prod(s["queries"][1:-1]), s["k_col"][1]),
            ),
            scalars=_rcda_aggregate_scalars,
            meta=_rcda_aggregate_meta,
            grid=lambda s, a, meta: (cdiv(prod(s["queries"][1:-1]), meta["BLOCK_Q"]), s["k_col"][0]),
        ),
        PluginSpec(
            op="key_means",
            module="key_means",
            kernel="key_means_kernel",
            inputs=("src", "posemb_row", "posemb_col"),
            outputs=("key_row", "key_col"),
            pointers={
                "src_ptr": "src",
                "posemb_row_ptr": "posemb_row",
                "posemb_col_ptr": "posemb_col",
                "key_row_ptr": "key_row",
                "key_col_ptr": "key_col",
            },
            input_dtypes=dict.fromkeys(("src", "posemb_row", "posemb_col"), FLOAT_DTYPES),
            output_dtypes=lambda d: (d["src"], d["src"]),
            output_shapes=lambda s, a: (
                (s["src"][0], s["src"][2], s["src"][3]),
                (s["src"][0], s["src"][1], s["src"][3]),
            ),
            scalars=lambda s, a: {"height": s["src"][1], "width": s["src"][2], "channels": s["src"][3]},
            meta=_key_means_meta,
            grid=lambda s, a, meta: (
                s["src"][0],
                s["src"][1] + s["src"][2],
                cdiv(s["src"][3], meta["BLOCK_C"]),
            ),
        ),
        PluginSpec(
            op="self_attention",
            module="self_attention",
            kernel="self_attention_kernel",
            inputs=("packed", "position_terms"),
            outputs=("out",),
            pointers={"packed_ptr": "packed", "term_ptr": "position_terms", "out_ptr": "out"},
            input_dtypes=dict.fromkeys(("packed", "position_terms"), FLOAT_DTYPES),
            output_dtypes=lambda d: (d["packed"],),
            output_shapes=lambda s, a: ((s["packed"][0], s["packed"][1], s["packed"][2] // 3),),
            scalars=_self_attention_scalars,
            meta=_self_attention_meta,
            grid=lambda s, a, meta: (
                cdiv(s["packed"][1], meta["BLOCK_M"]),
                s["packed"][0] * a["num_heads"],
            ),
        ),
    )
}
