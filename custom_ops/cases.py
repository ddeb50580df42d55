"""The fused ops' cases and the kernel-against-reference check, shared by tests/test_custom_ops.py
and ``anchordetr-trt check``.

Each op has small cases (for the Triton interpreter on the CPU) and cases at AnchorDETR's real shapes
(DC5 800x800: a 50x50 feature map, 8 heads, 900 decoder and 2500 encoder queries, C = 256), with its
tolerance per dtype. Inputs are random (from torch's global generator); outputs are pre-filled with NaN
so that an element a kernel forgets to write fails the comparison.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import Tensor

from . import (
    add_bias_transpose,
    key_means,
    layer_norm,
    mask2pos,
    masked_softmax,
    rcda_aggregate,
    reference,
    self_attention,
)

F16, F32, BF16 = torch.float16, torch.float32, torch.bfloat16
FP16_MAX_MAGNITUDE = 6e4


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
    """The op's arguments as the model passes them: case "map" as the encoder does (queries [B, H, W, 2C]
    over the values' H x W map, terms per column and per row, values [B, H, W, C]; with "packed", one
    [B, H, W, 3C] tensor as queries and values), else as the decoder does (a sequence of queries
    [B, Lq, 2C], terms shared by the batch unless "term_batch", the values of the second of two
    attentions projected together); terms are channel slices of a wider projection (``project_each``'s
    views) unless "strided"."""
    n, queries, height, width, head_dim = case["shape"]
    heads, mode = case.get("heads", 1), case.get("padding", "tail")
    batch, channels = n // heads, heads * head_dim
    dense = case | {"strided": False}

    def term(*dims: int) -> Tensor:
        if case.get("strided"):
            return values((*dims, channels), dtype, device, case)
        return values((*dims, 2 * channels), dtype, device, case)[..., :channels]

    keys = (
        values((n, height, head_dim), dtype, device, dense),
        padding(batch, height, mode, device),
        values((n, width, head_dim), dtype, device, dense),
        padding(batch, width, mode, device),
    )
    if case.get("map"):
        if queries != height * width:
            raise ValueError(f"a map case has height * width queries, got {case['shape']}")
        if case.get("packed"):  # queries and values one [B, H, W, 3C] projection
            packed = values((batch, height, width, 3 * channels), dtype, device, case)
            rest = (packed, 2 * channels)
        else:
            packed = values((batch, height, width, 2 * channels), dtype, device, case)  # queries only
            rest = (values((batch, height, width, channels), dtype, device, case), 0)
        return packed, term(batch, 1, width), term(batch, height, 1), *keys, *rest, head_dim**-0.5
    term_batch = batch if case.get("term_batch") else 1
    return (
        values((batch, queries, 2 * channels), dtype, device, case),
        term(term_batch, queries),
        term(term_batch, queries),
        *keys,
        values((batch, height, width, 2 * channels), dtype, device, case),
        channels,
        head_dim**-0.5,
    )


def key_means_inputs(case: dict, dtype, device) -> tuple:
    """src [B, H, W, C] and its position embeddings [B, W, C], [B, H, C]. Case "extreme": src in
    [0, extreme) (any two of its values near 6e4 overflow a float16 sum) with embeddings of unit scale,
    so that every key is finite."""
    batch, height, width, channels = case["shape"]
    src = values((batch, height, width, channels), dtype, device, case)
    if case.get("extreme"):
        src = src.abs()
    dense = {"strided": False}
    return (
        src,
        values((batch, width, channels), dtype, device, dense),
        values((batch, height, channels), dtype, device, dense),
    )


def self_attention_inputs(case: dict, dtype, device) -> tuple:
    """packed [B, L, 3C] and position terms [1 or B, L, 2C] as the decoder passes them: terms shared by
    the batch unless "term_batch", a channel slice of a wider projection (``project_each``'s views)
    unless "strided" (then channels not contiguous)."""
    batch, length, heads, head_dim = case["shape"]
    channels = heads * head_dim
    term_batch = batch if case.get("term_batch") else 1
    packed = values((batch, length, 3 * channels), dtype, device, case | {"strided": False})
    if case.get("strided"):
        terms = values((term_batch, length, 2 * channels), dtype, device, case)
    else:
        terms = values((term_batch, length, 4 * channels), dtype, device, case)[..., : 2 * channels]
    return packed, terms, heads, head_dim**-0.5


# ---------------------------------------------------------------------------------------------------
# The ops, their cases and tolerances


@dataclass(frozen=True)
class OpCases:
    """The test cases of op ``name`` of ``module`` (which holds ``<name>_triton`` and
    ``<name>_launch_config``): inputs, shapes and tolerances."""

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
OP_CASES = [
    OpCases(
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
    OpCases(
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
    OpCases(
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
    OpCases(
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
    OpCases(
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
    OpCases(
        "rcda_aggregate",
        rcda_aggregate,
        rcda_aggregate_inputs,
        cases={  # shape: (batch * heads, queries, height, width, head_dim); row and column masks: padding
            "small": {"shape": (4, 5, 3, 4, 8), "heads": 2, "padding": "random"},
            "map": {"shape": (4, 12, 3, 4, 8), "heads": 2, "padding": "random", "map": True},
            "odd_map": {"shape": (6, 35, 5, 7, 9), "heads": 3, "map": True},  # the map over two query blocks
            "term_batch": {"shape": (4, 5, 3, 4, 8), "heads": 2, "term_batch": True},
            # Column scores over 3 chunks, the last partial; random padding, so that some rows pad a
            # whole chunk before valid ones (the running sum rescaled from a max of -inf).
            "tall": {"shape": (4, 7, 70, 5, 8), "heads": 2, "padding": "random"},
            "length_1": {"shape": (1, 1, 1, 1, 1), "padding": "none"},
            "odd": {"shape": (3, 70, 5, 7, 9), "heads": 3},  # queries over two blocks, sizes below the blocks
            "fully_padded": {"shape": (4, 6, 3, 5, 8), "heads": 2, "padding": "all"},  # zeros, not NaN
            "wide": {"shape": (2, 9, 2, 40, 20), "padding": "all"},  # 32 + 16 columns, the tail padded too
            "wider": {"shape": (2, 9, 3, 84, 8), "heads": 2},  # 64 + 32 columns; H odd: a half-empty step
            # Heads of 64 this wide take one row per step (two pass the shared-memory budget).
            "one_row_per_step": {"shape": (2, 9, 3, 230, 64), "heads": 2, "padding": "random"},
            "strided": {"shape": (2, 6, 3, 5, 8), "strided": True},
            "strided_map": {"shape": (4, 15, 3, 5, 8), "heads": 2, "strided": True, "map": True},
            "packed_map": {"shape": (4, 12, 3, 4, 8), "heads": 2, "map": True, "packed": True},
            # The model's heads on an odd 13 x 10 map: 130 queries over two blocks of 128, three of 64.
            "model_heads_map": {"shape": (16, 130, 13, 10, 32), "heads": 8, "map": True},
        },
        gpu_cases={
            **{
                f"{name}_b{batch}": {"shape": (batch * 8, queries, 50, 50, 32), "heads": 8, "map": is_map}
                for batch in REAL_BATCHES
                for name, queries, is_map in (("decoder", 900, False), ("encoder", 2500, True))
            },
            # The stream benchmark's batches: 1216x1344 images, some padded.
            "encoder_1216x1344_b8": {
                "shape": (64, 76 * 84, 76, 84, 32),
                "heads": 8,
                "padding": "all",
                "map": True,
            },
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
    OpCases(
        "key_means",
        key_means,
        key_means_inputs,
        cases={  # shape: (batch, height, width, channels)
            "small": {"shape": (2, 5, 7, 32)},
            "length_1": {"shape": (1, 1, 1, 1)},
            "one_column": {"shape": (2, 9, 1, 16)},  # W = 1
            "odd": {"shape": (3, 13, 11, 150)},  # channels over 3 blocks, the last partial
            "tall": {"shape": (1, 70, 3, 16)},  # columns of 2 steps of BLOCK_L pixels, the last partial
            "wide": {"shape": (2, 3, 84, 24)},  # rows of 2 steps
            "extreme": {"shape": (2, 6, 9, 20), "extreme": FP16_MAX_MAGNITUDE},
            "strided": {"shape": (2, 6, 5, 24), "strided": True},  # src with C and W swapped in memory
        },
        gpu_cases={
            f"{name}_b{batch}": {"shape": (batch, height, width, 256)}
            for batch in REAL_BATCHES
            for name, height, width in (("800x800", 50, 50), ("1216x1344", 76, 84))
        },
        # Both sum in float32 and round once; the sums' orders differ (1 ulp in the output's dtype).
        tolerance={F32: (1e-5, 1e-5), F16: (1e-3, 1e-3), BF16: (1e-2, 1.6e-2)},
        widen=lambda batch, height, width, channels: (batch, height, 4 * width, 4 * channels),
    ),
    OpCases(
        "self_attention",
        self_attention,
        self_attention_inputs,
        cases={  # shape: (batch, length, heads, head_dim)
            "small": {"shape": (2, 5, 2, 8)},
            "length_1": {"shape": (1, 1, 1, 1)},
            "odd": {"shape": (3, 7, 3, 9)},  # heads of 9 channels, below the block of 16
            # Keys over two steps, the last partial; queries over three blocks of 64.
            "long": {"shape": (1, 130, 2, 16)},
            "whole_steps": {"shape": (2, 128, 2, 8)},  # keys in whole steps: no partial, masked one
            "term_batch": {"shape": (2, 9, 2, 8), "term_batch": True},
            "strided": {"shape": (2, 6, 3, 8), "strided": True},
            "model_heads": {"shape": (2, 70, 8, 32)},
        },
        gpu_cases={
            **{f"decoder_b{batch}": {"shape": (batch, 900, 8, 32)} for batch in REAL_BATCHES},
            "term_batch_b2": {"shape": (2, 900, 8, 32), "term_batch": True},
            "heads_of_64_b2": {"shape": (2, 300, 4, 64)},
        },
        # The reference (PyTorch's attention) sums in another order; both keep float32 statistics.
        tolerance={F32: (1e-5, 1e-5), F16: (2e-3, 5e-3), BF16: (2e-2, 3e-2)},
        not_interpreted=(BF16,),  # the interpreter's tl.dot reads bfloat16 as integers
        widen=lambda length, batch_heads, head_dim: (4 * length, batch_heads, 4 * head_dim),
    ),
]


def op_cases(name: str) -> OpCases:
    """The cases of op ``name`` in OP_CASES."""
    return next(spec for spec in OP_CASES if spec.name == name)


def as_tuple(out) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def poisoned_like(outputs: tuple[Tensor, ...]):
    poisoned = tuple(torch.full(o.shape, float("nan"), dtype=o.dtype, device=o.device) for o in outputs)
    return poisoned if len(poisoned) > 1 else poisoned[0]


def assert_matches(spec: OpCases, got, expected, dtype) -> float:
    """Raise AssertionError unless ``got`` matches ``expected`` within the op's tolerance for ``dtype``
    (NaN nowhere); returns the largest |got - expected|."""
    atol, rtol = spec.tolerance.get(dtype, (0.0, 0.0))
    largest = 0.0
    for g, e in zip(as_tuple(got), as_tuple(expected), strict=True):
        if g.dtype != e.dtype or g.shape != e.shape:
            raise AssertionError(
                f"{spec.name}: got {g.dtype} {list(g.shape)}, expected {e.dtype} {list(e.shape)}"
            )
        if g.isnan().any():
            raise AssertionError(
                f"{spec.name}: NaN in the output: an element was not written, or a padded row is NaN"
            )
        torch.testing.assert_close(g, e, atol=atol, rtol=rtol)
        largest = max(largest, (g.double() - e.double()).abs().max().item() if g.numel() else 0.0)
    return largest


def run_launcher(spec: OpCases, args: tuple, dtype) -> float:
    """The launcher writes NaN-poisoned outputs in place and matches the reference; returns the
    largest |kernel - reference|."""
    expected = spec.reference(*args)
    out = poisoned_like(as_tuple(expected))
    got = spec.launcher(*args, out=out)
    if not all(g is o for g, o in zip(as_tuple(got), as_tuple(out), strict=True)):
        raise AssertionError(f"{spec.name}: outputs not written in place")
    return assert_matches(spec, got, expected, dtype)
