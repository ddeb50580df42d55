"""``rcda_aggregate``'s width blocks, side by side: one power of two (before) against ``width_blocks``
(one or two), kernel alone, fp16, at the feature maps of 800x800, 800x1216 and 1216x1344 (the stream
benchmark's batches) with DC5, batch 8, 8 heads of 32, encoder and decoder queries.

    python scripts/ab_rcda_blocks.py --out DIR   # writes DIR/ab_rcda_blocks.json (needs a CUDA GPU)
"""

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import triton.testing

from anchordetr_trt.custom_ops import rcda_aggregate as op
from anchordetr_trt.custom_ops import reference

HEADS, HEAD_DIM, BATCH, DECODER_QUERIES = 8, 32, 8, 900
FEATURES = {"800x800": (50, 50), "800x1216": (50, 76), "1216x1344": (76, 84)}


def launch(probs_col, probs_row, value, out, blocks: tuple[int, int]) -> None:
    n, queries, height = probs_col.shape
    width = value.shape[2]
    grid, meta = op.rcda_aggregate_launch_config(queries, n, width, HEAD_DIM, value.element_size())
    meta["BLOCK_W"], meta["TAIL_W"] = blocks
    op.rcda_aggregate_kernel[grid](
        probs_col, probs_row, value, out, queries, height, width, HEAD_DIM, DOT_PRECISION="tf32", **meta
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for image, (height, width) in FEATURES.items():
        for part, queries in (("encoder", height * width), ("decoder", DECODER_QUERIES)):
            n = BATCH * HEADS
            probs_col = torch.randn(n, queries, height, device="cuda").softmax(-1).half()
            probs_row = torch.randn(n, queries, width, device="cuda").softmax(-1).half()
            value = torch.randn(n, height, width, HEAD_DIM, device="cuda").half()
            expected = reference.rcda_aggregate(probs_col.float(), probs_row.float(), value.float())
            row = {"image": image, "part": part, "queries": queries, "height": height, "width": width}
            for name, blocks in (
                ("power_of_two", (op._common.row_block(width), 0)),
                ("split", op.width_blocks(width)),
            ):
                out = torch.empty(n, queries, HEAD_DIM, device="cuda", dtype=torch.float16)
                call = functools.partial(launch, probs_col, probs_row, value, out, blocks)
                call()
                error = (out.float() - expected).abs().max().item()
                ms = triton.testing.do_bench(call, warmup=25, rep=200)
                flops = 2 * n * queries * height * width * HEAD_DIM
                row[name] = {"blocks": blocks, "ms": ms, "tflops": flops / ms / 1e9, "max_abs_error": error}
            row["speedup"] = row["power_of_two"]["ms"] / row["split"]["ms"]
            print(row, file=sys.stderr)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab_rcda_blocks.json").write_text(
        json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
