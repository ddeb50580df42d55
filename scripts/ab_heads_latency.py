"""A/B of the float32 heads' cost (inductor fp16, R50-DC5, random weights, 800x800): two modules
compiled in one process, one with ``AnchorDETR.set_precision`` (anchors and heads float32), one with
the rule before it (``model.to(dtype)``), timed alternately, three rounds at batch 1 and 8. Results:
results/h100/ab_heads_latency_2a8cbd9.txt.

    python scripts/ab_heads_latency.py
"""

import tempfile

import torch

import anchordetr_trt as at
from anchordetr_trt.bench.timing import latencies_ms, stats
from anchordetr_trt.export import example_inputs
from anchordetr_trt.weights import random_model


def main() -> None:
    float32_heads = at.AnchorDETR.set_precision
    rules = {"float32 heads": float32_heads, "all fp16": lambda model, dtype: model.to(dtype)}
    models = {}
    for name, rule in rules.items():
        at.AnchorDETR.set_precision = rule
        try:  # each its own cache_dir: the saved function's name does not see the rule
            models[name] = at.compile(random_model("r50-dc5"), backend="inductor", device="cuda",
                                      cache_dir=tempfile.mkdtemp(prefix="ab_heads_"))  # fmt: skip
        finally:
            at.AnchorDETR.set_precision = float32_heads
    for round_ in range(3):
        for batch in (1, 8):
            inputs = example_inputs((batch, 800, 800), "cuda", torch.float16)
            for name, model in models.items():
                times = latencies_ms(
                    lambda model=model, inputs=inputs: model(*inputs), model.device, warmup=10, iters=200
                )
                print(
                    f"round {round_} batch {batch} {name}: median {stats(times)['median']:.3f} ms", flush=True
                )


if __name__ == "__main__":
    main()
