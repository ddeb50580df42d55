"""The cold-stream benchmark: what a user waits for on a real workload, from ``compile()`` on.

A stream of images with COCO-like sizes after the official resize (short side 800, long side at
most 1333; landscape and portrait), in batches of ``batch`` padded to their largest image, runs
through ``compile(backend)``. Measured, each in the process where it means something:

- ``cold_s``: this process, an empty compile cache: ``compile()`` to the last output of one pass;
- ``steady_img_per_s``: later passes over the same stream (every shape seen, CUDA graphs captured);
- ``warm_second_process_s``: a new process on the now warm cache, ``compile()`` to the last output;
- ``random_shape_calls``: calls of random in-range shapes (up to ``--random-calls``, within
  ``--random-budget-s``), with the compiles they caused after the first call and the growth of the
  GPU memory this process reserves, from the 100th call to the last (and the largest, sampled every
  100 calls);
- ``eager_first_over_second_pass``: the eager backend's first pass over the stream against its second
  (a new process: what is compiled or tuned per shape shows up here);
- ``latency_800``: 800x800 at batch 1 and ``batch``, for comparison with ``bench``.

The images are made on the GPU in the model's dtype, as a GPU data loader hands them over, so that
host-to-device copies do not hide the model's time. ``python -m anchordetr_trt.bench.stream --out DIR``
writes DIR/stream.json.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..compiled import compile
from ..custom_ops.fused import compiled_variants
from ..environment import environment
from ..spec import DEFAULT_MAX_SHAPE, DEFAULT_MIN_SHAPE, padded_shape
from ..transforms import resized_size
from ..weights import random_model
from .timing import latencies_ms, stats

# (width, height) of common COCO photos: the frequent landscape, portrait and square originals.
COCO_SIZES = ((640, 480), (640, 427), (640, 424), (640, 426), (500, 375), (640, 360), (612, 612),
              (480, 640), (427, 640), (424, 640), (375, 500), (640, 512), (640, 383), (333, 500))  # fmt: skip
SHAPE_RANGE = (DEFAULT_MIN_SHAPE, DEFAULT_MAX_SHAPE)


def stream_shapes(images: int = 96, batch: int = 8, seed: int = 0) -> list[tuple[int, int, int]]:
    """(batch, height, width) of each batch of the stream: ``images`` COCO-like sizes after the
    official resize, batched in order, each batch padded to its largest height and width."""
    rng = random.Random(seed)
    sizes = [resized_size(h, w) for w, h in (rng.choice(COCO_SIZES) for _ in range(images))]
    return [
        (len(chunk), max(h for h, _ in chunk), max(w for _, w in chunk))
        for chunk in (sizes[i : i + batch] for i in range(0, images, batch))
    ]


def _inputs(shape, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    batch, height, width = shape
    images = torch.randn(batch, 3, height, width, device=device, dtype=dtype)
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    mask[-1, height * 3 // 4 :] = True  # the padding a batch of mixed sizes has
    return images, mask


def _pass(model, batches) -> float:
    start = time.perf_counter()
    for images, mask in batches:
        model(images, mask)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _compile(
    backend: str, precision: str | None, cache_dir: str, shapes
) -> tuple[torch.nn.Module, list, float]:
    """(compiled model, the stream's input batches, seconds from compile() to the model's return)."""
    model = random_model()
    start = time.perf_counter()
    compiled = compile(
        model, backend=backend, precision=precision, device="cuda", cache_dir=cache_dir,
        min_shape=SHAPE_RANGE[0], opt_shape=(shapes[0][0], 800, 1216), max_shape=SHAPE_RANGE[1],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    batches = [_inputs(shape, "cuda", compiled.dtype) for shape in shapes]
    return compiled, batches, seconds


def cold_run(args) -> dict:
    """This process: cold compile and stream, steady passes, random shapes, 800x800 latency; the
    compile caches it makes are removed at the end."""
    with tempfile.TemporaryDirectory(prefix="anchordetr_stream_") as cache_dir:
        return _cold_run(args, cache_dir)


def _cold_run(args, cache_dir: str) -> dict:
    shapes = stream_shapes(args.images, args.batch)
    images = sum(s[0] for s in shapes)
    start = time.perf_counter()
    compiled, batches, compile_s = _compile(args.backend, args.precision, cache_dir, shapes)
    first_pass_s = _pass(compiled, batches)
    cold_s = time.perf_counter() - start
    _pass(compiled, batches)  # captures the CUDA graphs of the shapes now seen twice
    steady = min(_pass(compiled, batches) for _ in range(3))
    report = {
        "backend": args.backend,
        "precision": compiled.precision,
        "images": images,
        "batch": args.batch,
        "distinct_shapes": len(set(shapes)),
        "distinct_padded_shapes": len({padded_shape(shape) for shape in shapes}),
        "cold_s": cold_s,
        "cold_compile_s": compile_s,
        "cold_compile_phases_s": getattr(compiled.runner, "build_seconds", None),
        "cold_first_pass_s": first_pass_s,
        "steady_img_per_s": images / steady,
    }
    _log(f"cold {cold_s:.1f} s (compile {compile_s:.1f} s), steady {report['steady_img_per_s']:.0f} img/s")
    report["latency_800"] = _latency_800(compiled, args.batch)
    _log(f"800x800: {report['latency_800']}")
    report["warm_second_process"] = _subprocess(args, "warm", cache_dir)
    report["warm_second_process_s"] = report["warm_second_process"].get("compile_to_last_output_s")
    _log(f"warm second process: {report['warm_second_process']}")
    report["eager"] = _subprocess(args, "eager", os.path.join(cache_dir, "eager"))
    report["eager_first_over_second_pass"] = report["eager"].get("first_over_second")
    _log(f"eager: {report['eager']}")
    report |= _random_shapes(compiled, args.random_calls, args.random_budget_s)
    return report


def _log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _latency_800(compiled, batch: int) -> dict:
    result = {}
    for size in (1, batch):
        inputs = _inputs((size, 800, 800), "cuda", compiled.dtype)
        times = latencies_ms(lambda inputs=inputs: compiled(*inputs), compiled.device, warmup=5, iters=50)
        median_ms = stats(times)["median"]
        result[f"batch_{size}"] = {"median_ms": median_ms, "img_per_s": 1000 * size / median_ms}
    return result


def _compiled_files(cache_dir: Path) -> int:
    return sum(1 for path in cache_dir.rglob("*") if path.is_file())


def _random_shapes(compiled, calls: int, budget_s: float, seed: int = 1) -> dict:
    """Up to ``calls`` calls of random shapes in the range, for at most ``budget_s``: compiles after
    the first call, memory growth from the 100th call on."""
    rng = random.Random(seed)
    (low_b, low_h, low_w), (high_b, high_h, high_w) = SHAPE_RANGE
    runner, cache_dir = compiled.runner, compiled.spec.cache_dir
    compiles = files = variants = None
    memory, start, done = {}, time.perf_counter(), 0
    for call in range(calls):
        if call > 100 and time.perf_counter() - start > budget_s:
            break
        shape = (rng.randint(low_b, high_b), rng.randint(low_h, high_h), rng.randint(low_w, high_w))
        compiled(*_inputs(shape, "cuda", compiled.dtype))
        if call == 0:
            torch.cuda.synchronize()
            compiles, files = getattr(runner, "compiles", 0), _compiled_files(cache_dir)
            variants = compiled_variants()
        done = call + 1
        if done % 100 == 0:
            torch.cuda.synchronize()
            memory[done] = (torch.cuda.memory_reserved(), torch.cuda.memory_allocated())
    torch.cuda.synchronize()
    memory[done] = (torch.cuda.memory_reserved(), torch.cuda.memory_allocated())
    _log(f"random shapes: {done} calls in {time.perf_counter() - start:.0f} s")
    return {
        "random_shape_calls": done,
        "random_shape_calls_asked": calls,
        "random_shape_s": time.perf_counter() - start,
        # Dynamo/Inductor functions, then the custom ops' Triton kernel variants.
        "compiles_after_first": getattr(runner, "compiles", 0) - compiles,
        "kernel_variants_compiled_after_first": compiled_variants() - variants,
        "cache_files_written_after_first": _compiled_files(cache_dir) - files,
        "captured_graphs": len(getattr(runner, "graphs", ())),
        "memory_reserved_gib": {n: r / 2**30 for n, (r, _) in memory.items()},
        "memory_allocated_gib": {n: a / 2**30 for n, (_, a) in memory.items()},
        "memory_growth_pct": 100 * (memory[done][0] / memory[100][0] - 1),
        "memory_growth_max_pct": 100
        * (max(reserved for reserved, _ in memory.values()) / memory[100][0] - 1),
    }


def _subprocess(args, phase: str, cache_dir: str) -> dict:
    command = [sys.executable, "-m", "anchordetr_trt.bench.stream", "--phase", phase, "--cache-dir", cache_dir,
               "--images", str(args.images), "--batch", str(args.batch), "--backend", args.backend]  # fmt: skip
    if args.precision:
        command += ["--precision", args.precision]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.subprocess_timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {
            "status": "timeout",
            "error": f"no result within --subprocess-timeout {args.subprocess_timeout} s",
        }
    if done.returncode != 0:
        return {"status": "failed", "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return {
        "status": "ok",
        "process_s": time.perf_counter() - start,
        **json.loads(done.stdout.splitlines()[-1]),
    }


def warm_run(args) -> dict:
    shapes = stream_shapes(args.images, args.batch)
    start = time.perf_counter()
    compiled, batches, compile_s = _compile(args.backend, args.precision, args.cache_dir, shapes)
    _pass(compiled, batches)
    return {
        "compile_s": compile_s,
        "compile_phases_s": getattr(compiled.runner, "build_seconds", None),
        "compile_to_last_output_s": time.perf_counter() - start,
        "loaded_compiled_range": getattr(compiled.runner, "loaded", None),
    }


def eager_run(args) -> dict:
    shapes = stream_shapes(args.images, args.batch)
    compiled, batches, _ = _compile("eager", "fp32", args.cache_dir, shapes)
    first, second = _pass(compiled, batches), _pass(compiled, batches)
    return {
        "precision": "fp32",
        "first_pass_s": first,
        "second_pass_s": second,
        "first_over_second": first / second,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anchordetr_trt.bench.stream", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help="folder for stream.json (cold run only)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--precision")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--random-calls", type=int, default=2000)
    parser.add_argument("--random-budget-s", type=float, default=600)
    parser.add_argument("--subprocess-timeout", type=int, default=240)
    parser.add_argument("--phase", choices=["cold", "warm", "eager"], default="cold")
    parser.add_argument("--cache-dir")
    parser.add_argument("--commit", help="the code's git commit, recorded in stream.json")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= SHAPE_RANGE[1][0]:
        parser.error(f"--batch {args.batch}: the compiled range holds batches 1 to {SHAPE_RANGE[1][0]}")
    if args.phase == "cold" and args.random_calls < 100:
        parser.error(
            f"--random-calls {args.random_calls}: memory growth is measured from call 100 on: pass >= 100"
        )
    if args.phase != "cold":
        print(json.dumps((warm_run if args.phase == "warm" else eager_run)(args)))
        return 0
    report = cold_run(args)
    report["commit"] = args.commit
    report["environment"] = environment()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stream.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
