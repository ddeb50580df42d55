"""A second process's time to its first output: the same backend compiled on the cache the first
process filled, as a user's next process would.

``second_process`` (in the benchmark's process) starts
``python -m anchordetr_trt.bench.startup SPEC_JSON``, which builds the model, compiles and calls it
once, and prints its timings as one JSON line (``build_s``, ``compile_s``, ``first_call_s``).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..checkpoint import Checkpoint, load_model
from ..compiled import compile
from ..export import example_inputs
from ..weights import random_model
from .configs import BenchConfig, shape_range
from .timing import synchronize


def second_process(
    group: Sequence[BenchConfig],
    variant: str,
    ckpt: Checkpoint | None,
    seed: int,
    device: torch.device,
    cache_dir: Path | None,
    log: Callable[[str], None],
    timeout_s: float = 900,
) -> dict:
    """Time a fresh process that compiles ``group``'s backend with the same cache and runs it once."""
    min_shape, opt_shape, max_shape = shape_range(group)
    spec = {
        "backend": group[0].backend,
        "precision": group[0].precision,
        "variant": variant,
        "ckpt": str(ckpt) if isinstance(ckpt, str | os.PathLike) else None,
        "seed": seed,
        "device": str(device),
        "min_shape": list(min_shape),
        "opt_shape": list(opt_shape),
        "max_shape": list(max_shape),
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", __name__, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"   second process failed: {tail}")
        return {"status": "failed", "reason": tail, "wall_s": wall_s}
    timings = json.loads(proc.stdout.strip().splitlines()[-1])
    log(
        f"   second process (cache {'on' if cache_dir else 'default'}): compile {timings['compile_s']:.1f} s + first "
        f"call {timings['first_call_s']:.2f} s; {wall_s:.1f} s from launch to exit"
    )
    return {"status": "ok", "wall_s": wall_s, **timings}


def probe(spec: dict) -> dict[str, float]:
    """Build, compile and call once as ``spec`` says; seconds of each step."""
    started = time.perf_counter()
    if spec["ckpt"] is None:
        model = random_model(spec["variant"], spec["seed"])
    else:
        model = load_model(spec["ckpt"], variant=spec["variant"])
    built = time.perf_counter()
    device = torch.device(spec["device"])
    compiled = compile(
        model, backend=spec["backend"], precision=spec["precision"], device=device,
        min_shape=tuple(spec["min_shape"]), opt_shape=tuple(spec["opt_shape"]), max_shape=tuple(spec["max_shape"]),
        cache_dir=spec["cache_dir"],
    )  # fmt: skip
    synchronize(device)
    compiled_at = time.perf_counter()
    compiled(*example_inputs(tuple(spec["opt_shape"]), device, compiled.dtype))
    synchronize(device)
    done = time.perf_counter()
    return {
        "build_s": built - started,
        "compile_s": compiled_at - built,
        "first_call_s": done - compiled_at,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anchordetr_trt.bench.startup", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "spec",
        type=json.loads,
        help="JSON object: backend, precision, variant, ckpt (or null: random weights of seed), seed, device, "
        "min_shape, opt_shape, max_shape, cache_dir",
    )
    print(json.dumps(probe(parser.parse_args(argv).spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
