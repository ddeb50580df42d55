"""The fused ops against their PyTorch reference: one suite, parametrized over ops.

The ops, their cases and tolerances live in ``anchordetr_trt.custom_ops.cases`` (``anchordetr-trt
check`` runs the GPU cases with the same check). On CPU the Triton kernels run under the interpreter
(``TRITON_INTERPRET=1``, as ``make test`` sets) on small shapes; ``@pytest.mark.gpu`` tests run them
compiled at AnchorDETR's real shapes (DC5 800x800: a 50x50 feature map, 8 heads, 900 decoder and 2500
encoder queries, C = 256). Inputs are fresh random ones per test (the seed is printed on failure);
outputs are pre-filled with NaN so that an element a kernel forgets to write fails the comparison.
"""

import contextlib
import importlib
import itertools
import json
import random
import re
from types import ModuleType

import pytest
import torch
from conftest import needs_interpreter
from torch import Tensor, nn

from anchordetr_trt.backends import warm
from anchordetr_trt.custom_ops import (
    add_bias_transpose,
    fused,
    key_means,
    layer_norm,
    mask2pos,
    rcda_aggregate,
    reference,
    self_attention,
)
from anchordetr_trt.custom_ops.cases import (
    BF16,
    F16,
    F32,
    OP_CASES,
    as_tuple,
    assert_matches,
    image_mask,
    op_cases,
    padding,
    rcda_aggregate_inputs,
    run_launcher,
    self_attention_inputs,
)
from anchordetr_trt.errors import InputError
from anchordetr_trt.spec import SIZE_MULTIPLE, CompileSpec


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    print(f"torch seed {seed}")  # shown by pytest when the test fails


def cases(gpu: bool = False, interpreted: bool = False):
    return [
        pytest.param(spec, case, dtype, id=f"{spec.name}-{name}-{str(dtype).removeprefix('torch.')}")
        for spec in OP_CASES
        for name, case in (spec.gpu_cases if gpu else spec.cases).items()
        for dtype in spec.dtypes
        if not (gpu and dtype is BF16)  # bfloat16 on the GPU: covered by test_opcheck_cuda
        and not (interpreted and dtype in spec.not_interpreted)
    ]


# ---------------------------------------------------------------------------------------------------
# Kernels under the interpreter (CPU)


@needs_interpreter
@pytest.mark.parametrize(("spec", "case", "dtype"), cases(interpreted=True))
def test_triton_matches_reference(spec, case, dtype):
    run_launcher(spec, spec.make_inputs(case, dtype, "cpu"), dtype)


@needs_interpreter
@pytest.mark.parametrize("spec", OP_CASES, ids=lambda spec: spec.name)
def test_kernel_serves_any_size_up_to_its_blocks(spec, monkeypatch):
    """A kernel built for larger sizes (blocks and grid of 4x the lengths, as for a TensorRT engine's
    maximum shape) is exact on smaller inputs: extra lanes and programs write nothing."""
    name = f"{spec.name}_launch_config"
    config = getattr(spec.module, name)
    monkeypatch.setattr(spec.module, name, lambda *sizes, **options: config(*spec.widen(*sizes), **options))
    dtype = spec.dtypes[0]
    args = spec.first_inputs(dtype, "cpu")
    run_launcher(spec, args, dtype)


# ---------------------------------------------------------------------------------------------------
# The registered ops (CPU: their reference path)


def spec_dtypes(dtypes: tuple) -> list:
    """(spec, dtype) pairs: each float op with ``dtypes``, each mask op once."""
    return [
        pytest.param(spec, dtype, id=f"{spec.name}-{str(dtype).removeprefix('torch.')}")
        for spec in OP_CASES
        for dtype in (dtypes if spec.dtypes != (None,) else (None,))
    ]


# The op's CPU body is the reference: one case per op and dtype checks the dispatch (the reference
# itself against the official model's outputs in test_model, the kernels against it below).
@pytest.mark.parametrize(("spec", "dtype"), spec_dtypes((F32, F16, BF16)))
def test_op_on_cpu_is_the_reference(spec, dtype):
    args = spec.first_inputs(dtype, "cpu")
    for got, expected in zip(as_tuple(spec.op(*args)), as_tuple(spec.reference(*args)), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize(("spec", "dtype"), spec_dtypes((F32, F16)))
def test_opcheck(spec, dtype):
    torch.library.opcheck(spec.op.default, spec.first_inputs(dtype, "cpu"))


def fused_calls(
    scores,
    key_mask,
    x,
    weight,
    bias,
    residual,
    projection,
    proj_bias,
    mask,
    queries,
    row_term,
    col_term,
    k_col,
    mask_col,
    k_row,
    values,
    posemb_row,
    posemb_col,
    packed,
    position_terms,
):
    """Every fused op once, through the wrappers the model calls."""
    probs = fused.masked_softmax(scores, key_mask)
    normed = fused.layer_norm(x, weight, bias, 1e-5, residual)
    heads = fused.add_bias_transpose(projection, proj_bias, 2, 0.5)
    pos_y, pos_x = fused.mask2pos(mask)
    emb_y, emb_x = fused.mask2posemb(mask, 16, 10000.0)
    aggregated = fused.rcda_aggregate(
        queries, row_term, col_term, k_col, mask_col, k_row, key_mask, values, 8, 0.5
    )
    key_row, key_col = fused.key_means(values, posemb_row, posemb_col)
    attended = fused.self_attention(packed, position_terms, 2, 0.5)
    return probs, normed, heads, pos_y, pos_x, emb_y, emb_x, aggregated, key_row, key_col, attended


def fused_example(batch: int, width: int) -> tuple:
    x = torch.randn(batch, width, 8)
    return (
        torch.randn(batch, 2, 5, width),
        padding(batch, width, "all", "cpu"),
        x,
        torch.randn(8),
        torch.randn(8),
        torch.randn_like(x),
        torch.randn(batch, width, 8),
        torch.randn(8),
        image_mask(batch, 6, width, "tail", "cpu"),
        torch.randn(batch, 5, 16),  # 2 heads of 4: row and column queries
        torch.randn(1, 5, 8),
        torch.randn(batch, 5, 8),
        torch.randn(batch * 2, 3, 4),
        padding(batch, 3, "all", "cpu"),
        torch.randn(batch * 2, width, 4),
        torch.randn(batch, 3, width, 16),  # the values from channel 8; key_means' map
        torch.randn(batch, width, 16),
        torch.randn(batch, 3, 16),
        torch.randn(batch, width, 12),  # self-attention: 2 heads of 2
        torch.randn(1, width, 8),
    )


class FusedCalls(nn.Module):
    def forward(self, *args):
        return fused_calls(*args)


def fused_op_names(graph) -> list[str]:
    """Sorted names of the ``anchordetr`` ops that ``graph`` calls."""
    return sorted(
        match[1]
        for node in graph.nodes
        if (match := re.search(r"anchordetr(?:\.|::)(\w+)", str(node.target)))
    )


FUSED_OPS = sorted(spec.name for spec in OP_CASES)


def test_export_keeps_each_op_as_one_node():
    batch, width = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("width", min=2, max=64)
    dims = [{0: batch, 3: width}, {0: batch, 1: width}, {0: batch, 1: width}, None, None]
    dims += [{0: batch, 1: width}, {0: batch, 1: width}, None, {0: batch, 2: width}]
    dims += [{0: batch}, None, {0: batch}, {0: 2 * batch}, {0: batch}]
    dims += [{0: 2 * batch, 1: width}, {0: batch, 2: width}, {0: batch, 1: width}, {0: batch}]
    dims += [{0: batch, 1: width}, {1: width}]
    exported = torch.export.export(FusedCalls(), fused_example(3, 7), dynamic_shapes=(tuple(dims),))
    assert fused_op_names(exported.graph) == FUSED_OPS
    other = [
        n.target
        for n in exported.graph.nodes
        if n.op == "call_function" and "anchordetr" not in str(n.target)
    ]
    assert all("getitem" in str(target) for target in other), f"ops outside the fused ones: {other}"
    example = fused_example(5, 11)  # another batch and width: nothing was specialized
    for got, expected in zip(exported.module()(*example), fused_calls(*example), strict=True):
        assert torch.equal(got, expected)


def test_torch_compile_keeps_each_op_as_one_node():
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module.graph)
        return graph_module

    compiled = torch.compile(fused_calls, backend=record, fullgraph=True, dynamic=True)
    example = fused_example(2, 9)
    for got, expected in zip(compiled(*example), fused_calls(*example), strict=True):
        assert torch.equal(got, expected)
    assert len(graphs) == 1
    assert fused_op_names(graphs[0]) == FUSED_OPS


# ---------------------------------------------------------------------------------------------------
# Bad inputs: a clear InputError from the op, its fake (tracing) and its launcher


def bad_inputs() -> list:
    """(op, args, message) of inputs each op must reject; each is tried on the op, its fake (meta
    tensors, as while tracing) and its launcher."""
    scores, key_mask = torch.randn(2, 3, 4, 5), torch.zeros(2, 5, dtype=torch.bool)
    packed, terms = torch.randn(2, 4, 12), torch.randn(1, 4, 8)  # self-attention: 2 heads of 2
    x, weight, bias = torch.randn(2, 4, 8), torch.randn(8), torch.randn(8)
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    rcda = {
        "queries": torch.randn(2, 5, 16),  # 2 heads of 4
        "row_term": torch.randn(1, 5, 8),
        "col_term": torch.randn(2, 5, 8),
        "k_col": torch.randn(4, 3, 4),
        "mask_col": torch.zeros(2, 3, dtype=torch.bool),
        "k_row": torch.randn(4, 6, 4),
        "mask_row": torch.zeros(2, 6, dtype=torch.bool),
        "values": torch.randn(2, 3, 6, 16),
        "value_channel": 8,
        "scale": 0.5,
    }

    def rcda_with(**changed) -> tuple:
        return tuple((rcda | changed).values())

    src, posemb_row, posemb_col = torch.randn(2, 3, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 3, 8)

    cases = [
        ("masked_softmax", (scores[0], key_mask), "must be 4-d"),
        ("masked_softmax", (scores.int(), key_mask), "dtype torch.int32"),
        ("masked_softmax", (scores, key_mask.float()), "dtype torch.float32, expected one of bool"),
        ("masked_softmax", (scores, key_mask[:1]), r"shape\[0\] \(batch\) is 1 but must be 2"),
        ("masked_softmax", (scores, key_mask[:, :3]), r"shape\[1\] \(keys\) is 3 but must be 5"),
        ("masked_softmax", (scores, key_mask.to("meta")), "different devices"),
        (
            "layer_norm",
            (x, weight[:5], bias, 1e-5, None),
            r"weight.shape\[0\] \(channels\) is 5 but must be 8",
        ),
        ("layer_norm", (x, weight[None], bias, 1e-5, None), "weight must be 1-d"),
        ("layer_norm", (x, weight, bias, 1e-5, x[:1]), "residual must have shape"),
        ("layer_norm", (x, weight, bias, 1e-5, x.half()), "residual has dtype torch.float16"),
        ("layer_norm", (x, weight, bias.half(), 1e-5, None), "share one dtype"),
        ("layer_norm", (x, weight, bias, -1.0, None), "eps must be"),
        ("layer_norm", (x, weight.to("meta"), bias, 1e-5, None), "different devices"),
        ("add_bias_transpose", (x[0], bias, 2, 1.0), "must be 3-d"),
        ("add_bias_transpose", (x, bias[:4], 2, 1.0), r"bias.shape\[0\] \(channels\) is 4 but must be 8"),
        ("add_bias_transpose", (x, bias, 3, 1.0), "not divisible by num_heads 3"),
        ("add_bias_transpose", (x, bias, 0, 1.0), "num_heads must be a positive int"),
        ("add_bias_transpose", (x.half(), bias, 2, 1.0), "bias has dtype torch.float32"),
        ("add_bias_transpose", (x, bias.to("meta"), 2, 1.0), "different devices"),
        ("mask2pos", (mask[0],), "must be 3-d"),
        ("mask2pos", (mask.float(),), "expected one of bool"),
        ("mask2pos", (mask[:, :, :0],), "needs H, W >= 1"),
        ("mask2posemb", (mask, 15, 10000.0), "positive even int"),
        ("mask2posemb", (mask, 16, 0.0), "temperature must be a positive float"),
        ("rcda_aggregate", rcda_with(values=rcda["values"][0]), "values must be 4-d"),
        ("rcda_aggregate", rcda_with(queries=rcda["queries"][0]), "queries must be 3-d"),
        ("rcda_aggregate", rcda_with(row_term=rcda["row_term"][0]), "row_term must be 3-d"),
        ("rcda_aggregate", rcda_with(col_term=rcda["col_term"].half()), "share one dtype"),
        (
            "rcda_aggregate",
            rcda_with(row_term=rcda["row_term"][..., :4]),
            r"row_term.shape\[-1\] \(C = heads \* D\) is 4",
        ),
        (
            "rcda_aggregate",
            rcda_with(col_term=rcda["col_term"][:, :4]),
            r"col_term.shape\[1\] is 4, which does not broadcast",
        ),
        ("rcda_aggregate", rcda_with(queries=rcda["queries"][..., :12]), "fewer than the 2 \\* C = 16"),
        (
            "rcda_aggregate",
            rcda_with(value_channel=9),
            "value_channel 9 \\+ C = 8 passes values' 16 channels",
        ),
        ("rcda_aggregate", rcda_with(value_channel=-1), "value_channel must be an int >= 0"),
        ("rcda_aggregate", rcda_with(scale=float("nan")), "scale must be a finite float"),
        (
            "rcda_aggregate",
            rcda_with(k_col=rcda["k_col"][:, :2]),
            r"values.shape\[1\] \(H\) is 3 but must be 2",
        ),
        (
            "rcda_aggregate",
            rcda_with(k_row=rcda["k_row"][:, :5]),
            r"values.shape\[2\] \(W\) is 6 but must be 5",
        ),
        (
            "rcda_aggregate",
            rcda_with(k_row=rcda["k_row"][..., :3]),
            r"k_row.shape\[2\] \(D\) is 3 but must be 4",
        ),
        ("rcda_aggregate", rcda_with(mask_row=rcda["mask_row"].float()), "mask_row has dtype torch.float32"),
        ("rcda_aggregate", rcda_with(mask_col=rcda["mask_col"].float()), "mask_col has dtype torch.float32"),
        ("rcda_aggregate", rcda_with(mask_row=rcda["mask_row"][:, :5]), r"mask_row.shape\[1\] \(W\) is 5"),
        ("rcda_aggregate", rcda_with(mask_col=rcda["mask_col"][:, :2]), r"mask_col.shape\[1\] \(H\) is 2"),
        (
            "rcda_aggregate",
            rcda_with(mask_col=rcda["mask_col"][:1]),
            r"mask_col.shape\[0\] \(B\) is 1 but must be 2",
        ),
        (
            "rcda_aggregate",
            rcda_with(k_col=rcda["k_col"][:3], k_row=rcda["k_row"][:3]),
            "not a multiple of the batch 2",
        ),
        ("rcda_aggregate", rcda_with(values=rcda["values"].to("meta")), "different devices"),
        ("self_attention", (packed[0], terms, 2, 0.5), "packed must be 3-d"),
        ("self_attention", (packed, terms.half(), 2, 0.5), "share one dtype"),
        ("self_attention", (packed[..., :10], terms, 2, 0.5), "packed has 10 channels, not 3 \\* C"),
        ("self_attention", (packed, terms[..., :6], 2, 0.5), r"position_terms.shape\[2\] \(2C\) is 6"),
        ("self_attention", (packed, terms[:, :3], 2, 0.5), r"position_terms.shape\[1\] \(L\) is 3"),
        ("self_attention", (packed, terms.expand(3, -1, -1), 2, 0.5), "does not broadcast to the batch 2"),
        ("self_attention", (packed, terms, 0, 0.5), "num_heads must be an int >= 1"),
        ("self_attention", (packed, terms, 2, float("inf")), "scale must be a finite float"),
        # The kernel takes the max of unscaled scores: a positive scale, normal in float32.
        ("self_attention", (packed, terms, 2, -0.5), "scale must be a finite float of at least 1e-38"),
        ("self_attention", (packed, terms, 2, 1e-46), "scale must be a finite float of at least 1e-38"),
        ("self_attention", (packed, terms.to("meta"), 2, 0.5), "different devices"),
        ("key_means", (src[0], posemb_row, posemb_col), "src must be 4-d"),
        ("key_means", (src.int(), posemb_row, posemb_col), "src has dtype torch.int32"),
        ("key_means", (src, posemb_row.half(), posemb_col), "posemb_row has dtype torch.float16"),
        ("key_means", (src, posemb_row, posemb_col[0]), "posemb_col must be 3-d"),
        ("key_means", (src, posemb_row[:, :3], posemb_col), r"posemb_row must have shape \[2, 4, 8\]"),
        ("key_means", (src, posemb_row, posemb_col[..., :4]), r"posemb_col must have shape \[2, 3, 8\]"),
        ("key_means", (src, posemb_row[:1], posemb_col), r"posemb_row must have shape \[2, 4, 8\]"),
        ("key_means", (src[:, :0], posemb_row, posemb_col[:, :0]), "has H = 0"),
        ("key_means", (src[:, :, :0], posemb_row[:, :0], posemb_col), "has W = 0"),
        ("key_means", (src, posemb_row, posemb_col.to("meta")), "different devices"),
    ]
    return [
        pytest.param(name, args, match, entry, id=f"{name}-{index}-{entry}")
        for index, (name, args, match) in enumerate(cases)
        for entry in ("op", "fake", "launcher")
        if not (entry == "fake" and match == "different devices")  # on meta, every tensor is on one device
    ]


@pytest.mark.parametrize(("name", "args", "match", "entry"), bad_inputs())
def test_bad_inputs_raise_input_error(name, args, match, entry):
    spec = op_cases(name)
    if entry == "fake":
        args = tuple(a.to("meta") if isinstance(a, Tensor) else a for a in args)
    call = spec.launcher if entry == "launcher" else spec.op
    with pytest.raises(InputError, match=match):
        call(*args)


@pytest.mark.parametrize("spec", OP_CASES, ids=lambda spec: spec.name)
def test_launcher_rejects_a_wrong_out(spec):
    args = spec.first_inputs(spec.dtypes[0], "cpu")
    expected = as_tuple(spec.reference(*args))
    wrong = tuple(torch.empty((*o.shape[:-1], o.shape[-1] + 1), dtype=o.dtype) for o in expected)
    with pytest.raises(InputError, match="out must be"):
        spec.launcher(*args, out=wrong if len(wrong) > 1 else wrong[0])


# ---------------------------------------------------------------------------------------------------
# scripts.bench_ops: its arithmetic and report on CPU (its timings need the GPU)


def load_bench_ops() -> ModuleType:
    return importlib.import_module("scripts.bench_ops")  # the repository root is on pytest's pythonpath


@pytest.mark.no_gpu
def test_bench_ops_without_gpu_fails_clearly(tmp_path, capsys):
    assert load_bench_ops().main(["--out", str(tmp_path)]) != 0
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "bench_ops.json").exists()


def test_bench_ops_report(tmp_path):
    bench = load_bench_ops()
    shapes = bench.Shapes(feature=(3, 5), heads=2, channels=8, decoder_queries=4, pos_feats=6)
    cases = bench.make_cases((2,), F16, "cpu", shapes)

    def time_ms(fn):  # the fused op takes 1 us, the eager graph 4 us
        fn()
        return 1e-3 if fn.__name__ == "run_fused" else 4e-3

    bench.report(bench.measure(cases, time_ms, copy_gbps=100.0), 100.0, F16, "cpu", tmp_path)
    results = json.loads((tmp_path / "bench_ops.json").read_text())["results"]
    assert sorted({r["op"] for r in results}) == FUSED_OPS
    assert all(r["matches_reference"] and r["speedup"] == 4.0 and r["fused_us"] == 1.0 for r in results)
    softmax = next(r for r in results if r["op"] == "masked_softmax" and r["case"] == "encoder")
    assert softmax["shapes"] == [[2, 2, 15, 5], [2, 5]]  # 3 x 5 feature map: 15 queries, 5 keys
    assert softmax["bytes"] == 2 * (2 * 2 * 15 * 5) * 2 + 2 * 5  # fp16 scores in, probabilities out; mask
    assert softmax["fused_gbps"] == round(softmax["bytes"] / 1e3, 1)  # bytes per microsecond / 1e3
    assert softmax["roofline_pct"] == round(100 * (softmax["bytes"] / 1e3) / 100.0, 1)  # of 100 GB/s
    posemb = next(r for r in results if r["op"] == "mask2posemb")
    assert posemb["bytes"] == 2 * (3 + 5) * (1 + 4 * 6)  # first column and row of each mask; float32 out
    keys = next(r for r in results if r["op"] == "key_means")
    assert keys["shapes"] == [[2, 3, 5, 8], [2, 5, 8], [2, 3, 8]]
    assert keys["bytes"] == 2 * (2 * 3 * 5 * 8 + 2 * 2 * (5 + 3) * 8)  # the map in; embeddings in, keys out
    attention = next(r for r in results if r["op"] == "self_attention")
    assert attention["shapes"][0] == [2, 4, 24]  # 4 decoder queries, 2 heads of 4: packed [B, L, 3C]
    # packed in, one batch of terms [1, L, 2C] in, the merged heads [B, L, C] out
    assert attention["bytes"] == 2 * (2 * 4 * 24 + 4 * 16 + 2 * 4 * 8)


# ---------------------------------------------------------------------------------------------------
# GPU: compiled kernels at AnchorDETR's shapes


@pytest.mark.gpu
@pytest.mark.parametrize(("spec", "case", "dtype"), cases(gpu=True))
def test_cuda_matches_reference(spec, case, dtype):
    args = spec.make_inputs(case, dtype, "cuda")
    run_launcher(spec, args, dtype)
    assert_matches(spec, spec.op(*args), spec.reference(*args), dtype)  # the op dispatches to Triton


@pytest.mark.gpu
def test_self_attention_on_the_gpu_takes_the_block_its_grid_calls_for(monkeypatch):
    """The launcher passes the GPU's SM count: on an H100, 64 queries a program at batch 1 and 128 at
    batch 8 (the decoder's 900 queries, 8 heads)."""
    metas = recorded_metas(monkeypatch, self_attention, "self_attention_launch_config")
    sms, expected = self_attention._common.sm_count(torch.cuda.current_device()), []
    for batch in (1, 8):
        args = self_attention_inputs({"shape": (batch, 900, 8, 32)}, F16, "cuda")
        self_attention.self_attention_triton(*args)
        programs = -(-900 // self_attention.LARGE_GRID_BLOCK_M) * batch * 8
        few = self_attention._common.few_programs(programs, sms)
        expected.append(self_attention.BLOCK_M if few else self_attention.LARGE_GRID_BLOCK_M)
    assert [meta["BLOCK_M"] for meta in metas] == expected


@pytest.mark.gpu
@pytest.mark.parametrize(("spec", "dtype"), spec_dtypes((F32, F16, BF16)))
def test_opcheck_cuda(spec, dtype):
    args = spec.first_inputs(dtype, "cuda")
    torch.library.opcheck(spec.op.default, args)
    assert_matches(spec, spec.op(*args), spec.reference(*args), dtype)


def test_feature_maps_of_one_kernel_variant_launch_the_same_kernels():
    """kernel_variant is what the inductor backend compiles ahead for each size class: two feature maps
    with one key must get the same launch metas from every op the model calls with their sizes."""

    def metas(height: int, width: int) -> list:
        return [
            rcda_aggregate.rcda_aggregate_launch_config(height * width, 8, width, 32, 2)[1],
            mask2pos.mask2posemb_launch_config(2, height, width, 256)[1],  # d_model features
            layer_norm.layer_norm_launch_config(height * width, 256)[1],
            add_bias_transpose.add_bias_transpose_launch_config(2, height * width, 256)[1],
            key_means.key_means_launch_config(2, height, width, 256)[1],
        ]

    seen = {}
    for height in range(1, 130, 3):
        for width in range(1, 300, 7):
            key = fused.kernel_variant(height, width, 256)
            assert seen.setdefault(key, metas(height, width)) == metas(height, width), (height, width)
    assert len(seen) > 10


@pytest.mark.parametrize(("case", "rows_per_step"), [("wider", 2), ("one_row_per_step", 1)])
def test_rcda_aggregate_cases_cover_both_step_sizes(case, rows_per_step):
    """The interpreter cases above run the kernel with two rows h per step and with one."""
    shape = op_cases("rcda_aggregate").cases[case]["shape"]
    n, queries, _, width, head_dim = shape
    for element_size in (2, 4):
        _, meta = rcda_aggregate.rcda_aggregate_launch_config(queries, n, width, head_dim, element_size)
        assert meta["BLOCK_H"] == rows_per_step


@pytest.mark.parametrize(
    ("queries", "batch_heads", "sm_count", "block_q"),
    [
        # H100 (132 SMs), 8 heads: 64 was faster at batch 1, 128 at batch 8 (rcda_aggregate.py).
        (900, 8, 132, 64),  # batch 1 decoder: 64 programs at 128
        (2500, 8, 132, 64),  # batch 1 encoder: 160
        (900, 64, 132, 128),  # batch 8 decoder: 512
        (2500, 64, 132, 128),  # batch 8 encoder: 1280
        (7 * 128, 1, 4, 64),  # 7 programs, 2 per SM of 4 is 8
        (7 * 128 + 1, 1, 4, 128),  # 8 programs
        (900, 8, None, 128),  # no SM count (a TensorRT engine's kernel)
    ],
)
def test_rcda_aggregate_takes_fewer_queries_per_program_where_the_grid_leaves_sms_idle(
    queries, batch_heads, sm_count, block_q
):
    grid, meta = rcda_aggregate.rcda_aggregate_launch_config(queries, batch_heads, 50, 32, 2, sm_count)
    assert meta["BLOCK_Q"] == block_q
    assert grid == (-(-queries // block_q), batch_heads)


@pytest.mark.parametrize(
    ("sizes", "strides", "expected"),
    [
        ((2, 1, 7, 64), (448, 448, 64, 1), (448, 0, 64)),  # encoder row term [B, 1, W, C]
        ((2, 5, 1, 64), (320, 64, 64, 1), (320, 64, 0)),  # encoder column term [B, H, 1, C]
        ((1, 5, 7, 64), (2240, 448, 64, 1), (0, 448, 64)),  # one image: the batch broadcasts
        ((2, 9, 64), (576, 64, 1), (576, 0, 64)),  # decoder term [B, Lq, C]: tokens have no map row
        ((1, 9, 64), (576, 64, 1), (0, 0, 64)),  # the decoder's learned term [1, Lq, C]
        ((2, 5, 7, 64), (4480, 896, 128, 1), (4480, 896, 128)),  # a strided slice keeps its strides
    ],
)
def test_rcda_aggregate_term_strides_are_zero_along_broadcast_dims(sizes, strides, expected):
    assert rcda_aggregate.term_strides(sizes, strides) == expected


# The query block that the interpreter cases above do not run (the interpreter has no SM count), by
# op: (module, launcher, launch config, the launcher's keyword, the meta's key, the block).
OTHER_BLOCK = {
    "rcda_aggregate": (
        rcda_aggregate,
        "rcda_aggregate_triton",
        "rcda_aggregate_launch_config",
        "block_q",
        "BLOCK_Q",
        rcda_aggregate.SMALL_GRID_BLOCK_Q,
    ),
    "self_attention": (
        self_attention,
        "self_attention_triton",
        "self_attention_launch_config",
        "block_m",
        "BLOCK_M",
        self_attention.LARGE_GRID_BLOCK_M,
    ),
}


def recorded_metas(monkeypatch, module: ModuleType, config_name: str) -> list[dict]:
    """The metas ``module``'s launcher launches its kernel with from now on, in order."""
    metas, config = [], getattr(module, config_name)

    def recording(*args, **kwargs):
        grid, meta = config(*args, **kwargs)
        metas.append(meta)
        return grid, meta

    monkeypatch.setattr(module, config_name, recording)
    return metas


@needs_interpreter
@pytest.mark.parametrize(
    ("spec", "case", "dtype"), [p for p in cases(interpreted=True) if p.values[0].name in OTHER_BLOCK]
)
def test_kernel_matches_reference_with_the_other_query_block(spec, case, dtype, monkeypatch):
    """rcda_aggregate's SMALL_GRID_BLOCK_Q and self_attention's LARGE_GRID_BLOCK_M, on the interpreter
    cases (which run the blocks' tiling; the interpreter has no warps)."""
    module, launcher_name, config_name, keyword, key, block = OTHER_BLOCK[spec.name]
    launcher = getattr(module, launcher_name)
    monkeypatch.setattr(module, launcher_name, lambda *a, **k: launcher(*a, **k, **{keyword: block}))
    metas = recorded_metas(monkeypatch, module, config_name)
    run_launcher(spec, spec.make_inputs(case, dtype, "cpu"), dtype)
    assert [meta[key] for meta in metas] == [block]


@pytest.mark.parametrize(
    ("batch_heads", "sm_count", "block_m", "warps"),
    [
        # H100 (132 SMs), 900 queries, 8 heads: 64 queries and 4 warps were faster at batch 1, 128 and
        # 8 at batch 8 (self_attention.py).
        (8, 132, 64, 4),  # batch 1: 64 programs at 128
        (32, 132, 64, 4),  # batch 4: 256, under 2 per SM
        (40, 132, 128, 8),  # batch 5: 320
        (64, 132, 128, 8),  # batch 8: 512
        (64, None, 64, 4),  # no SM count (a TensorRT engine's kernel)
    ],
)
def test_self_attention_takes_more_queries_per_program_where_the_grid_fills_the_sms(
    batch_heads, sm_count, block_m, warps
):
    grid, meta = self_attention.self_attention_launch_config(900, batch_heads, 32, sm_count)
    assert (meta["BLOCK_M"], meta["num_warps"]) == (block_m, warps)
    assert grid == (-(-900 // block_m), batch_heads)


class KernelLaunches:
    """Stands in for a Triton kernel: records each launch's (arguments, keyword arguments)."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def recorded_launches(monkeypatch, module: ModuleType, kernel_name: str) -> list[tuple]:
    """The launches of ``module``'s kernel ``kernel_name`` from now on, recorded instead of run."""
    kernel = KernelLaunches()
    monkeypatch.setattr(module, kernel_name, kernel)
    monkeypatch.setattr(module._common, "launch_context", lambda *_: contextlib.nullcontext())
    return kernel.launches


def test_warm_up_launches_every_rcda_aggregate_meta_of_the_range(monkeypatch):
    """For every batch and padded image of the default range, with the DC5 and C5 strides and a few
    GPUs' SM counts, the metas the launcher picks for the encoder's (H * W queries) and the decoder's
    (900) calls are among those the warm-up launches (``rcda_aggregate.warm`` at each width of
    ``warm.variant_sizes``): no image compiles after ``compile()``."""
    launches = recorded_launches(monkeypatch, rcda_aggregate, "rcda_aggregate_kernel")
    spec = CompileSpec("fp32", torch.device("cpu"))
    (low_b, low_h, low_w), _, (high_b, high_h, high_w) = spec.padded_range
    for stride in (16, 32):
        for _, width in warm.variant_sizes(spec, stride, 256):
            rcda_aggregate.warm(width, 8, 32, F16, "cpu")
    warmed = {tuple(sorted(kwargs.items())) for _, kwargs in launches}
    config = rcda_aggregate.rcda_aggregate_launch_config
    for stride in (16, 32):
        heights = [size // stride for size in range(low_h, high_h + 1, SIZE_MULTIPLE)]
        widths = [size // stride for size in range(low_w, high_w + 1, SIZE_MULTIPLE)]
        for sm_count, batch, height, width in itertools.product(
            (132, 114, 78), range(low_b, high_b + 1), heights, widths
        ):
            for queries in (height * width, 900):
                _, meta = config(queries, batch * 8, width, 32, 2, sm_count)
                key = tuple(sorted((meta | {"DOT_PRECISION": "tf32"}).items()))
                assert key in warmed, (stride, sm_count, batch, height, width, queries, meta)


def test_warm_up_launches_every_self_attention_meta_of_the_range(monkeypatch):
    """For every batch of the default range and a few GPUs' SM counts, the meta the launcher picks for
    the decoder's self-attention (900 queries, 8 heads of 32) is among those ``self_attention.warm``
    launches: no batch compiles after ``compile()``."""
    launches = recorded_launches(monkeypatch, self_attention, "self_attention_kernel")
    self_attention.warm(8, 32, F16, "cpu")
    warmed = {tuple(sorted(kwargs.items())) for _, kwargs in launches}
    (low_b, _, _), _, (high_b, _, _) = CompileSpec("fp32", torch.device("cpu")).padded_range
    for sm_count, batch in itertools.product((132, 114, 78), range(low_b, high_b + 1)):
        _, meta = self_attention.self_attention_launch_config(900, batch * 8, 32, sm_count)
        key = tuple(sorted((meta | {"DOT_PRECISION": "tf32"}).items()))
        assert key in warmed, (sm_count, batch, meta)


def specialization(arg: object) -> tuple:
    """What Triton specializes a kernel on besides its constexprs: a tensor's dtype and 16-byte
    alignment; an int's width, divisibility by 16 and being 1."""
    if isinstance(arg, Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, int):
        return int, abs(arg) < 2**31, arg % 16 == 0, arg == 1
    return (type(arg),)


def kernel_variant_key(kernel, args: tuple, meta: dict) -> tuple:
    """What Triton compiles one build of ``kernel`` for, from a recorded launch: the specializations
    of the arguments it specializes, and the constexprs (in meta)."""
    options = getattr(kernel, "kwargs", None) or {"do_not_specialize": kernel.do_not_specialize}
    named = dict(zip(kernel.arg_names, args, strict=False))  # the constexprs, last, are in meta
    kept = [specialization(arg) for name, arg in named.items() if name not in options["do_not_specialize"]]
    return tuple(kept), tuple(sorted(meta.items()))


def test_rcda_aggregate_warm_up_builds_the_model_calls_variants(monkeypatch):
    """The warm-up's launches and the encoder's and decoder's calls (as the cases build them, at
    batch 1 and 2) specialize alike: one compiled variant serves both."""
    kernel = rcda_aggregate.rcda_aggregate_kernel
    launches = recorded_launches(monkeypatch, rcda_aggregate, "rcda_aggregate_kernel")
    rcda_aggregate.warm(50, 8, 32, F16, "cpu")
    warmed = {kernel_variant_key(kernel, *launch) for launch in launches}
    assert len(warmed) == 2  # one per query block
    launches.clear()
    for batch, is_map in itertools.product((1, 2), (True, False)):
        case = {"shape": (batch * 8, 2500 if is_map else 900, 50, 50, 32), "heads": 8, "map": is_map}
        for block_q in (rcda_aggregate.SMALL_GRID_BLOCK_Q, rcda_aggregate.BLOCK_Q):
            rcda_aggregate.rcda_aggregate_triton(*rcda_aggregate_inputs(case, F16, "cpu"), block_q=block_q)
    assert {kernel_variant_key(kernel, *launch) for launch in launches} == warmed


def test_self_attention_warm_up_builds_the_model_calls_variants(monkeypatch):
    """The warm-up's launches and the decoder's calls (as the cases build them, at batch 1 and 2, the
    position terms shared by the batch or not) specialize alike: one compiled variant serves both."""
    kernel = self_attention.self_attention_kernel
    launches = recorded_launches(monkeypatch, self_attention, "self_attention_kernel")
    self_attention.warm(8, 32, F16, "cpu")
    warmed = {kernel_variant_key(kernel, *launch) for launch in launches}
    assert len(warmed) == 2  # one per query block
    launches.clear()
    for batch, term_batch in itertools.product((1, 2), (False, True)):
        case = {"shape": (batch, 900, 8, 32), "term_batch": term_batch}
        for block_m in (self_attention.BLOCK_M, self_attention.LARGE_GRID_BLOCK_M):
            self_attention.self_attention_triton(*self_attention_inputs(case, F16, "cpu"), block_m=block_m)
    assert {kernel_variant_key(kernel, *launch) for launch in launches} == warmed


def test_self_attention_warm_up_does_nothing_where_the_op_runs_the_reference(monkeypatch):
    launches = recorded_launches(monkeypatch, self_attention, "self_attention_kernel")
    self_attention.warm(8, 32, F32, "cpu")  # float32 runs the reference
    self_attention.warm(1, self_attention.MAX_HEAD_DIM + 16, F16, "cpu")  # heads past the kernel's
    assert launches == []


@needs_interpreter
def test_key_means_programs_past_the_map_write_nothing(monkeypatch):
    """With the grid of a 4x wider map with 4x the channels (lines past H + W, channel blocks past C),
    the keys are the reference's and the memory after each output is untouched (NaN poison)."""
    spec = op_cases("key_means")
    config = key_means.key_means_launch_config
    monkeypatch.setattr(key_means, "key_means_launch_config", lambda *sizes: config(*spec.widen(*sizes)))
    src, posemb_row, posemb_col = spec.make_inputs(spec.cases["odd"], F32, "cpu")
    batch, height, width, channels = src.shape
    shapes = ((batch, width, channels), (batch, height, channels))
    buffers = [torch.full((16 * s[0] * s[1] * s[2],), float("nan")) for s in shapes]  # outputs, then poison
    out = tuple(b[: s[0] * s[1] * s[2]].view(s) for b, s in zip(buffers, shapes, strict=True))
    key_means.key_means_triton(src, posemb_row, posemb_col, out=out)
    for got, want in zip(out, reference.key_means(src, posemb_row, posemb_col), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for buffer, got in zip(buffers, out, strict=True):
        assert buffer[got.numel() :].isnan().all()


def test_key_means_runs_the_reference_past_its_kernel():
    """The kernel's limits: 32-bit offsets within an image, a grid of at most 65535 rows and columns."""
    assert key_means.runs_kernel(50, 50, 256) and key_means.runs_kernel(40000, 25535, 1)
    assert not key_means.runs_kernel(40000, 25536, 1)  # 65536 lines
    assert not key_means.runs_kernel(32768, 32768, 2)  # 2**31 values


@needs_interpreter
@pytest.mark.parametrize(
    ("batch", "length", "heads", "head_dim", "term_stride", "dtype", "expected"),
    [
        (8, 900, 8, 32, 3072, F16, True),  # the decoder at batch 8, terms a slice of 6 layers' projection
        (8, 900, 8, 32, 3072, F32, False),  # float32: the reference
        (8192, 900, 8, 32, 512, F16, False),  # batch * heads past the grid's second axis
        (1, 2**31 // 768 + 1, 8, 32, 512, F16, False),  # an image's packed projection past 2**31 elements
        (1, 900, 8, 32, 2**31 // 900 + 1, F16, False),  # its position terms' span past 2**31
        (1, 900, 1, 512, 1024, F16, False),  # heads wider than 256
    ],
)
def test_self_attention_runs_the_reference_past_its_kernel(
    batch, length, heads, head_dim, term_stride, dtype, expected
):
    channels = heads * head_dim
    packed = torch.empty(batch, length, 3 * channels, dtype=dtype, device="meta")
    terms = torch.empty_strided((1, length, 2 * channels), (0, term_stride, 1), dtype=dtype, device="meta")
    assert self_attention.runs_kernel(packed, terms, heads) is expected


def test_key_means_sums_in_float32_where_a_float16_sum_overflows():
    """key_means' "extreme" maps (fp16 values up to 6e4): two of them overflow a float16 sum, yet the
    kernel's and the reference's keys are finite and the correctly rounded means (float64)."""
    spec = op_cases("key_means")
    src, posemb_row, posemb_col = spec.make_inputs(spec.cases["extreme"], F16, "cpu")
    assert (src[:, 0] + src[:, 1]).isinf().any() and (src[:, :, 0] + src[:, :, 1]).isinf().any()
    exact = (
        (src.double().mean(1) + posemb_row.double()).half(),
        (src.double().mean(2) + posemb_col.double()).half(),
    )
    for keys in (
        key_means.key_means_triton(src, posemb_row, posemb_col),
        reference.key_means(src, posemb_row, posemb_col),
    ):
        for got, want in zip(keys, exact, strict=True):
            assert got.isfinite().all()
            torch.testing.assert_close(got, want, atol=0.0, rtol=1e-3)  # one ulp


@needs_interpreter
@pytest.mark.parametrize(("key", "index"), [("k_row", 5), ("k_col", 3)])
def test_rcda_aggregate_kernel_keeps_a_nan_score_nan_like_the_reference(key, index):
    """A NaN in k_row or k_col (an fp16 overflow upstream, say) must reach the output, as in the
    reference, not be taken for a padded column or row."""
    args = rcda_aggregate_inputs(
        {"shape": (4, 5, 40, 40, 8), "heads": 2, "padding": "none"}, torch.float32, "cpu"
    )
    # Head 1 of image 0; in the row side's tail block (32 + 16), in the column side's second chunk.
    args[index][1, 35, 0] = float("nan")
    expected = reference.rcda_aggregate(*args)
    got = rcda_aggregate.rcda_aggregate_triton(*args)
    nan_head = expected[0, :, 8:16]
    assert nan_head.isnan().all() and expected.isnan().sum() == nan_head.numel(), key
    torch.testing.assert_close(got, expected, equal_nan=True, atol=1e-5, rtol=1e-5)
