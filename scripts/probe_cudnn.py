"""cuDNN's heuristics against its autotuning (``torch.backends.cudnn.benchmark``) on the backbone as the
inductor backend runs it: R50-DC5 rewritten by ``rewrite_for_inductor`` (cuDNN ops with fused
epilogues), fp16, channels_last, random weights; 800x800 and 1216x1216, batch 1 and 8, each timed as
CUDA-graph replays, heuristics, then autotuning, then heuristics again. Writes OUT/probe_cudnn.json.

    python scripts/probe_cudnn.py --out DIR
"""

import argparse
import json
import time
from pathlib import Path

import torch

from anchordetr_trt.backends.inductor_rewrites import rewrite_for_inductor
from anchordetr_trt.environment import environment
from anchordetr_trt.fold import fold_frozen_batchnorm
from anchordetr_trt.weights import random_model


def graph_ms(call, x, replays: int = 50) -> float:
    """Milliseconds per replay of a CUDA graph of call(x), captured after three warm-up calls (those
    run cuDNN's autotuning when it is on)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call(x)
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    model = rewrite_for_inductor(fold_frozen_batchnorm(random_model("r50-dc5")))
    backbone = model.backbone.to("cuda", torch.float16, memory_format=torch.channels_last).eval()
    rows = []
    with torch.no_grad():
        for size in (800, 1216):
            for batch in (1, 8):
                x = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.float16)
                x = x.contiguous(memory_format=torch.channels_last)
                for benchmark in (False, True, False):
                    torch.backends.cudnn.benchmark = benchmark
                    start = time.perf_counter()
                    backbone(x)
                    torch.cuda.synchronize()
                    first_s = time.perf_counter() - start
                    row = {"size": size, "batch": batch, "benchmark": benchmark, "ms": graph_ms(backbone, x),
                           "first_call_s": first_s}  # fmt: skip
                    rows.append(row)
                    print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(), "rows": rows}
    (args.out / "probe_cudnn.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
