"""``rcda_aggregate``'s launch configuration swept on a GPU, kernel alone (both softmaxes included), fp16, at the feature maps of 800x800, 800x1216 and 1216x1344 (the stream benchmark's
batches) with DC5, batch 8, 8 heads of 32, encoder and decoder queries.

Each configuration (queries per program, rows h per tensor-core product, warps, pipeline stages) is
timed with the width blocks of ``width_blocks`` and, for the shipped configuration, with W padded to one
power of two as before, side by side. Every output is checked against the reference.

    python scripts/sweep_rcda_aggregate.py --out DIR   # writes DIR/sweep_rcda_aggregate.json (CUDA GPU)
"""

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import torch
import triton.testing

from anchordetr_trt.custom_ops import _common, reference
from anchordetr_trt.custom_ops import rcda_aggregate as op

HEADS, HEAD_DIM, BATCH, DECODER_QUERIES = 8, 32, 8, 900
FEATURES = {"800x800": (50, 50), "800x1216": (50, 76), "1216x1344": (76, 84)}
SWEEP = {"BLOCK_Q": (64, 128), "BLOCK_H": (1, 2, 4), "num_warps": (4, 8), "num_stages": (2, 3, 4)}


def launch(inputs: tuple, out, config: dict) -> None:
    q_col, k_col, mask_col, q_row, k_row, mask_row, value = inputs
    n, height, width, _ = value.shape
    queries = q_col.shape[1]
    config = dict(config)
    blocks = config.pop("blocks")
    meta = {
        "BLOCK_Q": config["BLOCK_Q"],
        "BLOCK_W": blocks[0],
        "TAIL_W": blocks[1],
        "BLOCK_D": HEAD_DIM,
        "BLOCK_H": config["BLOCK_H"],
        "COL_CHUNK": op.COL_CHUNK,
        "num_warps": config["num_warps"],
        "num_stages": config["num_stages"],
    }
    grid = (triton.cdiv(queries, meta["BLOCK_Q"]), n)
    op.rcda_aggregate_kernel[grid](
        q_col, k_col, mask_col.view(torch.uint8), q_row, k_row, mask_row.view(torch.uint8), value, out,
        value.new_empty(op.column_buffer_shape(n, queries, height)), queries, HEADS, height, width, HEAD_DIM, DOT_PRECISION="tf32",
        **meta,
    )  # fmt: skip


def shipped(width: int) -> dict:
    _, meta = op.rcda_aggregate_launch_config(1, 1, width, HEAD_DIM, 2)
    return {
        "BLOCK_Q": meta["BLOCK_Q"],
        "BLOCK_H": meta["BLOCK_H"],
        "num_warps": meta.get("num_warps", 4),  # Triton's default
        "num_stages": meta["num_stages"],
        "blocks": (meta["BLOCK_W"], meta["TAIL_W"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for image, (height, width) in FEATURES.items():
        for part, queries in (("encoder", height * width), ("decoder", DECODER_QUERIES)):
            n = BATCH * HEADS
            q_col, q_row = (torch.randn(2, n, queries, HEAD_DIM, device="cuda") * HEAD_DIM**-0.5).half()
            k_col = torch.randn(n, height, HEAD_DIM, device="cuda").half()
            k_row = torch.randn(n, width, HEAD_DIM, device="cuda").half()
            mask_col = torch.zeros(BATCH, height, dtype=torch.bool, device="cuda")
            mask_row = torch.zeros(BATCH, width, dtype=torch.bool, device="cuda")
            value = torch.randn(n, height, width, HEAD_DIM, device="cuda").half()
            inputs = (q_col, k_col, mask_col, q_row, k_row, mask_row, value)
            expected = reference.rcda_aggregate(*(t.float() if t.is_floating_point() else t for t in inputs))
            flops = 2 * n * queries * ((height + 1) * width + height) * HEAD_DIM
            configs = [dict(zip(SWEEP, values, strict=True)) for values in itertools.product(*SWEEP.values())]
            configs = [c | {"blocks": op.width_blocks(width)} for c in configs]
            if op.width_blocks(width)[1]:  # one power of two already: nothing to compare
                configs.append(shipped(width) | {"blocks": (_common.row_block(width), 0)})
            timed = []
            for config in configs:
                out = torch.full((n, queries, HEAD_DIM), float("nan"), device="cuda", dtype=torch.float16)
                call = functools.partial(launch, inputs, out, config)
                try:
                    call()
                    torch.cuda.synchronize()
                except Exception as error:  # e.g. OutOfResources: too much shared memory
                    timed.append(config | {"error": f"{type(error).__name__}: {str(error)[:120]}"})
                    continue
                error = (out.float() - expected).abs().max().item()
                ms = triton.testing.do_bench(call, warmup=10, rep=100)
                timed.append(config | {"ms": ms, "tflops": flops / ms / 1e9, "max_abs_error": error})
            ok = [t for t in timed if "ms" in t and t["max_abs_error"] < 1e-2]
            best = min(ok, key=lambda t: t["ms"])
            current = next(t for t in timed if "ms" in t and _same(t, shipped(width)))
            row = {
                "image": image, "part": part, "queries": queries, "height": height, "width": width,
                "shipped": current, "best": best, "shipped_over_best": current["ms"] / best["ms"],
                "power_of_two": timed[-1] if op.width_blocks(width)[1] else None, "configs": timed,
            }  # fmt: skip
            print({k: v for k, v in row.items() if k != "configs"}, file=sys.stderr)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"gpu": torch.cuda.get_device_name(), "sweep": SWEEP, "rows": rows}
    (args.out / "sweep_rcda_aggregate.json").write_text(json.dumps(report, indent=1))
    return 0


def _same(timed: dict, config: dict) -> bool:
    return all(timed[key] == value for key, value in config.items())


if __name__ == "__main__":
    sys.exit(main())
