"""Where the time of a call at a never-seen shape goes (inductor fp16, R50-DC5, random weights): each
of ``--shapes`` random padded shapes is run once (new: compiled function, no CUDA graph) and again
uncaptured; then torch.profiler's CPU-time table of one more new shape. Prints the times and writes
OUT/probe_new_shape.txt. Results: results/h100/probe_new_shape_0034b56.txt.

    python scripts/probe_new_shape.py --out DIR [--shapes 40]
"""

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import anchordetr_trt as at
from anchordetr_trt.bench.stream import SHAPE_RANGE, _inputs
from anchordetr_trt.spec import SIZE_MULTIPLE
from anchordetr_trt.weights import random_model


def timed(call) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shapes", type=int, default=40)
    args = parser.parse_args()
    model = at.compile(
        random_model("r50-dc5"), backend="inductor", device="cuda", min_shape=SHAPE_RANGE[0],
        opt_shape=(8, 800, 1216), max_shape=SHAPE_RANGE[1], cache_dir=args.out / "cache",
    )  # fmt: skip
    rng = random.Random(3)
    (low_b, low_h, low_w), (high_b, high_h, high_w) = SHAPE_RANGE
    step = SIZE_MULTIPLE  # padded sizes, so the runner's own entry point takes them as they are

    def new_inputs():
        shape = (rng.randint(low_b, high_b), step * rng.randint(low_h // step, high_h // step),
                 step * rng.randint(low_w // step, high_w // step))  # fmt: skip
        return shape, _inputs(shape, "cuda", model.dtype)

    lines, new, again = [], [], []
    for _ in range(args.shapes):
        shape, inputs = new_inputs()
        new.append(timed(lambda inputs=inputs: model(*inputs)))
        again.append(timed(lambda inputs=inputs: model.runner._call_padded(*inputs)))
        lines.append(f"{shape}: new {new[-1]:.1f} ms, again uncaptured {again[-1]:.1f} ms")
    lines.append(f"median: new {statistics.median(new):.1f} ms, again {statistics.median(again):.1f} ms")
    _, inputs = new_inputs()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        timed(lambda: model(*inputs))
    lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "probe_new_shape.txt").write_text(text)


if __name__ == "__main__":
    main()
