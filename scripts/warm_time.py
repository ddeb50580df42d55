"""The custom kernels' warm-up of ``compile()`` (``backends.warm.warm_kernels``) timed cold, one after
another (1 worker) against the default threads, side by side on one GPU. Each measurement is a fresh
process with an empty Triton cache, r50-dc5 with random weights prepared as the inductor backend
prepares it, fp16, the default range; cuBLAS is initialized first, as ``compile()``'s earlier phases
do. Every process must compile as many kernel variants (``custom_ops.fused.compiled_variants``):
threads change when the variants build, not which. ``STAGES=warm make gpu`` runs it:

    python -m scripts.warm_time --out DIR [--rounds 2]   # DIR/warm_kernels.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = (1, None)  # workers: one after another, the default


def measure(workers: int | None) -> dict:
    """Time ``warm_kernels`` in this process (whose Triton cache must be empty) with ``workers``."""
    import torch

    import anchordetr_trt as at
    from anchordetr_trt.backends import inductor
    from anchordetr_trt.backends.warm import warm_kernels
    from anchordetr_trt.custom_ops.fused import compiled_variants
    from anchordetr_trt.fold import fold_frozen_batchnorm
    from anchordetr_trt.spec import CompileSpec

    spec = CompileSpec("fp16", torch.device("cuda"))
    model = inductor.prepare(fold_frozen_batchnorm(at.build_model(at.VARIANTS["r50-dc5"])), spec)
    a = torch.ones(256, 256, device=spec.device, dtype=spec.dtype)
    (a @ a).sum().item()  # cuBLAS's handle and workspace, made before the clock starts
    start = time.perf_counter()
    warm_kernels(model, spec, workers)
    torch.cuda.synchronize()
    return {"workers": workers, "seconds": time.perf_counter() - start, "variants": compiled_variants()}


def run_child(workers: int | None) -> dict:
    """``measure(workers)`` in a fresh process with an empty Triton cache; its JSON line."""
    with tempfile.TemporaryDirectory(prefix="warm_time_") as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        command = [sys.executable, "-m", "scripts.warm_time", "--child", json.dumps(workers)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the measurement with workers={workers} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    """Per setting, the seconds of each run and their median; raises if the settings' runs compiled
    different numbers of variants."""
    variants = {run["variants"] for run in runs}
    if len(variants) != 1:
        raise RuntimeError(f"the runs compiled different numbers of kernel variants: {runs}")
    summary = {}
    for workers in SETTINGS:
        seconds = sorted(run["seconds"] for run in runs if run["workers"] == workers)
        summary["default" if workers is None else f"{workers} worker"] = {
            "seconds": seconds,
            "median_s": statistics.median(seconds),
        }
    return {"variants": variants.pop(), "settings": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for warm_kernels.json")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each setting, alternated")
    parser.add_argument("--commit", default=os.environ.get("GIT_COMMIT", ""), help="the code's commit")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one measurement: the workers as JSON
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(json.loads(args.child))))
        return
    if args.out is None:
        parser.error("--out is required")
    from anchordetr_trt.environment import environment

    runs = [run_child(workers) for _ in range(args.rounds) for workers in SETTINGS]
    report = {"commit": args.commit, "environment": environment(), "cpus": os.cpu_count(), "runs": runs}
    report |= summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "warm_kernels.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["settings"], indent=2))


if __name__ == "__main__":
    main()
