"""``rcda_aggregate``'s kernel launched at the model's shapes, for a profiler to read: the op's GPU test
cases for the encoder (a 50x50 map, 2,500 queries) and the decoder (900 queries over the map), 8 heads
of 32, fp16, at batch 1 or 8, unpadded as at 800x800. Each part runs ``--warmup`` calls, then
``--calls`` calls, the last checked against the PyTorch reference (a wrong kernel exits non-zero).
``STAGES=ncu-rcda make gpu`` runs it under Nsight Compute (stall reasons, pipes, occupancy:
docs/transformer_performance.md says why they are needed):

    python -m scripts.profile_rcda --batch 8 [--parts encoder decoder]
"""

import argparse

import torch

from anchordetr_trt.custom_ops import cases

SPEC = cases.op_cases("rcda_aggregate")
PARTS = ("encoder", "decoder")
WARMUP = 2  # calls before the profiled ones (the first compiles the kernel); gpu.sh skips as many


def run(case: dict, device: str, warmup: int = WARMUP, calls: int = 1) -> float:
    """Launch the kernel ``warmup + calls`` times on ``case``'s fp16 inputs (unpadded); return the last
    output's largest distance from the reference, which it must match (AssertionError otherwise)."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    args = SPEC.make_inputs(case | {"padding": "none"}, torch.float16, device)
    for _ in range(warmup + calls):
        out = SPEC.launcher(*args)
    return cases.assert_matches(SPEC, out, SPEC.reference(*args), torch.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, choices=cases.REAL_BATCHES, default=8)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (the profiled kernel runs there)")
    for part in args.parts:
        error = run(SPEC.gpu_cases[f"{part}_b{args.batch}"], "cuda", args.warmup, args.calls)
        print(f"rcda_aggregate {part} batch {args.batch}: max |out - reference| {error:.3g}", flush=True)


if __name__ == "__main__":
    main()
