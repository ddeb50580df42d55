"""rcda_aggregate alone at the model's shapes (batch 1 and 8, 800x800): the shipped kernel against a
row-wise main loop (ROWWISE), CUDA-graph medians, each output compared with the shipped kernel's.

ROWWISE keeps the row probabilities [BLOCK_Q, W] as the left-hand side of every product (loop-invariant)
and takes one row h per step: part = probs_row @ value[h] ([BLOCK_Q, D], float32), then
acc += probs_col[:, h] * part. It drops the [BLOCK_Q, BLOCK_H * W] joint weights (64 registers a
thread at 128 queries, 4 warps) for D float32 multiply-adds per query and row. Usage:
python -m scripts.bench_rcda_rowwise OUT.json (CUDA); --check under TRITON_INTERPRET=1 (CPU); --sass
(CPU, no interpreter): each setting's sm_90 build for the encoder's 50x50 map, its registers and its
main loop's instructions (a step: BLOCK_H rows h; the shipped kernel's: two)."""

import json
import sys
import time

import torch
import triton
import triton.language as tl

from anchordetr_trt.custom_ops import rcda_aggregate as op
from anchordetr_trt.custom_ops.cases import rcda_aggregate_inputs
from anchordetr_trt.custom_ops.masked_softmax import softmax_numerators, softmax_scale


@triton.jit
def _row_product(
    probs_row,
    probs_row_tail,
    value_base,
    h,
    w,
    w_tail,
    d,
    d_ok,
    width,
    value_channels,
    TAIL_W: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """probs_row @ value[h] ([BLOCK_Q, BLOCK_D], float32): W in BLOCK_W columns, then TAIL_W more."""
    value = tl.load(
        value_base + (h * width + w[:, None]) * value_channels + d[None, :],
        mask=(w < width)[:, None] & d_ok[None, :],
        other=0.0,
    )
    part = tl.dot(probs_row, value, input_precision=DOT_PRECISION)
    if TAIL_W > 0:
        value_tail = tl.load(
            value_base + (h * width + w_tail[:, None]) * value_channels + d[None, :],
            mask=(w_tail < width)[:, None] & d_ok[None, :],
            other=0.0,
        )
        part = tl.dot(probs_row_tail, value_tail, acc=part, input_precision=DOT_PRECISION)
    return part


@triton.jit(do_not_specialize=["num_queries", "height", "width", "map_width"])
def rowwise_kernel(
    queries_ptr,
    row_term_ptr,
    col_term_ptr,
    k_col_ptr,
    mask_col_ptr,
    k_row_ptr,
    mask_row_ptr,
    values_ptr,
    out_ptr,
    probs_col_ptr,
    num_queries,
    heads,
    height,
    width,
    head_dim,
    query_channels,
    map_width,
    row_term_stride_b,
    row_term_stride_y,
    row_term_stride_x,
    col_term_stride_b,
    col_term_stride_y,
    col_term_stride_x,
    value_channels,
    value_channel,
    scale,
    BLOCK_Q: tl.constexpr,
    BLOCK_W: tl.constexpr,
    TAIL_W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    COL_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The shipped kernel's arguments and grid; BLOCK_H (1 or 2) rows h a step, each its own product."""
    n = tl.program_id(1).to(tl.int64)
    batch, head = n // heads, n % heads
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    w = tl.arange(0, BLOCK_W)
    d = tl.arange(0, BLOCK_D)
    q_ok, d_ok = q < num_queries, d < head_dim
    ok = q_ok[:, None] & d_ok[None, :]
    channels = heads * head_dim
    query_rows = batch * num_queries + q
    query_offsets = query_rows * query_channels + head * head_dim
    head_offset = head * head_dim
    q_col = op._projected_queries(
        queries_ptr + channels,
        query_offsets,
        col_term_ptr,
        op._term_offsets(batch, q, map_width, col_term_stride_b, col_term_stride_y, col_term_stride_x)
        + head_offset,
        d,
        ok,
        scale,
    )
    row_index = n * num_queries + q
    op._column_probabilities(
        q_col,
        k_col_ptr,
        mask_col_ptr,
        probs_col_ptr,
        row_index,
        q_ok,
        n,
        batch,
        height,
        head_dim,
        d,
        d_ok,
        BLOCK_Q,
        COL_CHUNK,
        DOT_PRECISION,
    )
    tl.debug_barrier()
    q_row = op._projected_queries(
        queries_ptr,
        query_offsets,
        row_term_ptr,
        op._term_offsets(batch, q, map_width, row_term_stride_b, row_term_stride_y, row_term_stride_x)
        + head_offset,
        d,
        ok,
        scale,
    )
    scores, valid = op._key_scores(
        q_row, k_row_ptr, mask_row_ptr, n, batch, width, head_dim, w, d, d_ok, DOT_PRECISION
    )
    row_max = tl.max(scores, axis=1)
    if TAIL_W > 0:
        w_tail = BLOCK_W + tl.arange(0, TAIL_W)
        scores_tail, valid_tail = op._key_scores(
            q_row, k_row_ptr, mask_row_ptr, n, batch, width, head_dim, w_tail, d, d_ok, DOT_PRECISION
        )
        row_max = tl.maximum(row_max, tl.max(scores_tail, axis=1))
    numerators = softmax_numerators(scores, valid, row_max)
    total = tl.sum(numerators, axis=1)
    if TAIL_W > 0:
        numerators_tail = softmax_numerators(scores_tail, valid_tail, row_max)
        total += tl.sum(numerators_tail, axis=1)
    row_scale = softmax_scale(total)[:, None]
    probs_row = (numerators * row_scale).to(values_ptr.dtype.element_ty)
    if TAIL_W > 0:
        probs_row_tail = (numerators_tail * row_scale).to(values_ptr.dtype.element_ty)
    else:
        w_tail = w
        probs_row_tail = probs_row
    value_base = values_ptr + batch * height * width * value_channels + value_channel + head_offset
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    col_probs = probs_col_ptr + row_index * height
    p_col = tl.load(col_probs, mask=q_ok, other=0.0).to(tl.float32)
    if BLOCK_H == 1:
        for h in range(0, height):
            p_next = tl.load(col_probs + h + 1, mask=q_ok & (h + 1 < height), other=0.0).to(tl.float32)
            part = _row_product(probs_row, probs_row_tail, value_base, h, w, w_tail, d, d_ok, width,
                                value_channels, TAIL_W, DOT_PRECISION)  # fmt: skip
            acc += p_col[:, None] * part
            p_col = p_next
    else:  # two rows a step, their products independent of each other
        p_odd = tl.load(col_probs + 1, mask=q_ok & (height > 1), other=0.0).to(tl.float32)
        for h in range(0, height, 2):
            p_next = tl.load(col_probs + h + 2, mask=q_ok & (h + 2 < height), other=0.0).to(tl.float32)
            p_odd_next = tl.load(col_probs + h + 3, mask=q_ok & (h + 3 < height), other=0.0).to(tl.float32)
            part = _row_product(probs_row, probs_row_tail, value_base, h, w, w_tail, d, d_ok, width,
                                value_channels, TAIL_W, DOT_PRECISION)  # fmt: skip
            part_odd = _row_product(probs_row, probs_row_tail, value_base, h + 1, w, w_tail, d,
                                    d_ok & (h + 1 < height), width, value_channels, TAIL_W,
                                    DOT_PRECISION)  # fmt: skip
            acc += p_col[:, None] * part
            acc += p_odd[:, None] * part_odd
            p_col, p_odd = p_next, p_odd_next
    acc = tl.where(width > BLOCK_W + TAIL_W, float("nan"), acc)
    out_ptrs = out_ptr + (query_rows * channels + head_offset)[:, None] + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=ok)


SHIPPED_KERNEL, SHIPPED_CONFIG = op.rcda_aggregate_kernel, op.rcda_aggregate_launch_config


def run(args, kernel=None, **meta):
    """The op's launch with ``kernel`` (None: shipped) and its launch meta overridden by ``meta``."""

    def config(*a, **k):
        grid, shipped = SHIPPED_CONFIG(*a, **k)
        return grid, shipped | meta

    op.rcda_aggregate_kernel = kernel or SHIPPED_KERNEL
    op.rcda_aggregate_launch_config = config if meta or kernel else SHIPPED_CONFIG
    try:
        return op.rcda_aggregate_triton(*args, block_q=meta.get("BLOCK_Q"))
    finally:
        op.rcda_aggregate_kernel, op.rcda_aggregate_launch_config = SHIPPED_KERNEL, SHIPPED_CONFIG


CONFIGS = {  # name: (kernel, meta overrides)
    "shipped": (None, {}),
    **{
        f"rowwise q{q} h{h} w{warps} s{stages}": (
            rowwise_kernel,
            {"BLOCK_Q": q, "BLOCK_H": h, "num_warps": warps, "num_stages": stages},
        )
        for q, h, warps, stages in (
            (128, 1, 4, 3),
            (128, 2, 4, 3),
            (128, 1, 8, 3),
            (128, 2, 8, 3),
            (64, 1, 4, 3),
            (64, 2, 4, 3),
        )
    },
}


def check() -> None:
    """Under TRITON_INTERPRET=1: ROWWISE against the shipped kernel on small cases of both kinds."""
    for case in (
        {"shape": (4, 12, 3, 4, 32), "heads": 2, "map": True, "packed": True},
        {"shape": (4, 9, 5, 21, 32), "heads": 2},
        {"shape": (2, 7, 3, 84, 32), "heads": 2},  # 84 columns: 64 + a 32-column tail
    ):
        args = rcda_aggregate_inputs(case, torch.float16, "cpu")
        ref = run(args)
        for name, (kernel, meta) in CONFIGS.items():
            got = run(args, kernel, **meta)
            err = (got.float() - ref.float()).abs().max().item()
            print(name, case["shape"], "max abs diff", err, flush=True)
            assert err < 2e-3, (name, err)


def bench(path: str) -> None:
    from triton.testing import do_bench_cudagraph

    rows, start = [], time.time()
    for batch in (8, 1):
        for stage, queries in (("encoder", 2500), ("decoder", 900)):
            case = {"shape": (batch * 8, queries, 50, 50, 32), "heads": 8}
            if stage == "encoder":
                case |= {"map": True, "packed": True}
            args = rcda_aggregate_inputs(case, torch.float16, "cuda")
            ref = run(args)
            row = {"stage": stage, "batch": batch}
            for name, (kernel, meta) in CONFIGS.items():
                if batch == 1 and name != "shipped" and meta.get("BLOCK_Q") == 128:
                    continue  # batch 1 runs 64-query blocks
                try:
                    got = run(args, kernel, **meta)
                    us = 1e3 * do_bench_cudagraph(lambda a=args, k=kernel, m=meta: run(a, k, **m), rep=200)
                    diff = (got.float() - ref.float()).abs().max().item()
                    row[name] = {"us": round(us, 2), "max_abs_diff": diff}
                except Exception as error:
                    row[name] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            print(json.dumps(row), f"{time.time() - start:.0f} s", flush=True)
            rows.append(row)
            environment = {
                "gpu": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "triton": triton.__version__,
            }
            with open(path, "w") as f:
                json.dump({**environment, "rows": rows}, f, indent=1)


def sass() -> None:
    """Each setting's build as ``scripts.sass_rcda`` reads the shipped kernel's."""
    import collections
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    from scripts import sass_rcda

    for name, (kernel, meta) in CONFIGS.items():
        _, launch = SHIPPED_CONFIG(2500, 64, 50, 32, 2, block_q=meta.get("BLOCK_Q"))
        build = sass_rcda._build(
            kernel or SHIPPED_KERNEL, launch | meta, sass_rcda.POINTERS, sass_rcda.MASKS,
            sass_rcda.DIVISIBLE, "scale",
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            cubin = Path(folder) / "rcda.cubin"
            cubin.write_bytes(build.cubin)
            nvdisasm = Path(triton.knobs.nvidia.ptxas.path).parent / "nvdisasm"
            text = subprocess.run([nvdisasm, cubin], capture_output=True, text=True, check=True).stdout
        loop = sass_rcda.main_loop(text)
        counts = collections.Counter(sass_rcda.opcode(instruction) for instruction in loop)
        used = sass_rcda.registers(text)
        programs = 65536 // (32 * build.warps * -(-used // 8) * 8)
        kinds = ", ".join(f"{counts[k]} {k}" for k in sorted(counts) if re.match("HGMMA|FFMA|HMUL2|BAR", k))
        print(
            f"{name}: {used} registers ({programs} programs per SM), {len(re.findall(r'STL|LDL', text))} "
            f"spills, main loop {len(loop)} instructions ({kinds}), triton {triton.__version__}"
        )


if __name__ == "__main__":
    {"--check": check, "--sass": sass}.get(sys.argv[1], lambda: bench(sys.argv[1]))()
