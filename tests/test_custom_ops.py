"""The fused ops against their PyTorch reference: one suite, parametrized over ops.

On CPU the Triton kernels run under the interpreter (``TRITON_INTERPRET=1``, as ``make test`` sets)
on small shapes; ``@pytest.mark.gpu`` tests run them compiled at AnchorDETR's real shapes (DC5
800x800: a 50x50 feature map, 8 heads, 900 decoder and 2500 encoder queries, C = 256). Inputs are
fresh random ones per test (the seed is printed on failure); outputs are pre-filled with NaN so that
an element a kernel forgets to write fails the comparison.
"""

import importlib.util
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor, nn
from triton.runtime.interpreter import InterpretedFunction

from anchordetr_trt.custom_ops import (
    add_bias_transpose,
    fused,
    layer_norm,
    mask2pos,
    masked_softmax,
    rcda_aggregate,
    reference,
)
from anchordetr_trt.errors import InputError

interpreted = isinstance(masked_softmax.masked_softmax_kernel, InterpretedFunction)
needs_interpreter = pytest.mark.skipif(
    not interpreted,
    reason="Triton kernels run on CPU only with TRITON_INTERPRET=1 set before import (make test)",
)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by `make gpu`)")
F16, F32, BF16 = torch.float16, torch.float32, torch.bfloat16
FP16_MAX_MAGNITUDE = 6e4


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    print(f"torch seed {seed}")  # shown by pytest when the test fails


# ---------------------------------------------------------------------------------------------------
# Inputs


def values(shape, dtype, device, case) -> Tensor:
    """Random values of ``shape``; case "extreme": uniform in +-6e4 (fp16's range); "strided": a
    non-contiguous view (the last two dims transposed in memory)."""
    if case.get("strided") and len(shape) >= 2:
        return values(
            (*shape[:-2], shape[-1], shape[-2]), dtype, device, case | {"strided": False}
        ).transpose(-1, -2)
    if case.get("extreme"):
        return ((torch.rand(shape) * 2 - 1) * case["extreme"]).to(device, dtype)
    return (torch.randn(shape) * case.get("scale", 1.0)).to(device, dtype)


def padding(batch: int, length: int, mode: str, device) -> Tensor:
    """[batch, length] bool, True = padded: "random" any pattern, "tail" a padded end of random
    length, "all" like tail with the first row fully padded, "none"."""
    if mode == "random":
        mask = torch.rand(batch, length) < 0.4
    else:
        valid = torch.randint(1, length + 1, (batch, 1))
        mask = torch.arange(length)[None] >= valid
        if mode == "all":
            mask[0] = True
        if mode == "none":
            mask[:] = False
    return mask.to(device)


def image_mask(batch: int, height: int, width: int, mode: str, device, strided: bool = False) -> Tensor:
    """[batch, height, width] padding mask; "tail" pads the bottom and right of each image as
    preprocess does, "all" pads the first image entirely, "random" is any pattern."""
    if strided:  # a [:, :, :width] view of a wider mask
        return image_mask(batch, height, width + 3, mode, device)[:, :, :width]
    if mode == "random":
        return (torch.rand(batch, height, width) < 0.4).to(device)
    rows, cols = padding(batch, height, mode, "cpu"), padding(batch, width, mode, "cpu")
    return (rows[:, :, None] | cols[:, None, :]).to(device)


def masked_softmax_inputs(case: dict, dtype, device) -> tuple:
    batch, heads, queries, keys = case["shape"]
    scores = values((batch, heads, queries, keys), dtype, device, case | {"scale": 4.0})
    if case.get("strided"):  # the model's row mask is mask[:, 0, :], a strided view
        return scores, image_mask(batch, 2, keys, case["padding"], device)[:, 0, :]
    return scores, padding(batch, keys, case["padding"], device)


def layer_norm_inputs(case: dict, dtype, device) -> tuple:
    shape, channels = case["shape"], case["shape"][-1]
    affine_dtype = case.get("affine_dtype", dtype)
    weight = (1 + 0.2 * torch.randn(channels)).to(device, affine_dtype)
    bias = (0.2 * torch.randn(channels)).to(device, affine_dtype)
    residual = values(shape, dtype, device, case) if case.get("residual") else None
    return values(shape, dtype, device, case), weight, bias, 1e-5, residual


def add_bias_transpose_inputs(case: dict, dtype, device) -> tuple:
    batch, length, channels = case["shape"]
    extreme = {"extreme": case["extreme"] / 2} if case.get("extreme") else {}  # x + bias stays finite
    x = values((batch, length, channels), dtype, device, case | extreme)
    return x, values((channels,), dtype, device, extreme), case["heads"], case.get("scale", 0.25)


def mask2pos_inputs(case: dict, dtype, device) -> tuple:
    return (image_mask(*case["shape"], case["padding"], device, case.get("strided", False)),)


def mask2posemb_inputs(case: dict, dtype, device) -> tuple:
    return (*mask2pos_inputs(case, dtype, device), case.get("feats", 64), case.get("temperature", 10000.0))


def rcda_aggregate_inputs(case: dict, dtype, device) -> tuple:
    batch, queries, height, width, head_dim = case["shape"]
    probs_col = torch.randn(batch, queries, height).softmax(-1)
    probs_row = torch.randn(batch, queries, width).softmax(-1)
    value = values((batch, height, width, head_dim), dtype, device, case)
    return probs_col.to(device, dtype), probs_row.to(device, dtype), value


# ---------------------------------------------------------------------------------------------------
# The ops, their cases and tolerances


@dataclass(frozen=True)
class OpSpec:
    """An op ``name`` of ``module``, which holds ``<name>_triton`` and ``<name>_launch_config``."""

    name: str
    module: ModuleType
    make_inputs: Callable[[dict, torch.dtype, str], tuple]
    cases: dict[str, dict]  # small shapes, for the interpreter
    gpu_cases: dict[str, dict]  # AnchorDETR's shapes
    widen: Callable  # launch-config sizes -> 4x larger ones, for "any size <= BLOCK"
    dtypes: tuple = (F32, F16, BF16)  # of the float inputs; the mask ops have none
    tolerance: dict = field(default_factory=dict)  # dtype -> (atol, rtol); exact if absent
    not_interpreted: tuple = ()  # dtypes the Triton interpreter cannot run (tested on the GPU instead)

    @property
    def op(self):
        return getattr(torch.ops.anchordetr, self.name)

    @property
    def reference(self):
        return getattr(reference, self.name)

    @property
    def launcher(self):
        return getattr(self.module, f"{self.name}_triton")

    def first_inputs(self, dtype, device: str) -> tuple:
        return self.make_inputs(next(iter(self.cases.values())), dtype, device)


REAL_BATCHES = (1, 8)
SPECS = [
    OpSpec(
        "masked_softmax",
        masked_softmax,
        masked_softmax_inputs,
        cases={
            "small": {"shape": (2, 3, 5, 7), "padding": "random"},
            "length_1": {"shape": (3, 2, 1, 1), "padding": "random"},
            "odd": {"shape": (3, 2, 13, 37), "padding": "tail"},
            "fully_padded": {"shape": (2, 2, 9, 21), "padding": "all"},
            "long_rows": {"shape": (1, 1, 3, 300), "padding": "random"},
            "extreme": {"shape": (2, 2, 7, 19), "padding": "random", "extreme": FP16_MAX_MAGNITUDE},
            "strided": {"shape": (2, 3, 6, 11), "padding": "tail", "strided": True},
        },
        gpu_cases={
            f"{name}_b{batch}": {"shape": (batch, 8, queries, 50), "padding": padding_mode}
            for batch in REAL_BATCHES
            for name, queries, padding_mode in (("decoder", 900, "tail"), ("encoder", 2500, "all"))
        },
        tolerance={F32: (1e-6, 1e-5), F16: (1e-5, 1e-3), BF16: (1e-4, 1.6e-2)},
        widen=lambda rows, length: (rows, 4 * length),
    ),
    OpSpec(
        "layer_norm",
        layer_norm,
        layer_norm_inputs,
        cases={
            "small": {"shape": (2, 5, 32), "residual": True},
            "no_residual": {"shape": (2, 5, 32)},
            "length_1": {"shape": (1, 1, 1), "residual": True},
            "odd_4d": {"shape": (3, 5, 7, 45), "residual": True},
            "fp32_affine": {"shape": (2, 3, 24), "residual": True, "affine_dtype": F32},
            "extreme": {"shape": (2, 9, 40), "residual": True, "extreme": FP16_MAX_MAGNITUDE},
            "strided": {"shape": (2, 6, 20), "residual": True, "strided": True},
        },
        gpu_cases={
            f"{name}_b{batch}": {"shape": (batch, length, 256), "residual": residual}
            for batch in REAL_BATCHES
            for name, length, residual in (
                ("decoder", 900, True),
                ("encoder", 2500, True),
                ("plain", 900, False),
            )
        },
        tolerance={F32: (1e-5, 1e-5), F16: (1e-3, 2e-3), BF16: (1e-2, 1.6e-2)},
        widen=lambda rows, length: (rows, 4 * length),
    ),
    OpSpec(
        "add_bias_transpose",
        add_bias_transpose,
        add_bias_transpose_inputs,
        cases={
            "small": {"shape": (2, 5, 16), "heads": 4},
            "length_1": {"shape": (1, 1, 8), "heads": 2, "scale": 1.0},
            "odd": {"shape": (3, 13, 24), "heads": 8, "scale": 24**-0.5},  # head_dim 3
            "wide": {"shape": (2, 3, 600), "heads": 6},  # head_dim 100, channels in 3 blocks
            "extreme": {"shape": (2, 7, 32), "heads": 8, "scale": 1.0, "extreme": FP16_MAX_MAGNITUDE},
            "strided": {"shape": (2, 6, 12), "heads": 3, "strided": True},
        },
        gpu_cases={
            f"{name}_b{batch}": {"shape": (batch, length, 256), "heads": 8, "scale": 32**-0.5}
            for batch in REAL_BATCHES
            for name, length in (("decoder", 900), ("encoder", 2500))
        },
        # Bit-exact on fp32 and fp16; the interpreter truncates float32 -> bfloat16 (1 ulp).
        tolerance={BF16: (1e-2, 1.6e-2)},
        widen=lambda batch, length, channels: (batch, 4 * length, 4 * channels),
    ),
    OpSpec(
        "mask2pos",
        mask2pos,
        mask2pos_inputs,
        cases={
            "small": {"shape": (3, 11, 6), "padding": "tail"},
            "length_1": {"shape": (2, 1, 1), "padding": "random"},
            "fully_padded": {"shape": (3, 7, 9), "padding": "all"},
            "random": {"shape": (2, 13, 5), "padding": "random"},
            "long_line": {"shape": (1, 3, 1100), "padding": "tail"},  # longer than MAX_BLOCK_L
            "strided": {"shape": (2, 5, 8), "padding": "tail", "strided": True},
        },
        gpu_cases={
            f"{padding_mode}_b{batch}": {"shape": (batch, 50, 50), "padding": padding_mode}
            for batch in REAL_BATCHES
            for padding_mode in ("tail", "all")
        },
        dtypes=(None,),
        widen=lambda batch, height, width: (batch, 4 * height, 4 * width),
    ),
    OpSpec(
        "mask2posemb",
        mask2pos,
        mask2posemb_inputs,
        cases={
            "small": {"shape": (3, 11, 6), "padding": "tail"},
            "length_1": {"shape": (1, 1, 1), "padding": "none", "feats": 2},
            "fully_padded": {"shape": (2, 7, 9), "padding": "all", "feats": 18},
            "many_features": {"shape": (2, 37, 5), "padding": "tail", "feats": 600, "temperature": 20.0},
            "strided": {"shape": (2, 5, 8), "padding": "random", "strided": True},
        },
        gpu_cases={
            f"{padding_mode}_b{batch}": {"shape": (batch, 50, 50), "padding": padding_mode, "feats": 256}
            for batch in REAL_BATCHES
            for padding_mode in ("tail", "all")
        },
        dtypes=(None,),
        tolerance={None: (2e-5, 0.0)},  # float32 sin/cos of angles up to 2 pi
        widen=lambda batch, height, width, feats: (batch, 4 * height, 4 * width, 4 * feats),
    ),
    OpSpec(
        "rcda_aggregate",
        rcda_aggregate,
        rcda_aggregate_inputs,
        cases={  # shape: (batch * heads, queries, height, width, head_dim)
            "small": {"shape": (2, 5, 3, 4, 8)},
            "length_1": {"shape": (1, 1, 1, 1, 1)},
            "odd": {"shape": (3, 70, 5, 7, 9)},  # queries over two blocks, sizes below the blocks
            "wide": {"shape": (2, 9, 2, 40, 20)},
            "strided": {"shape": (2, 6, 3, 5, 8), "strided": True},
        },
        gpu_cases={
            f"{name}_b{batch}": {"shape": (batch * 8, queries, 50, 50, 32)}
            for batch in REAL_BATCHES
            for name, queries in (("decoder", 900), ("encoder", 2500))
        },
        # The reference rounds its [N, W, Lq, D] intermediate to the input dtype, the kernel does not.
        tolerance={F32: (1e-5, 1e-5), F16: (2e-3, 5e-3), BF16: (2e-2, 3e-2)},
        not_interpreted=(BF16,),  # the interpreter's tl.dot reads bfloat16 as integers
        widen=lambda queries, heads, width, head_dim, size: (
            4 * queries,
            heads,
            4 * width,
            4 * head_dim,
            size,
        ),
    ),
]


def cases(gpu: bool = False, interpreted: bool = False):
    return [
        pytest.param(spec, case, dtype, id=f"{spec.name}-{name}-{str(dtype).removeprefix('torch.')}")
        for spec in SPECS
        for name, case in (spec.gpu_cases if gpu else spec.cases).items()
        for dtype in spec.dtypes
        if not (gpu and dtype is BF16)  # bfloat16 on the GPU: covered by test_opcheck_cuda
        and not (interpreted and dtype in spec.not_interpreted)
    ]


def as_tuple(out) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def poisoned_like(outputs: tuple[Tensor, ...]):
    poisoned = tuple(torch.full(o.shape, float("nan"), dtype=o.dtype, device=o.device) for o in outputs)
    return poisoned if len(poisoned) > 1 else poisoned[0]


def assert_matches(spec: OpSpec, got, expected, dtype) -> None:
    atol, rtol = spec.tolerance.get(dtype, (0.0, 0.0))
    for g, e in zip(as_tuple(got), as_tuple(expected), strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        assert not g.isnan().any(), "NaN in the output: an element was not written, or a padded row is NaN"
        torch.testing.assert_close(g, e, atol=atol, rtol=rtol)


def run_launcher(spec: OpSpec, args: tuple, dtype) -> None:
    """The launcher writes NaN-poisoned outputs in place and matches the reference."""
    expected = spec.reference(*args)
    out = poisoned_like(as_tuple(expected))
    got = spec.launcher(*args, out=out)
    assert all(g is o for g, o in zip(as_tuple(got), as_tuple(out), strict=True)), (
        "outputs not written in place"
    )
    assert_matches(spec, got, expected, dtype)


# ---------------------------------------------------------------------------------------------------
# Kernels under the interpreter (CPU)


@needs_interpreter
@pytest.mark.parametrize(("spec", "case", "dtype"), cases(interpreted=True))
def test_triton_matches_reference(spec, case, dtype):
    run_launcher(spec, spec.make_inputs(case, dtype, "cpu"), dtype)


@needs_interpreter
@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_kernel_serves_any_size_up_to_its_blocks(spec, monkeypatch):
    """A kernel built for larger sizes (blocks and grid of 4x the lengths, as for a TensorRT engine's
    maximum shape) is exact on smaller inputs: extra lanes and programs write nothing."""
    name = f"{spec.name}_launch_config"
    config = getattr(spec.module, name)
    monkeypatch.setattr(spec.module, name, lambda *sizes: config(*spec.widen(*sizes)))
    dtype = spec.dtypes[0]
    args = spec.first_inputs(dtype, "cpu")
    run_launcher(spec, args, dtype)


# ---------------------------------------------------------------------------------------------------
# The registered ops (CPU: their reference path)


@pytest.mark.parametrize(("spec", "case", "dtype"), cases())
def test_op_on_cpu_is_the_reference(spec, case, dtype):
    args = spec.make_inputs(case, dtype, "cpu")
    for got, expected in zip(as_tuple(spec.op(*args)), as_tuple(spec.reference(*args)), strict=True):
        assert torch.equal(got, expected)


def spec_dtypes(dtypes: tuple) -> list:
    """(spec, dtype) pairs: each float op with ``dtypes``, each mask op once."""
    return [
        pytest.param(spec, dtype, id=f"{spec.name}-{str(dtype).removeprefix('torch.')}")
        for spec in SPECS
        for dtype in (dtypes if spec.dtypes != (None,) else (None,))
    ]


@pytest.mark.parametrize(("spec", "dtype"), spec_dtypes((F32, F16)))
def test_opcheck(spec, dtype):
    torch.library.opcheck(spec.op.default, spec.first_inputs(dtype, "cpu"))


def fused_calls(
    scores, key_mask, x, weight, bias, residual, projection, proj_bias, mask, probs_col, probs_row, value
):
    """Every fused op once, through the wrappers the model calls."""
    probs = fused.masked_softmax(scores, key_mask)
    normed = fused.layer_norm(x, weight, bias, 1e-5, residual)
    heads = fused.add_bias_transpose(projection, proj_bias, 2, 0.5)
    pos_y, pos_x = fused.mask2pos(mask)
    emb_y, emb_x = fused.mask2posemb(mask, 16, 10000.0)
    aggregated = fused.rcda_aggregate(probs_col, probs_row, value)
    return probs, normed, heads, pos_y, pos_x, emb_y, emb_x, aggregated


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
        torch.randn(batch * 2, 5, 3).softmax(-1),
        torch.randn(batch * 2, 5, width).softmax(-1),
        torch.randn(batch * 2, 3, width, 4),
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


FUSED_OPS = sorted(
    ["masked_softmax", "layer_norm", "add_bias_transpose", "mask2pos", "mask2posemb", "rcda_aggregate"]
)


def test_export_keeps_each_op_as_one_node():
    batch, width = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("width", min=2, max=64)
    dims = [{0: batch, 3: width}, {0: batch, 1: width}, {0: batch, 1: width}, None, None]
    dims += [{0: batch, 1: width}, {0: batch, 1: width}, None, {0: batch, 2: width}]
    dims += [{0: 2 * batch}, {0: 2 * batch, 2: width}, {0: 2 * batch, 2: width}]
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
    x, weight, bias = torch.randn(2, 4, 8), torch.randn(8), torch.randn(8)
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    probs_col, probs_row, value = torch.rand(4, 5, 3), torch.rand(4, 5, 6), torch.randn(4, 3, 6, 8)
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
        ("rcda_aggregate", (probs_col, probs_row, value[0]), "value must be 4-d"),
        ("rcda_aggregate", (probs_col, probs_row.half(), value), "share one dtype"),
        (
            "rcda_aggregate",
            (probs_col[:, :, :2], probs_row, value),
            r"probs_col.shape\[2\] \(H\) is 2 but must be 3",
        ),
        ("rcda_aggregate", (probs_col, probs_row[:, :4], value), r"probs_row.shape\[1\] \(queries\) is 4"),
        ("rcda_aggregate", (probs_col, probs_row, value.to("meta")), "different devices"),
    ]
    return [
        pytest.param(name, args, match, entry, id=f"{name}-{index}-{entry}")
        for index, (name, args, match) in enumerate(cases)
        for entry in ("op", "fake", "launcher")
        if not (entry == "fake" and match == "different devices")  # on meta, every tensor is on one device
    ]


@pytest.mark.parametrize(("name", "args", "match", "entry"), bad_inputs())
def test_bad_inputs_raise_input_error(name, args, match, entry):
    spec = next(spec for spec in SPECS if spec.name == name)
    if entry == "fake":
        args = tuple(a.to("meta") if isinstance(a, Tensor) else a for a in args)
    call = spec.launcher if entry == "launcher" else spec.op
    with pytest.raises(InputError, match=match):
        call(*args)


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_launcher_rejects_a_wrong_out(spec):
    args = spec.first_inputs(spec.dtypes[0], "cpu")
    expected = as_tuple(spec.reference(*args))
    wrong = tuple(torch.empty((*o.shape[:-1], o.shape[-1] + 1), dtype=o.dtype) for o in expected)
    with pytest.raises(InputError, match="out must be"):
        spec.launcher(*args, out=wrong if len(wrong) > 1 else wrong[0])


# ---------------------------------------------------------------------------------------------------
# scripts/bench_ops.py: its arithmetic and report on CPU (its timings need the GPU)


def load_bench_ops() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_ops", Path(__file__).parents[1] / "scripts/bench_ops.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
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


# ---------------------------------------------------------------------------------------------------
# GPU: compiled kernels at AnchorDETR's shapes


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize(("spec", "case", "dtype"), cases(gpu=True))
def test_cuda_matches_reference(spec, case, dtype):
    args = spec.make_inputs(case, dtype, "cuda")
    run_launcher(spec, args, dtype)
    assert_matches(spec, spec.op(*args), spec.reference(*args), dtype)  # the op dispatches to Triton


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize(("spec", "dtype"), spec_dtypes((F32, F16, BF16)))
def test_opcheck_cuda(spec, dtype):
    args = spec.first_inputs(dtype, "cuda")
    torch.library.opcheck(spec.op.default, args)
    assert_matches(spec, spec.op(*args), spec.reference(*args), dtype)
