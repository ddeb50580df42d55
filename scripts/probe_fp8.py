"""What FP8 could take off the backbone: each stride-1 1x1 convolution of R50-DC5 at batch 8, 800x800
(the only convolutions torch can run in FP8: as GEMMs through ``torch._scaled_mm``), timed as cuDNN's
fp16 convolution, as an fp16 GEMM and as an FP8 GEMM (e4m3, per-tensor scales, fp16 out), with the
cast of its input to FP8 that each FP8 GEMM needs. Kernel times from torch.profiler.
Writes OUT/probe_fp8.json.

    python scripts/probe_fp8.py --out DIR [--batch 8]
"""

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anchordetr_trt.bench.timing import profile
from anchordetr_trt.environment import environment
from anchordetr_trt.weights import random_model

CUDA = torch.device("cuda")
FP8 = torch.float8_e4m3fn


def pointwise_convs(batch: int, size: int) -> list[dict]:
    """(input shape, channels out) of every stride-1 1x1 convolution of the R50-DC5 backbone on
    ``batch`` images of ``size`` x ``size``, in call order."""
    body = random_model("r50-dc5").backbone.body
    found = []

    def record(module, inputs, output):
        found.append({"input": list(inputs[0].shape), "out_channels": module.out_channels})

    for module in body.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1):
            module.register_forward_hook(record)
    with torch.no_grad():
        body.to("meta")(torch.empty(batch, 3, size, size, device="meta"))
    return found


def kernel_us(call) -> float:
    return 1000 * profile(call, CUDA, calls=20, top=10)["total_ms_per_call"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for conv in pointwise_convs(args.batch, 800):
        batch, channels, height, width = conv["input"]
        x = torch.randn(batch, channels, height, width, device=CUDA, dtype=torch.float16)
        x = x.contiguous(memory_format=torch.channels_last)
        weight = (
            torch.randn(conv["out_channels"], channels, 1, 1, device=CUDA, dtype=torch.float16)
            / channels**0.5
        )
        weight = weight.contiguous(memory_format=torch.channels_last)
        rows_in = x.permute(0, 2, 3, 1).reshape(-1, channels)  # the channels_last memory as [M, K]
        weight_t = weight.reshape(conv["out_channels"], channels).t()  # [K, N], column-major
        one = torch.ones((), device=CUDA)
        a8, b8 = rows_in.to(FP8), weight_t.to(FP8)
        row = {
            **conv,
            "cudnn_fp16_us": kernel_us(functools.partial(F.conv2d, x, weight)),
            "gemm_fp16_us": kernel_us(functools.partial(torch.mm, rows_in, weight_t)),
            "gemm_fp8_us": kernel_us(
                functools.partial(torch._scaled_mm, a8, b8, one, one, out_dtype=torch.float16)
            ),
            "cast_to_fp8_us": kernel_us(functools.partial(rows_in.to, FP8)),
        }
        rows.append(row)
        print(row, flush=True)
    totals = {
        key: sum(row[key] for row in rows)
        for key in ("cudnn_fp16_us", "gemm_fp16_us", "gemm_fp8_us", "cast_to_fp8_us")
    }
    report = {
        "environment": environment(),
        "batch": args.batch,
        "size": 800,
        "convs": rows,
        "totals_us": totals,
    }
    print(totals)
    (args.out / "probe_fp8.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
