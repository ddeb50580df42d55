"""The FFN epilogue rewrite on and off, side by side: R50-DC5 at 800x800, batches 1 and 8, through
``compile(backend="inductor")`` (range batch 1..8), each variant compiled in a fresh process.

"off" runs the FFN as written (Inductor splits linear1 + ReLU into a matmul and a bias + ReLU pass);
"on" is the backend as shipped (``inductor_rewrites.FusedFFN``: one ``_addmm_activation``).

    python scripts/ab_ffn_epilogue.py --out DIR   # writes DIR/ab_ffn_epilogue.json (needs a CUDA GPU)
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE, BATCHES = 800, (1, 8)


def measure(variant: str, cache_dir: str) -> dict:
    import torch

    from anchordetr_trt import compile
    from anchordetr_trt.backends import inductor_rewrites
    from anchordetr_trt.bench.timing import latencies_ms, stats
    from anchordetr_trt.weights import random_model

    if variant == "off":
        inductor_rewrites.FusedFFN.forward = lambda self, x: self.ffn(x)
    compiled = compile(
        random_model("r50-dc5"), backend="inductor", precision="fp16", device="cuda", cache_dir=cache_dir,
        min_shape=(1, SIZE, SIZE), opt_shape=(max(BATCHES), SIZE, SIZE), max_shape=(max(BATCHES), SIZE, SIZE),
    )  # fmt: skip
    result = {"variant": variant}
    for batch in BATCHES:
        inputs = (
            torch.randn(batch, 3, SIZE, SIZE, device="cuda", dtype=torch.float16),
            torch.zeros(batch, SIZE, SIZE, dtype=torch.bool, device="cuda"),
        )
        times = latencies_ms(lambda inputs=inputs: compiled(*inputs), compiled.device, warmup=10, iters=100)
        median = stats(times)["median"]
        result[f"batch_{batch}"] = {"median_ms": median, "img_per_s": 1000 * batch / median}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for ab_ffn_epilogue.json")
    parser.add_argument("--variant", choices=["on", "off"], help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.variant:
        with tempfile.TemporaryDirectory(prefix="anchordetr_ab_") as cache_dir:
            print(json.dumps(measure(args.variant, cache_dir)))
        return 0
    results = []
    for variant in ("off", "on"):
        child = subprocess.run(
            [sys.executable, __file__, "--out", str(args.out), "--variant", variant],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results.append(json.loads(child.stdout.splitlines()[-1]))
        print(results[-1], file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab_ffn_epilogue.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
