"""rcda_aggregate alone at the model's shapes (batch 1 and 8, 800x800): the fused kernel against the
two-launch form (SPLIT) in four launch settings (the module's constants patched), CUDA-graph medians,
each output compared with the fused kernel's. Usage: python scripts/bench_rcda_split.py OUT.json"""

import json
import sys
import time

import torch
import triton
from triton.testing import do_bench_cudagraph

from anchordetr_trt.custom_ops import rcda_aggregate as op
from anchordetr_trt.custom_ops.cases import rcda_aggregate_inputs

CONFIGS = {  # name: (module constants, launch kwargs)
    "fused": ({}, {"split": False}),
    "split p64w4 a128w8": ({}, {"split": True}),
    "split p128w4 a128w8": ({"PROBABILITIES_BLOCK_Q": 128}, {"split": True}),
    "split p64w4 a128w4": ({"AGGREGATION_WARPS": 4}, {"split": True}),
    "split p64w4 a128w8 s4": ({"MAX_STAGES": 4}, {"split": True}),
}
rows, start = [], time.time()
for batch in (8, 1):
    for stage, queries in (("encoder", 2500), ("decoder", 900)):
        case = {"shape": (batch * 8, queries, 50, 50, 32), "heads": 8}
        if stage == "encoder":
            case |= {"map": True, "packed": True}
        args = rcda_aggregate_inputs(case, torch.float16, "cuda")
        ref = op.rcda_aggregate_triton(*args, split=False)
        row = {"stage": stage, "batch": batch}
        for name, (constants, launch) in CONFIGS.items():
            saved = {k: getattr(op, k) for k in constants}
            try:
                for k, v in constants.items():
                    setattr(op, k, v)
                got = op.rcda_aggregate_triton(*args, **launch)
                us = 1e3 * do_bench_cudagraph(
                    lambda args=args, launch=launch: op.rcda_aggregate_triton(*args, **launch), rep=200
                )
                row[name] = {"us": round(us, 2), "equal": bool(torch.equal(got, ref))}
            except Exception as error:
                row[name] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            finally:
                for k, v in saved.items():
                    setattr(op, k, v)
        if stage == "encoder":  # the two launches of the default split alone
            launches = op.rcda_aggregate_launches(queries, batch * 8, 50, 32, 2, split=True)
            row["launches"] = [
                {k: m[k] for k in ("PHASE", "BLOCK_Q", "num_warps", "num_stages")} for _, m in launches
            ]
        print(json.dumps(row), f"{time.time() - start:.0f} s", flush=True)
        rows.append(row)
        environment = {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "triton": triton.__version__,
        }
        with open(sys.argv[1], "w") as f:
            json.dump({**environment, "rows": rows}, f, indent=1)
