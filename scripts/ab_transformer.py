"""The transformer's time for the code this process imports (inductor fp16, R50-DC5, random weights,
800x800): the whole model at batch 1 (median latency) and 8 (back-to-back throughput) with the kernels
of a call grouped by kind, the encoder and the decoder alone (each compiled for its shape with CUDA
graphs, as ``anchordetr-trt bench --parts`` times them; batch 8 unless --part-batches), the outputs
against eager fp32, and ``rcda_aggregate``, ``key_means``, ``self_attention``, the images'
preparation for the stem, the stem's convolution and the prediction heads' products alone at the
model's shapes (``--ops`` picks some). An A/B runs
it once per code tree (PYTHONPATH on each) in one call of one machine; the second run, given the
first's outputs, reports how far they moved:

    PYTHONPATH=<old tree> python -m scripts.ab_transformer --out DIR --tag old
    PYTHONPATH=<new tree> python -m scripts.ab_transformer --out DIR --tag new --previous DIR/outputs_old.pt

``AB_OLD=<a checkout of the other commit> STAGES=ab make gpu`` runs both on the GPU machine. Inductor's
settings are compared in one tree: ``--inductor-options '{"triton.enable_pdl": true}'`` against none
(settings other than the backend's own ``INDUCTOR_OPTIONS``, which its compile applies over these), and
so are ``rcda_aggregate``'s launch constants: ``--rcda-constants '{"MAX_STAGES": 4}'``.
Writes DIR/ab_transformer_<tag>.json and DIR/outputs_<tag>.pt.
"""

import argparse
import contextlib
import functools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import anchordetr_trt as at
from anchordetr_trt.bench.flops import flops_per_image
from anchordetr_trt.bench.parts import split_forward
from anchordetr_trt.bench.timing import latencies_ms, profile, seconds_back_to_back, stats
from anchordetr_trt.environment import environment
from anchordetr_trt.export import example_inputs
from anchordetr_trt.weights import random_model

try:
    from anchordetr_trt.bench.parts import compile_part
except ImportError:  # an A/B's older tree: its parts were compiled so

    def compile_part(call):
        return torch.compile(call, fullgraph=True, dynamic=False, mode="reduce-overhead")


CUDA = torch.device("cuda")
SIZE = 800
BATCHES = (1, 8)
TRANSFORMER_PARTS = ("encoder", "decoder")


def whole_model(model, rounds: int = 2) -> dict:
    """Median latency at each batch and back-to-back throughput, ``rounds`` times (their spread is
    the noise an A/B must beat), and the kernels of a call."""
    out = {}
    for batch in BATCHES:
        images, mask = example_inputs((batch, SIZE, SIZE), CUDA, model.dtype)
        call = functools.partial(model, images, mask)
        runs = []
        for _ in range(rounds):
            latency = stats(latencies_ms(call, CUDA, 20, 200))
            seconds = seconds_back_to_back(call, CUDA, 100)
            runs.append(
                {"median_ms": latency["median"], "p90_ms": latency["p90"], "img_s": 100 * batch / seconds}
            )
        kernels = profile(call, CUDA, calls=5, top=400)  # CUDA-graph replays: the kernels of a whole call
        kernels.pop("table")
        out[f"b{batch}"] = {"runs": runs, "kinds": kernel_kinds(kernels), "kernels": kernels}
        print(f"whole model b{batch}: {runs}, {kernels['total_ms_per_call']:.3f} ms of kernels", flush=True)
    return out


def parts(model, batch: int, profile_calls: int) -> dict:
    """The encoder and the decoder at ``batch``: each compiled for the shape (``compile_part``),
    ms per call back to back, FLOPs and the kernels of a call."""
    dtype = model.input_proj[0][0].weight.dtype  # the backbone's (the heads stay float32)
    images, mask = example_inputs((batch, SIZE, SIZE), CUDA, dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    flops = flops_per_image(model.config, (batch, SIZE, SIZE))
    out = {}
    with torch.no_grad():
        for part in split_forward(model, images, mask):
            if part.name not in TRANSFORMER_PARTS:
                continue
            start = time.perf_counter()
            compiled = compile_part(part.call)

            def run(compiled=compiled, args=part.args):
                torch.compiler.cudagraph_mark_step_begin()
                return compiled(*args)

            for _ in range(3):  # compile, record, replay
                run()
            compile_s = time.perf_counter() - start
            ms = [1000 * seconds_back_to_back(run, CUDA, 50) / 50 for _ in range(3)]
            kernels = profile(run, CUDA, calls=profile_calls, top=200)
            kernels.pop("table")
            gflops = flops[part.name] * batch / 1e9
            out[part.name] = {
                "ms": ms,
                "gflop": gflops,
                "tflop_s": gflops / min(ms),
                "compile_s": compile_s,
                "kinds": kernel_kinds(kernels),
                "kernels": kernels,
            }
            print(f"b{batch} {part.name}: {ms} ms, {gflops:.1f} GFLOP, compile {compile_s:.0f} s", flush=True)
    return out


def outputs(model) -> dict:
    """The outputs of a fixed batch of 2 (seeded images, the second padded)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator).to(CUDA)
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool, device=CUDA)
    mask[1, 600:, :] = True
    mask[1, :, 480:] = True
    got = model(images.to(model.dtype), mask)
    return {
        "images": images,
        "mask": mask,
        **{key: got[key].float().cpu() for key in ("pred_logits", "pred_boxes")},
    }


def errors(got: dict, expected: dict) -> dict:
    return {key: (got[key] - expected[key]).abs().max().item() for key in ("pred_logits", "pred_boxes")}


def graph_us(call, calls: int = 20, replays: int = 20) -> float:
    """Microseconds per call of ``call`` inside a CUDA graph of ``calls`` calls (launch gaps as in the
    model's graphs), median of ``replays`` timed replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            call()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(1000 * start.elapsed_time(end) / calls)
    return sorted(times)[len(times) // 2]


KERNEL_KINDS = (  # (kind, test on a kernel name), first match wins
    ("rcda_aggregate", lambda n: n == "rcda_aggregate_kernel"),
    ("self_attention", lambda n: n == "self_attention_kernel"),
    ("attention glue", lambda n: n.startswith("triton_") and ("rcda_aggregate" in n or "scaled_dot" in n)),
    ("heads merged", lambda n: "clone_transpose" in n),
    ("weight concatenations", lambda n: "cat_slice" in n),
    # The op, or Inductor's two reductions of the map (triton_per_... or triton_red_..., by the shape).
    (
        "key means",
        lambda n: n == "key_means_kernel" or re.fullmatch(r"triton_\w{3}_fused_add_mean(_view)?_\d+", n),
    ),
    ("sdpa", lambda n: "sdpa" in n or "flash" in n or "fmha" in n),
    ("layer_norm", lambda n: n == "layer_norm_kernel"),
    ("add_bias_transpose", lambda n: n == "add_bias_transpose_kernel"),
    ("cublas", lambda n: "nvjet" in n or ("gemm" in n and "cublas" in n)),
    ("cudnn", lambda n: "cudnn" in n),
    ("other triton", lambda n: n.startswith("triton_")),
    ("other", lambda n: True),
)


def kernel_kinds(kernels: dict) -> dict:
    """Microseconds and launches per call of each kind of kernel in a ``profile`` result."""
    calls = kernels["calls"]
    kinds = {kind: {"us": 0.0, "launches": 0.0} for kind, _ in KERNEL_KINDS}
    for row in kernels["top"]:
        kind = next(kind for kind, test in KERNEL_KINDS if test(row["name"]))
        kinds[kind]["us"] += 1000 * row["total_ms"] / calls
        kinds[kind]["launches"] += row["calls"] / calls
    return kinds


# Launch settings tried by ``rcda_microbench(variants=True)``: overrides of rcda_aggregate's module
# constants (BLOCK_Q sets both query blocks, i.e. the block at every grid size).
RCDA_VARIANTS = (
    {"BLOCK_Q": 32},
    {"BLOCK_Q": 32, "NUM_WARPS": 2},
    {"BLOCK_Q": 64},
    {"BLOCK_Q": 128},
    {"BLOCK_Q": 128, "NUM_WARPS": 8},
    {"BLOCK_Q": 256, "NUM_WARPS": 8},
    {"BLOCK_H": 1},
    {"BLOCK_H": 4},
    {"MAX_STAGES": 2},
    {"MAX_STAGES": 4},
    {"COL_CHUNK": 64},
)


def rcda_microbench(variants: bool) -> list[dict]:
    """``rcda_aggregate``'s launcher alone at the model's shapes (inputs as this tree's cases build them
    for the op's signature), inside CUDA graphs, against its reference. ``variants``: also each of
    RCDA_VARIANTS' settings, and the heads laid out as images of one head (each head's values
    contiguous). Rows: ``settings`` {} is the tree's own launch configuration."""
    from anchordetr_trt.custom_ops import cases, rcda_aggregate, reference

    rows = []
    for batch in BATCHES:
        for name, queries in (("decoder", 900), ("encoder", 2500)):
            layouts = {"heads": (batch * 8, 8)}
            if variants:
                layouts["heads_as_images"] = (batch * 8, 1)
            for layout, (n, heads) in layouts.items():
                case = {"shape": (n, queries, 50, 50, 32), "heads": heads, "map": name == "encoder"}
                args = cases.rcda_aggregate_inputs(case, torch.float16, "cuda")
                expected = reference.rcda_aggregate(*args)
                call = functools.partial(rcda_aggregate.rcda_aggregate_triton, *args)
                for settings in [{}, *RCDA_VARIANTS] if variants and layout == "heads" else [{}]:
                    row = _timed(call, expected, rcda_aggregate, rcda_constants(settings))
                    row = {"batch": batch, "part": name, "layout": layout, "settings": settings, **row}
                    rows.append(row)
                    print("rcda_aggregate", row, flush=True)
    return rows


def rcda_constants(settings: dict) -> dict:
    """rcda_aggregate's module constants for one of RCDA_VARIANTS: BLOCK_Q fixes the query block at
    every grid size (SMALL_GRID_BLOCK_Q too)."""
    constants = dict(settings)
    if "BLOCK_Q" in constants:
        constants["SMALL_GRID_BLOCK_Q"] = constants["BLOCK_Q"]
    return constants


@contextlib.contextmanager
def _patched(module, constants: dict):
    """``module``'s attributes set to ``constants`` inside the block (restored after it)."""
    saved = {name: getattr(module, name) for name in constants}
    try:
        for name, value in constants.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def _timed(call: Callable, expected=None, module=None, constants: dict | None = None) -> dict:
    """{"us": per call inside CUDA graphs, "max_abs_err": against ``expected`` (a tensor or a tuple of
    them; left out if None)} of ``call`` run with ``module``'s ``constants`` patched, or {"error"} for a
    configuration that does not build."""
    try:
        with _patched(module, constants or {}):
            got = call()
            row = {"us": graph_us(call)}
        if expected is not None:
            pairs = zip(*((x,) if isinstance(x, torch.Tensor) else x for x in (got, expected)), strict=True)
            row["max_abs_err"] = max((g.float() - e.float()).abs().max().item() for g, e in pairs)
    except Exception as error:  # a configuration that does not build
        row = {"error": str(error).splitlines()[0]}
    return row


# Launch settings tried by ``self_attention_microbench(variants=True)`` (module constants through
# ``self_attention_constants``), at SELF_ATTENTION_BATCHES: 4 and 5 straddle the grid size where the
# shipped launch takes its larger query block on an H100.
SELF_ATTENTION_VARIANTS = (
    {"BLOCK_M": 32},
    {"BLOCK_M": 64},
    {"BLOCK_M": 128},
    {"BLOCK_M": 128, "NUM_WARPS": 8},
    {"BLOCK_N": 32},
    {"BLOCK_N": 128},
    {"BLOCK_M": 128, "BLOCK_N": 128},
    {"BLOCK_M": 128, "BLOCK_N": 128, "NUM_WARPS": 8},
)  # no pipeline depths: 1, 2 and 3 stages compile to one cubin (the loop has no load Triton pipelines)
SELF_ATTENTION_BATCHES = (1, 4, 5, 8)


def self_attention_constants(settings: dict) -> dict:
    """self_attention's module constants for one of SELF_ATTENTION_VARIANTS: BLOCK_M and NUM_WARPS fix
    the queries per program and the warps at every grid size (LARGE_GRID_BLOCK_M and
    LARGE_GRID_NUM_WARPS too, in a tree that has them; unset, the small grid's)."""
    from anchordetr_trt.custom_ops import self_attention

    constants = dict(settings)
    if hasattr(self_attention, "LARGE_GRID_BLOCK_M") and settings.keys() & {"BLOCK_M", "NUM_WARPS"}:
        constants["LARGE_GRID_BLOCK_M"] = settings.get("BLOCK_M", self_attention.BLOCK_M)
        constants["LARGE_GRID_NUM_WARPS"] = settings.get("NUM_WARPS", self_attention.NUM_WARPS)
    return constants


def self_attention_microbench(variants: bool) -> list[dict]:
    """``self_attention``'s launcher alone on the decoder's shapes (900 tokens, 8 heads of 32), inside
    CUDA graphs, against its reference; and what the op replaces: the reference compiled by Inductor
    ("inductor": the terms' add, the heads' split, SDPA and the merge) and SDPA alone on contiguous
    heads ("sdpa"). ``variants``: also SELF_ATTENTION_VARIANTS' settings ({} is the tree's own).
    Empty for a tree without the op."""
    from anchordetr_trt.custom_ops import cases, reference

    try:
        from anchordetr_trt.custom_ops import self_attention
    except ImportError:
        return []
    inductor = torch.compile(reference.self_attention, dynamic=False)
    rows = []
    for batch in SELF_ATTENTION_BATCHES:
        args = cases.self_attention_inputs({"shape": (batch, 900, 8, 32)}, torch.float16, CUDA)
        expected = reference.self_attention(*args)
        q, k, v = torch.randn(3, batch, 8, 900, 32, device=CUDA, dtype=torch.float16).unbind(0)
        sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, q, k, v)
        kernel = functools.partial(self_attention.self_attention_triton, *args)
        runs = [("inductor", None, functools.partial(inductor, *args), expected), ("sdpa", None, sdpa, None)]
        kernel_settings = [{}, *SELF_ATTENTION_VARIANTS] if variants else [{}]
        runs += [("kernel", settings, kernel, expected) for settings in kernel_settings]
        for name, settings, call, against in runs:
            row = _timed(call, against, self_attention, self_attention_constants(settings or {}))
            rows.append({"batch": batch, "call": name, "settings": settings, **row})
            print("self_attention", rows[-1], flush=True)
    return rows


def key_means_microbench(variants: bool) -> list[dict]:
    """``key_means``' launcher alone on the model's 50x50x256 map, inside CUDA graphs, against its
    reference; and Inductor's two reductions of the map ("inductor"), what the op replaces.
    ``variants``: also other (BLOCK_L, BLOCK_C, warps). Empty for a tree without the op."""
    from anchordetr_trt.custom_ops import reference

    try:
        from anchordetr_trt.custom_ops import key_means
    except ImportError:
        return []
    shipped = (key_means.BLOCK_L, key_means.BLOCK_C, getattr(key_means, "NUM_WARPS", None))
    others = [
        *((64, 64, warps) for warps in (2, 4)),
        *((64, channels, warps) for channels, warps in ((128, 4), (128, 8), (256, 8))),
        (32, 128, 4),
        (32, 256, 8),
        (128, 64, 8),
    ]
    configs = [shipped, *(other for other in others if other != shipped)] if variants else [shipped]
    inductor = torch.compile(lambda src, row, col: (src.mean(1) + row, src.mean(2) + col), dynamic=False)
    rows = []
    for batch in BATCHES:
        src = torch.randn(batch, 50, 50, 256, device=CUDA, dtype=torch.float16)
        args = (src, torch.randn_like(src[:, 0]), torch.randn_like(src[:, :, 0]))
        expected = reference.key_means(*args)
        for name, blocks in [*((None, config) for config in configs), ("inductor", None)]:
            call = functools.partial(inductor if blocks is None else key_means.key_means_triton, *args)
            if blocks is not None:
                key_means.BLOCK_L, key_means.BLOCK_C, key_means.NUM_WARPS = blocks
                # What the launcher uses (a tree whose warps follow the tile ignores NUM_WARPS).
                meta = key_means.key_means_launch_config(batch, 50, 50, 256)[1]
                name = f"BLOCK_L {meta['BLOCK_L']}, BLOCK_C {meta['BLOCK_C']}, warps {meta['num_warps']}"
            row = _timed(call, expected)
            key_means.BLOCK_L, key_means.BLOCK_C, key_means.NUM_WARPS = shipped
            rows.append({"batch": batch, "config": name, "shipped": blocks == shipped, **row})
            print("key_means", rows[-1], flush=True)
    return rows


def images_microbench(variants: bool) -> list[dict]:
    """The images' preparation for the stem alone, as the inductor backend's compiled function runs it
    (on its views [B, 3, H/32, 32, W/32, 32], dynamic over a range as ``compile()`` marks them, to
    [B, 4, H, W] channels_last with a zero fourth channel), at 800x800 and 1344x1344, with the bytes it
    moves per microsecond; against a device-to-device copy of as many bytes (the memory's rate).
    ``variants``: also the padding as Inductor compiles it, on the views as they are ("inductor") and on
    the last dim of an NHWC permute ("nhwc_pad"). In a tree without the stem's op, "shipped" is
    Inductor's padding."""
    from torch.fx.experimental import _config as fx_config

    from anchordetr_trt.backends import inductor
    from anchordetr_trt.backends.inductor import fold
    from anchordetr_trt.spec import CompileSpec

    try:  # the stem's own op and the padding as PyTorch writes it, where the tree has them
        from anchordetr_trt.custom_ops.fused import four_channels as stem_images
        from anchordetr_trt.custom_ops.reference import four_channels
    except ImportError:  # a tree whose stem pads the images as Inductor compiles it
        from anchordetr_trt.backends.inductor_rewrites import four_channels

        stem_images = None

    def padded_by_inductor(images, mask):
        return four_channels(fold(images))  # the backend's reshape, then the padding to channels_last

    def shipped(images, mask):
        return padded_by_inductor(images, mask) if stem_images is None else stem_images(fold(images))

    def nhwc_pad(images, mask):
        batch, channels, rows, _, columns, _ = images.shape
        nhwc = images.reshape(batch, channels, rows * 32, columns * 32).permute(0, 2, 3, 1)
        return torch.nn.functional.pad(nhwc, (0, 1)).contiguous().permute(0, 3, 1, 2)

    spec = CompileSpec(
        "fp16" if CUDA.type == "cuda" else "fp32", CUDA, (1, 320, 320), (8, 800, 1216), (8, 1344, 1344)
    )
    others = {"inductor": padded_by_inductor} if stem_images is not None else {}
    candidates = {"shipped": shipped, **({**others, "nhwc_pad": nhwc_pad} if variants else {})}
    compiled = {name: torch.compile(fn, fullgraph=True, dynamic=False) for name, fn in candidates.items()}
    rows = []
    for batch, size in ((1, SIZE), (8, SIZE), (8, 1344)):
        images, mask = inductor.unfold(*example_inputs((batch, size, size), CUDA, torch.float16))
        inductor._mark_dynamic(images, mask, spec)
        with fx_config.patch(backed_size_oblivious=True):
            expected = padded_by_inductor(images, mask)  # eager: PyTorch's padding
            moved = images.numel() * 2 + expected.numel() * 2
            source = torch.empty(moved // 4, dtype=torch.float16, device=CUDA)
            target = torch.empty_like(source)
            calls = {name: functools.partial(fn, images, mask) for name, fn in compiled.items()}
            calls["copy of as many bytes"] = functools.partial(target.copy_, source)
            for name, call in calls.items():
                got = call()
                exact = name.startswith("copy") or (
                    torch.equal(got, expected) and got.stride() == expected.stride()
                )
                us = graph_us(call)
                row = {
                    "batch": batch,
                    "size": size,
                    "impl": name,
                    "us": us,
                    "tb_s": moved / us / 1e6,
                    "exact": exact,
                }
                rows.append(row)
                print("images", row, flush=True)
    return rows


def heads_microbench(variants: bool) -> list[dict]:
    """The fp16 model's class head and box head's last layer alone (``HalfProductLinear``, 256 -> 91
    and 256 -> 4, float32 in and out), compiled by Inductor as the model has them, on the decoder's
    last layer (900 queries an image) at each of BATCHES, against the float32 product (max_abs_err).
    ``variants``: also the product with the float16 weight unpadded ("unpadded"). Empty for a tree
    without ``HalfProductLinear``."""
    try:
        from anchordetr_trt.backends.inductor_rewrites import HalfProductLinear
    except ImportError:
        return []

    class Unpadded(HalfProductLinear):  # the float16 weight as it is (its rows not padded)
        ALIGN = 1

    torch.manual_seed(0)
    rows = []
    for outputs in (91, 4):
        linear = torch.nn.Linear(256, outputs).to(CUDA)
        candidates = {"shipped": HalfProductLinear(linear)}
        if variants:
            candidates["unpadded"] = Unpadded(linear)
        compiled = {name: torch.compile(fn, fullgraph=True, dynamic=False) for name, fn in candidates.items()}
        for batch in BATCHES:
            x = torch.randn(batch, 900, 256, device=CUDA)
            with torch.no_grad():
                expected = linear(x)
                for name, fn in compiled.items():
                    row = {
                        "outputs": outputs,
                        "batch": batch,
                        "impl": name,
                        **_timed(functools.partial(fn, x), expected),
                    }
                    rows.append(row)
                    print("heads", row, flush=True)
    return rows


def space_to_depth_weight(weight: Tensor) -> Tensor:
    """A 7x7 stride-2 convolution's weight [K, C, 7, 7] (padding 3) as the 4x4 stride-1 one [K, 4C, 4, 4]
    that computes the same outputs from ``F.pixel_unshuffle(x, 2)`` zero-padded 2 before and 1 after:
    tap (2a + dy - 1, 2b + dx - 1) of the 7x7 kernel is tap (a, b) of channel (c, dy, dx)."""
    return F.pixel_unshuffle(F.pad(weight, (1, 0, 1, 0)), 2)


def stem_microbench(variants: bool) -> list[dict]:
    """The stem's convolution alone (R50's 7x7, stride 2, 3 -> 64 channels, bias and ReLU in cuDNN's
    epilogue, float16 channels_last) at each of BATCHES and 800x800, on the images as the inductor
    backend's stem reads them (padded to 4 channels, "shipped"), against the float32 convolution
    (max_abs_err). ``variants``: the same convolution on images padded to 8 channels
    ("eight_channels"), and in the space-to-depth form ("space_to_depth": each 2x2 block of pixels as
    16 channels, a 4x4 stride-1 convolution of ``space_to_depth_weight``), the images' rearrangement
    left out of the time as the padding is (both would be the images' one copy)."""
    from anchordetr_trt.backends.inductor_rewrites import conv_bias_relu

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 64, 7, 2, 3).to(CUDA)
    weight, bias = conv.weight.detach(), conv.bias.detach()

    def channels(x: Tensor, count: int) -> Tensor:  # [B, C, ...] zero-padded to ``count`` channels
        return F.pad(x, (0, 0, 0, 0, 0, count - x.shape[1])).contiguous(memory_format=torch.channels_last)

    forms = {"shipped": (4, lambda x: x, lambda w: w, (2, 2), (3, 3))}
    if variants:
        forms["eight_channels"] = (8, lambda x: x, lambda w: w, (2, 2), (3, 3))
        forms["space_to_depth"] = (
            4,
            lambda x: F.pad(F.pixel_unshuffle(x, 2), (2, 1, 2, 1)).contiguous(
                memory_format=torch.channels_last
            ),
            space_to_depth_weight,
            (1, 1),
            (0, 0),
        )
    rows = []
    for batch in BATCHES:
        images = torch.randn(batch, 3, SIZE, SIZE, device=CUDA)
        with torch.no_grad():
            expected = torch.relu(conv(images))
            for name, (count, rearrange, rearranged, stride, padding) in forms.items():
                x = rearrange(channels(images, count)).half()
                w = rearranged(channels(weight, count)).half().contiguous(memory_format=torch.channels_last)
                b = bias.half()
                call = functools.partial(conv_bias_relu, x, w, b, list(stride), list(padding), [1, 1])
                row = {"batch": batch, "size": SIZE, "impl": name, **_timed(call, expected)}
                rows.append(row)
                print("stem", row, flush=True)
    return rows


MICROBENCHES: dict[str, Callable[[bool], list[dict]]] = {  # report key: microbench(variants)
    "rcda_aggregate": rcda_microbench,
    "key_means": key_means_microbench,
    "self_attention": self_attention_microbench,
    "images": images_microbench,
    "heads": heads_microbench,
    "stem": stem_microbench,
}


def _json_object(text: str, example: str) -> dict:
    """``text`` parsed as a JSON object, else ArgumentTypeError showing ``example``."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, e.g. '{example}', got {text}")
    return value


def _options(text: str) -> dict:
    """--inductor-options: a JSON object of torch._inductor.config settings, none of which the backend
    sets itself (its INDUCTOR_OPTIONS are applied over the global config, so they would compare equal
    trees)."""
    options = _json_object(text, '{"triton.enable_pdl": true}')
    fixed = sorted(set(options) & set(_backend_options()))
    if fixed:
        raise argparse.ArgumentTypeError(
            f"the inductor backend sets {', '.join(fixed)} itself (INDUCTOR_OPTIONS in "
            "backends/inductor.py), over these settings: compare such a change as an A/B of two trees "
            "(STAGES=ab)"
        )
    return options


def _rcda_settings(text: str) -> dict:
    """--rcda-constants: a JSON object of rcda_aggregate's launch constants (names as in RCDA_VARIANTS),
    each an int constant of the op, set to an int or null."""
    from anchordetr_trt.custom_ops import rcda_aggregate

    settings = _json_object(text, '{"MAX_STAGES": 4}')
    for name, value in settings.items():
        if not isinstance(getattr(rcda_aggregate, name, None), int) or name.startswith("_"):
            raise argparse.ArgumentTypeError(
                f"{name} is not one of rcda_aggregate's int launch constants (e.g. BLOCK_Q, NUM_WARPS, "
                "BLOCK_H, MAX_STAGES, COL_CHUNK)"
            )
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise argparse.ArgumentTypeError(f"{name} must be an int or null, got {value!r}")
    return settings


def _backend_options() -> dict:
    """The settings the imported tree's backend compiles with ({} for a tree before them)."""
    from anchordetr_trt.backends import inductor

    return getattr(inductor, "INDUCTOR_OPTIONS", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--commit", help="the code tree's git commit, recorded in the report")
    parser.add_argument("--previous", type=Path, help="outputs_<tag>.pt of the other tree's run")
    parser.add_argument(
        "--ops-only",
        action="store_true",
        help="time the ops alone with their variants (rcda_aggregate, key_means, self_attention, the images' preparation, the heads' products, the stem's convolution), not the model",
    )
    parser.add_argument(
        "--inductor-options",
        type=_options,
        default={},
        help="torch._inductor.config settings for the model's compiles, as JSON: e.g. '{\"triton.enable_pdl\": true}'",
    )
    parser.add_argument(
        "--rcda-constants",
        type=_rcda_settings,
        default={},
        help="rcda_aggregate's launch constants for every call of the run, as JSON: e.g. '{\"MAX_STAGES\": 4}'",
    )
    parser.add_argument(
        "--ops",
        nargs="*",
        choices=MICROBENCHES,
        default=list(MICROBENCHES),
        help="the ops timed alone (all by default; none with --ops alone: the model only)",
    )
    parser.add_argument("--part-batches", type=int, nargs="*", default=[8])
    parser.add_argument("--profile-calls", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ops_only and args.inductor_options:
        parser.error("--inductor-options applies to the model's compiles, which --ops-only leaves out")
    if args.ops_only and not args.ops:
        parser.error("--ops-only with no op to time: name ops after --ops, or leave --ops-only out")
    report = {
        "tag": args.tag,
        "commit": args.commit,
        "inductor_options": args.inductor_options,
        "rcda_constants": args.rcda_constants,
        "environment": environment(),
    }
    path = args.out / f"ab_transformer_{args.tag}.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=1))

    from anchordetr_trt.custom_ops import rcda_aggregate

    with _patched(rcda_aggregate, rcda_constants(args.rcda_constants)):  # every launch of the run
        for name in args.ops:
            report[name] = MICROBENCHES[name](args.ops_only)
        save()
        if args.ops_only:
            return
        with torch._inductor.config.patch(args.inductor_options):  # the whole model's and the parts' compiles
            model_runs(args, report, save)
    print(f"wrote {path}")


def model_runs(args: argparse.Namespace, report: dict, save: Callable[[], None]) -> None:
    """The whole model, its outputs and the parts, into ``report`` (saved after each)."""
    start = time.perf_counter()
    compiled = at.compile(
        random_model("r50-dc5"), backend="inductor", device="cuda",
        min_shape=(1, SIZE, SIZE), opt_shape=(8, SIZE, SIZE), max_shape=(8, SIZE, SIZE),
    )  # fmt: skip
    report["compile_s"] = time.perf_counter() - start
    report["whole_model"] = whole_model(compiled)
    save()
    got = outputs(compiled)
    reference = random_model("r50-dc5").set_fused_ops(False).to(CUDA).eval()
    with torch.no_grad():
        expected = reference(got["images"], got["mask"])
    report["max_abs_err_vs_eager_fp32"] = errors(got, {k: v.float().cpu() for k, v in expected.items()})
    if args.previous is not None and args.previous.is_file():
        report["max_abs_diff_vs_previous"] = errors(got, torch.load(args.previous))
    torch.save({key: got[key] for key in ("pred_logits", "pred_boxes")}, args.out / f"outputs_{args.tag}.pt")
    print("errors", report["max_abs_err_vs_eager_fp32"], report.get("max_abs_diff_vs_previous"), flush=True)
    save()
    prepared = compiled.runner.model  # the backend's rewritten fp16 model, as bench --parts times it
    report["parts"] = {}
    for batch in args.part_batches:
        report["parts"][f"b{batch}"] = parts(prepared, batch, args.profile_calls)
        save()


if __name__ == "__main__":
    main()
