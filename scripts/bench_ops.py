"""Benchmark each fused op against the unfused eager PyTorch graph it replaces (its reference), at
AnchorDETR's real shapes: DC5 at 800x800 (a 50x50 feature map), 8 heads, C = 256, 2500 encoder and
900 decoder queries, batch 1 and 8. ``masked_softmax`` and ``add_bias_transpose`` are timed at those
query counts as ops in their own right: the model no longer calls the first (``rcda_aggregate``
computes both of RCDA's softmaxes) and calls the second on the encoder's row and column keys only
([B, W, C] and [B, H, C], launch-bound sizes).

For each op: median GPU time of both (CUDA graph replays, triton.testing.do_bench_cudagraph), the
speedup, the bytes the op must move (inputs read once, outputs written once), the bandwidth that
achieves, and its share of the copy bandwidth measured in the same run (a large device-to-device
copy, read + write). Targets: >= 2x faster than eager and >= 60% of the copy bandwidth.

    python -m scripts.bench_ops --out DIR   # writes DIR/bench_ops.json, prints a table
"""

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from anchordetr_trt.custom_ops import fused, reference
from anchordetr_trt.custom_ops.cases import key_means_inputs, rcda_aggregate_inputs, self_attention_inputs

SPEEDUP_TARGET = 2.0
ROOFLINE_TARGET_PCT = 60.0
COPY_BYTES = 1 << 30  # far larger than the L2 cache


@dataclass(frozen=True)
class Shapes:
    """The model's sizes at one input resolution."""

    feature: tuple[int, int] = (50, 50)  # DC5 (stride 16) at 800x800
    heads: int = 8
    channels: int = 256
    decoder_queries: int = 900
    pos_feats: int = 256


@dataclass(frozen=True)
class Case:
    op: str
    name: str
    batch: int
    args: tuple
    nbytes: int  # bytes that must move: every input read once, every output written once

    def run_fused(self):
        return getattr(fused, self.op)(*self.args)

    def run_eager(self):
        return getattr(reference, self.op)(*self.args)


def _nbytes(*tensors: Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _image_mask(batch: int, height: int, width: int, device) -> Tensor:
    """Padding at the bottom and right of every image but the first, as a batch of mixed sizes has."""
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    for i in range(1, batch):
        mask[i, height - (i * height) // (2 * batch) :] = True
        mask[i, :, width - (i * width) // (3 * batch) :] = True
    return mask


def make_cases(batches: tuple[int, ...], dtype: torch.dtype, device, shapes: Shapes = Shapes()) -> list[Case]:
    """Every op at the model's shapes: the encoder (queries = every feature pixel) and the decoder."""
    height, width = shapes.feature
    cases = []
    for batch in batches:
        mask = _image_mask(batch, height, width, device)
        key_mask = mask[:, 0, :].contiguous()
        stages = (("encoder", height * width), ("decoder", shapes.decoder_queries))
        for stage, queries in stages:
            scores = torch.randn(batch, shapes.heads, queries, width, device=device, dtype=dtype)
            cases.append(
                Case(
                    "masked_softmax",
                    stage,
                    batch,
                    (scores, key_mask),
                    2 * _nbytes(scores) + _nbytes(key_mask),
                )
            )
        for stage, queries in stages:
            x = torch.randn(batch, queries, shapes.channels, device=device, dtype=dtype)
            weight, bias = torch.randn(2, shapes.channels, device=device, dtype=dtype)
            residual = torch.randn_like(x)
            args = (x, weight, bias, 1e-5, residual)
            cases.append(Case("layer_norm", stage, batch, args, _nbytes(x, weight, bias, residual, x)))
        for stage, queries in stages:
            x = torch.randn(batch, queries, shapes.channels, device=device, dtype=dtype)
            bias = torch.randn(shapes.channels, device=device, dtype=dtype)
            args = (x, bias, shapes.heads, (shapes.channels // shapes.heads) ** -0.5)
            cases.append(Case("add_bias_transpose", stage, batch, args, 2 * _nbytes(x) + _nbytes(bias)))
        for stage, queries in stages:
            n, head_dim = batch * shapes.heads, shapes.channels // shapes.heads
            case = {
                "shape": (n, queries, height, width, head_dim),
                "heads": shapes.heads,
                "map": stage == "encoder",
            }
            args = rcda_aggregate_inputs(case, dtype, device)
            # What the op reads of the packed projections (two query and one value slice of C) and writes.
            projected = (
                (2 * batch * queries + batch * height * width) * shapes.channels * args[0].element_size()
            )
            out_bytes = batch * queries * shapes.channels * args[0].element_size()
            cases.append(
                Case("rcda_aggregate", stage, batch, args, _nbytes(*args[1:7]) + projected + out_bytes)
            )
        # The decoder's self-attention: packed queries, keys and values in, their position terms (shared
        # by the batch) in, the merged heads out.
        head_dim = shapes.channels // shapes.heads
        shape = (batch, shapes.decoder_queries, shapes.heads, head_dim)
        args = self_attention_inputs({"shape": shape}, dtype, device)
        attention_bytes = (
            _nbytes(args[0]) + args[1][0].numel() * args[1].element_size() + _nbytes(args[0]) // 3
        )
        cases.append(Case("self_attention", "decoder", batch, args, attention_bytes))
        # RCDA's keys: every encoder layer and the decoder take them of one [B, H, W, C] map.
        args = key_means_inputs({"shape": (batch, height, width, shapes.channels)}, dtype, device)
        key_bytes = _nbytes(args[0]) + 2 * _nbytes(*args[1:])  # embeddings in, keys out
        cases.append(Case("key_means", "features", batch, args, key_bytes))
        lines = batch * (height + width)  # the first column and the first row of every image
        cases.append(Case("mask2pos", "features", batch, (mask,), lines * (1 + 4)))
        posemb_bytes = lines * (1 + 4 * shapes.pos_feats)
        cases.append(Case("mask2posemb", "features", batch, (mask, shapes.pos_feats, 10000.0), posemb_bytes))
    return cases


def max_abs_diff(got, expected) -> float:
    pairs = zip(got, expected, strict=True) if isinstance(got, tuple) else [(got, expected)]
    return max((g.float() - e.float()).abs().max().item() for g, e in pairs)


def matches(got, expected) -> bool:
    """Loose agreement (fp16 outputs of magnitude up to ~10 round to 1e-2): a sanity check that the
    timed kernel computes the op; tests/test_custom_ops.py holds the tight comparisons."""
    pairs = zip(got, expected, strict=True) if isinstance(got, tuple) else [(got, expected)]
    return all(torch.allclose(g.float(), e.float(), rtol=1e-2, atol=1e-2) for g, e in pairs)


def measure(cases: list[Case], time_ms: Callable[[Callable], float], copy_gbps: float) -> list[dict]:
    """One result row per case; ``time_ms(fn)`` is the median time of a call of ``fn``."""
    rows = []
    for case in cases:
        fused_us, eager_us = 1e3 * time_ms(case.run_fused), 1e3 * time_ms(case.run_eager)
        gbps = case.nbytes / fused_us / 1e3
        speedup, roofline_pct = eager_us / fused_us, 100 * gbps / copy_gbps
        got, expected = case.run_fused(), case.run_eager()
        rows.append(
            {
                "op": case.op,
                "case": case.name,
                "batch": case.batch,
                "shapes": [list(a.shape) for a in case.args if isinstance(a, Tensor)],
                "fused_us": round(fused_us, 2),
                "eager_us": round(eager_us, 2),
                "speedup": round(speedup, 2),
                "bytes": case.nbytes,
                "fused_gbps": round(gbps, 1),
                "roofline_pct": round(roofline_pct, 1),
                "meets_targets": speedup >= SPEEDUP_TARGET and roofline_pct >= ROOFLINE_TARGET_PCT,
                "max_abs_diff": max_abs_diff(got, expected),
                "matches_reference": matches(got, expected),
            }
        )
    return rows


def copy_bandwidth(time_ms: Callable[[Callable], float], device, nbytes: int = COPY_BYTES) -> float:
    """GB/s of a device-to-device copy of ``nbytes``, counting the read and the write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = time_ms(lambda: dst.copy_(src)) / 1e3
    return 2 * nbytes / seconds / 1e9


def table(rows: list[dict], copy_gbps: float) -> str:
    header = f"{'op':<20}{'case':<10}{'B':>3}{'fused us':>10}{'eager us':>10}{'speedup':>9}{'GB/s':>8}{'% copy':>8}  ok"
    lines = [f"copy bandwidth: {copy_gbps:.0f} GB/s", header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['op']:<20}{r['case']:<10}{r['batch']:>3}{r['fused_us']:>10.1f}{r['eager_us']:>10.1f}"
            f"{r['speedup']:>8.1f}x{r['fused_gbps']:>8.0f}{r['roofline_pct']:>8.1f}  {'yes' if r['meets_targets'] else 'no'}"
        )
    return "\n".join(lines)


def report(rows: list[dict], copy_gbps: float, dtype: torch.dtype, device, out_dir: Path) -> Path:
    """Write ``bench_ops.json`` under ``out_dir`` and print the table."""
    import triton

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench_ops.json"
    result = {
        "device": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else str(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "timing": "triton.testing.do_bench_cudagraph median (CUDA graph replays; the L2 cache is not flushed)",
        "copy_bandwidth_gbps": round(copy_gbps, 1),
        "targets": {"speedup": SPEEDUP_TARGET, "roofline_pct": ROOFLINE_TARGET_PCT},
        "all_meet_targets": all(r["meets_targets"] for r in rows),
        "results": rows,
    }
    path.write_text(json.dumps(result, indent=1))
    print(table(rows, copy_gbps))
    print(f"wrote {path}")
    return path


def do_bench_ms(fn: Callable) -> float:
    """Median GPU time of one call: replays of a CUDA graph of the calls, as the compiled model runs
    them. Eager timing would measure the host (a custom op's dispatch takes longer than its kernel)."""
    import triton.testing

    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/bench_ops"), help="folder for bench_ops.json")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench_ops: no CUDA GPU found; the benchmark times Triton kernels on a GPU (run `make gpu`)",
            file=sys.stderr,
        )
        return 2
    dtype, device = getattr(torch, args.dtype), torch.device("cuda")
    cases = make_cases(tuple(args.batches), dtype, device)
    for case in cases:  # compile every kernel before timing
        case.run_fused()
    copy_gbps = copy_bandwidth(do_bench_ms, device)
    rows = measure(cases, do_bench_ms, copy_gbps)
    report(rows, copy_gbps, dtype, device, args.out)
    bad = [r for r in rows if not r["matches_reference"]]
    if bad:
        print(f"bench_ops: fused outputs differ from the reference: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
