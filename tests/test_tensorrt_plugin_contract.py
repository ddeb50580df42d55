"""TensorRT's Python plugin contract: the anchordetr plugins driven through TensorRT's own plugin layer.

TensorRT's ``tensorrt/plugin`` package (registration, signature validation, ``_TemplatePluginCreator``,
the AOT plugin class, symbolic shapes and launch parameters) is plain Python in the real
``tensorrt-cu13-bindings`` wheels; ``make test`` fetches it for the lowest and the highest TensorRT that
the accepted Torch-TensorRT releases require (``tensorrt_plugin_layers.PINS``). Each plugin variant of
the exported R50-DC5 and R101-C5 graphs (fp16 and fp32, the default range) goes through what a network
build does (``plugin_contract_driver``), over a stand-in of the native module only
(``tensorrt_standin``), with the NumPy that ``make test`` installs.

Proved here: registration and every signature check pass; attributes survive the creator's round trip
exactly; output dtypes and shapes at the range's min, opt, a shape below max, and max are the op's fake
kernel's; formats are linear in the graph's dtypes; the AOT implementation returns PTX whose parameters
are (input pointers, int32 scalars, output pointers), a grid, block and extra scalars equal to the
package's launch contract at every corner with block sizes for the max, also when TensorRT hands
concrete dims for the runtime ones. Not proved: TensorRT's native builder and runtime (how they use
these results), and the kernels running inside an engine (tests/test_tensorrt.py, where TensorRT is).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import H100_SHARED_PER_BLOCK
from tensorrt_plugin_layers import ENV, PINS, plugin_dir

import anchordetr_trt as at
from anchordetr_trt.converters.aot import triton_signature
from anchordetr_trt.converters.specs import PLUGINS, check_node, op_name
from anchordetr_trt.custom_ops.rcda_aggregate import column_buffer_shape, term_strides
from anchordetr_trt.export import export_model

pytestmark = pytest.mark.slow

# (batch, height, width): the default range's min, opt, a shape below its max, and max.
CORNERS = ((1, 320, 320), (1, 800, 800), (3, 704, 1056), (8, 1344, 1344))
MAX = len(CORNERS) - 1
TRT_DTYPES = {torch.float16: "HALF", torch.float32: "FLOAT", torch.bool: "BOOL"}
TORCH_DTYPES = {name: dtype for dtype, name in TRT_DTYPES.items()}
TRITON_DEFAULT_WARPS = 4  # a launch config without num_warps compiles with Triton's default
DRIVER = Path(__file__).with_name("plugin_contract_driver.py")


def layers_root() -> Path:
    root = os.environ.get(ENV)
    if root is None:
        pytest.skip(f"{ENV} is unset: `make test` fetches TensorRT's plugin layers and sets it")
    if not all(plugin_dir(Path(root), version).is_dir() for version in PINS):
        pytest.fail(
            f"{ENV}={root} lacks TensorRT's plugin layers: python tests/tensorrt_plugin_layers.py {root}"
        )
    return Path(root)


def corner_values(program: torch.export.ExportedProgram) -> list[dict]:
    """The value of each of the program's size symbols at each corner, from its images input
    [batch, 3, 32 * height blocks, 32 * width blocks]."""
    images = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "images")
    sizes = images.meta["val"].shape
    envs = []
    for corner in CORNERS:
        env = {}
        for size, value in zip((sizes[0], sizes[2], sizes[3]), corner, strict=True):
            if isinstance(size, torch.SymInt):
                expr = size.node.expr
                (symbol,) = expr.free_symbols
                env[symbol] = value // int(expr.subs(symbol, 1))
        envs.append(env)
    return envs


def graph_cases(variant: str) -> list[dict]:
    """Each distinct plugin call of the exported model, per engine precision: plugin, attributes,
    dtypes, and each input's dims at every corner."""
    torch.manual_seed(0)
    model = at.build_model(at.VARIANTS[variant]).set_fused_ops(True)
    program = export_model(model, min_shape=CORNERS[0], opt_shape=CORNERS[1], max_shape=CORNERS[-1])
    envs = corner_values(program)
    cases = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or op_name(node.target) is None:
            continue
        call = check_node(node)
        dims = {}
        for name, arg in zip(call.spec.tensors, call.tensors, strict=True):
            shape = arg.meta["val"].shape
            dims[name] = [
                [int(d.node.expr.xreplace(env)) if isinstance(d, torch.SymInt) else int(d) for env in envs]
                for d in shape
            ]
        for precision in (torch.float16, torch.float32):
            dtypes = {
                name: TRT_DTYPES[
                    precision if arg.meta["val"].dtype.is_floating_point else arg.meta["val"].dtype
                ]
                for name, arg in zip(call.spec.tensors, call.tensors, strict=True)
            }
            case = {
                "op": call.spec.op,
                "present": [n for n in call.spec.optional if n not in call.spec.absent],
                "attrs": call.attrs,
                "dtypes": dtypes,
                "dims": dims,
            }
            cases[json.dumps(case, sort_keys=True)] = case
    return list(cases.values())


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    found = [case for variant in ("r50-dc5", "r101-c5") for case in graph_cases(variant)]
    assert {PLUGINS[c["op"]].variant(frozenset(c["present"])).name for c in found} == {
        "add_bias_transpose",
        "rcda_aggregate",
        "layer_norm_with_residual",
        "mask2posemb",
        "key_means",
        "self_attention",
    }
    return found


@pytest.fixture(scope="module", params=PINS, ids=[f"tensorrt-{v}" for v in PINS])
def driven(request, cases) -> tuple[list[dict], dict]:
    """The cases and what TensorRT's plugin layer of one version made of them."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the AOT kernels compile for real
    run = subprocess.run(
        [sys.executable, str(DRIVER), str(plugin_dir(layers_root(), request.param)), request.param],
        input=json.dumps({"corners": len(CORNERS), "cases": cases}),
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout)
    assert out["aot_enabled"], "this TensorRT's plugin layer has no AOT plugins"
    return cases, out["results"]


def expected_outputs(spec, case: dict, corner: int) -> tuple[list[tuple[int, ...]], list[str]]:
    """Output shapes and dtypes at a corner from the op's fake kernel (meta tensors), the workspace
    from the kernel's own buffer shape."""
    args = {
        name: torch.empty(
            [d[corner] for d in case["dims"][name]], dtype=TORCH_DTYPES[case["dtypes"][name]], device="meta"
        )
        for name in spec.tensors
    }
    schema = getattr(torch.ops.anchordetr, spec.op).default._schema
    kwargs = {a.name: args.get(a.name, case["attrs"].get(a.name)) for a in schema.arguments}
    outs = getattr(torch.ops.anchordetr, spec.op)(**kwargs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    shapes, dtypes = [tuple(o.shape) for o in outs], [TRT_DTYPES[o.dtype] for o in outs]
    if spec.workspace:
        queries, k_col = args["queries"], args["k_col"]
        shapes.append(column_buffer_shape(k_col.shape[0], queries.shape[1:-1].numel(), k_col.shape[1]))
        dtypes.append(TRT_DTYPES[args["values"].dtype])
    return shapes, dtypes


def test_plugins_register_and_are_created_as_aot_plugins_with_exact_attributes(driven):
    cases, results = driven
    for case, result in zip(cases, results, strict=True):
        assert result["class"] == "_TemplateAOTPlugin", case["op"]
        assert result["attrs"] == case["attrs"] and all(
            type(result["attrs"][k]) is type(v) for k, v in case["attrs"].items()
        )


def test_output_dtypes_shapes_and_formats_at_every_corner(driven):
    cases, results = driven
    for case, result in zip(cases, results, strict=True):
        spec = PLUGINS[case["op"]].variant(frozenset(case["present"]))
        per_corner = [expected_outputs(spec, case, corner) for corner in range(len(CORNERS))]
        assert result["output_types"] == per_corner[0][1], spec.name
        got = [
            [tuple(dims[c] for dims in output) for output in result["output_dims"]]
            for c in range(len(CORNERS))
        ]
        assert got == [shapes for shapes, _ in per_corner], spec.name
        io_types = [case["dtypes"][n] for n in spec.tensors] + result["output_types"]
        assert result["formats"] == [[t, "LINEAR"] for t in io_types], spec.name


def test_launch_parameters_and_kernel_follow_the_launch_contract(driven):
    """Grid, block and extra scalars at every corner are the package's launch contract with blocks for
    the max; the PTX entry takes input pointers, int32 scalars, output pointers; shared memory fits an
    H100 block; TensorRT handing concrete dims for the runtime ones changes nothing."""
    cases, results = driven
    for case, result in zip(cases, results, strict=True):
        spec = PLUGINS[case["op"]].variant(frozenset(case["present"]))
        dtypes = {n: TORCH_DTYPES[case["dtypes"][n]] for n in spec.tensors}
        shapes = [
            {n: tuple(d[c] for d in case["dims"][n]) for n in spec.tensors} for c in range(len(CORNERS))
        ]
        signature, constexprs, options = triton_signature(spec, dtypes, case["attrs"], shapes[MAX])
        scalar_names = [name for name, kind in signature.items() if kind == "i32"]
        launch = result["launch"]
        grids = [(*spec.grid(s, case["attrs"], constexprs), 1, 1)[:3] for s in shapes]
        assert launch["grid"] == [[g[axis] for g in grids] for axis in range(3)], spec.name
        warps = options.get("num_warps", TRITON_DEFAULT_WARPS)
        assert launch["block"] == [
            [32 * warps] * len(CORNERS),
            [1] * len(CORNERS),
            [1] * len(CORNERS),
        ]
        assert len(set(launch["shared_mem"])) == 1 and launch["shared_mem"][0] <= H100_SHARED_PER_BLOCK
        assert launch["extra_args"] == [
            ["INT32", [spec.scalars(s, case["attrs"])[name] for s in shapes]] for name in scalar_names
        ], spec.name
        assert launch["ptx_params"] == (
            ["u64"] * len(spec.tensors) + ["u32"] * len(scalar_names) + ["u64"] * len(spec.outputs)
        ), spec.name
        assert result["launch_concrete_dims"] == launch, spec.name


def test_rcda_aggregate_term_strides_are_the_launchers_at_every_corner(driven):
    """The encoder's calls (4-d queries, terms [B, 1, W, C] and [B, H, 1, C]) and the decoder's (3-d
    queries, terms [1 or B, Lq, C]) both reach TensorRT; the term strides and map width that TensorRT's
    shape expressions evaluate to at each corner are what the op's launcher passes for dense terms of
    those shapes (``rcda_aggregate.term_strides``, 0 along broadcast dims)."""
    cases, results = driven
    ranks = set()
    for case, result in zip(cases, results, strict=True):
        if case["op"] != "rcda_aggregate":
            continue
        spec = PLUGINS["rcda_aggregate"]
        signature, _, _ = triton_signature(
            spec,
            {n: TORCH_DTYPES[case["dtypes"][n]] for n in spec.tensors},
            case["attrs"],
            {n: tuple(d[MAX] for d in case["dims"][n]) for n in spec.tensors},
        )
        extra = dict(
            zip(
                [name for name, kind in signature.items() if kind == "i32"],
                (values for _, values in result["launch"]["extra_args"]),
                strict=True,
            )
        )
        rank = len(case["dims"]["queries"])
        ranks.add(rank)
        for corner in range(len(CORNERS)):
            dims = {n: [d[corner] for d in case["dims"][n]] for n in ("queries", "row_term", "col_term")}
            for term in ("row_term", "col_term"):
                got = tuple(extra[f"{term}_stride_{axis}"][corner] for axis in "byx")
                dense = torch.empty(dims[term], device="meta")
                assert got == term_strides(dense.shape, dense.stride()), (term, dims)
            queries = dims["queries"]
            assert extra["map_width"][corner] == queries[2 if rank == 4 else 1]
    assert ranks == {3, 4}
