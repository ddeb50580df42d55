"""``rcda_aggregate``'s kernel launched at the model's shapes, for a profiler to read: the encoder's call
(a 50x50 map, 2,500 queries) and the decoder's (900 queries over the map), 8 heads of 32, fp16, as the
inductor backend launches them at 800x800. Each shape runs ``--warmup`` calls (the compile), then
``--calls`` calls. ``STAGES=ncu-rcda make gpu`` runs it under Nsight Compute (stall reasons, pipe use,
occupancy: docs/transformer_performance.md says why they are needed):

    python -m scripts.profile_rcda --batch 8 [--parts encoder decoder]
"""

import argparse

import torch

from anchordetr_trt.custom_ops import cases, rcda_aggregate, reference

PARTS = {"encoder": 2500, "decoder": 900}  # queries per image at 800x800 (a 50x50 map)
HEADS, HEAD_DIM, SIDE = 8, 32, 50


def launch(part: str, batch: int, device: str, side: int = SIDE, warmup: int = 2, calls: int = 3) -> float:
    """Run the kernel ``warmup + calls`` times for ``part`` at ``batch`` on a ``side`` x ``side`` map;
    return the last output's largest distance from the PyTorch reference (the profiled work is checked)."""
    queries = side * side if part == "encoder" else PARTS[part]
    dtype = torch.float16 if device == "cuda" else torch.float32  # the interpreter's CPU runs float32
    case = {"shape": (batch * HEADS, queries, side, side, HEAD_DIM), "heads": HEADS, "map": part == "encoder"}
    args = cases.rcda_aggregate_inputs(case, dtype, device)
    for _ in range(warmup + calls):
        out = rcda_aggregate.rcda_aggregate_triton(*args)
    if device == "cuda":
        torch.cuda.synchronize()
    return (out.float() - reference.rcda_aggregate(*args).float()).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (the profiled kernel runs there)")
    for part in args.parts:
        error = launch(part, args.batch, "cuda", warmup=args.warmup, calls=args.calls)
        print(f"rcda_aggregate {part} batch {args.batch}: max |out - reference| {error:.3g}", flush=True)


if __name__ == "__main__":
    main()
