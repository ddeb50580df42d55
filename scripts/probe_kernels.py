"""Where a batch's GPU time goes, kernel by kernel (inductor fp16, R50-DC5, random weights, 800x800),
and the decoder's self-attention under each SDPA backend alone. Writes OUT/probe_kernels.json.

    python scripts/probe_kernels.py --out DIR [--batch 8 32]
"""

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import anchordetr_trt as at
from anchordetr_trt.bench.timing import latencies_ms, profile, stats
from anchordetr_trt.environment import environment
from anchordetr_trt.weights import random_model

CUDA = torch.device("cuda")


def sdpa_backends(batches: list[int], queries: int) -> list[dict]:
    """The decoder's self-attention shape ([B, 8, queries, 32] fp16) under each SDPA backend."""
    rows = []
    for batch in batches:
        q, k, v = (torch.randn(batch, 8, queries, 32, device="cuda", dtype=torch.float16) for _ in range(3))
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH):  # fmt: skip
            try:
                with sdpa_kernel([backend]):
                    error = (F.scaled_dot_product_attention(q, k, v).float() - reference).abs().max().item()
                    call = functools.partial(F.scaled_dot_product_attention, q, k, v)
                    ms = stats(latencies_ms(call, CUDA, 20, 200))
                    kernels = profile(call, CUDA, calls=50, top=5)
            except RuntimeError as exc:
                rows.append({"batch": batch, "backend": backend.name, "error": str(exc).splitlines()[0]})
                continue
            rows.append({"batch": batch, "backend": backend.name, "median_us": 1000 * ms["median"],
                         "kernel_us_per_call": 1000 * kernels["total_ms_per_call"], "max_abs_err": error})  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--sdpa-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    queries = random_model("r50-dc5").config.num_queries
    report = {"environment": environment(), "sdpa": sdpa_backends([1, 8, 32], queries)}
    (args.out / "probe_kernels.json").write_text(json.dumps(report, indent=1))
    if args.sdpa_only:
        return
    model = at.compile(
        random_model("r50-dc5"), backend="inductor", device="cuda", min_shape=(1, 320, 320),
        opt_shape=(8, 800, 800), max_shape=(max(args.batch), 1344, 1344), cache_dir=args.cache_dir,
    )  # fmt: skip
    report["runs"] = []
    for batch in args.batch:
        images = torch.randn(batch, 3, 800, 800, device="cuda", dtype=model.dtype)
        mask = torch.zeros(batch, 800, 800, device="cuda", dtype=torch.bool)
        call = functools.partial(model, images, mask)
        latency = stats(latencies_ms(call, CUDA, 10, 50))
        kernels = profile(call, CUDA, calls=5, top=400)
        kernels.pop("table")
        report["runs"].append({"batch": batch, "latency_ms": latency, "kernels": kernels})
        print(batch, latency["median"], kernels["total_ms_per_call"], flush=True)
        (args.out / "probe_kernels.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
