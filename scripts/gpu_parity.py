"""The `make gpu` parity stage: eager FP32 against the fastest backend here, on a synthetic COCO set.

Both models get the same weights (a checkpoint, or the demo's deterministic random ones) and the same
preprocessed batches; the report (mAP of each, delta, detection agreement, numeric diffs) is written as
parity.json and parity.md. Images are square so that every batch falls in one compiled shape bucket.

    python -m scripts.gpu_parity --out DIR [--ckpt CKPT --variant r50-dc5] [--num-images 16]
"""

import argparse
import sys
import tempfile
import time

import torch

import anchordetr_trt as at
from anchordetr_trt.backends import choose_backend
from anchordetr_trt.config import variant_name
from anchordetr_trt.eval import make_synthetic_coco, parity_report, write_report
from anchordetr_trt.weights import load_or_random


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_parity: no CUDA GPU visible: this stage compares GPU backends", file=sys.stderr)
        return 2

    model = load_or_random(args.ckpt, variant=args.variant)
    # The same variant as the model: C5 and DC5 weights are identical, so the name cannot come from them.
    reference = at.load_model(model.state_dict(), variant=variant_name(model.config), device="cuda")
    reference.set_fused_ops(False)  # the official computation: plain PyTorch ops, fp32
    backend = choose_backend("auto", torch.device("cuda"))[0]
    start = time.perf_counter()
    fast = at.compile(
        model, backend=backend, opt_shape=(args.batch_size, 800, 800), max_shape=(args.batch_size, 800, 800)
    )
    print(f"compiled {backend} fp16 in {time.perf_counter() - start:.1f} s")

    with tempfile.TemporaryDirectory() as data:
        ann_file, image_dir = make_synthetic_coco(
            data, num_images=args.num_images, min_size=128, max_size=128
        )
        report = parity_report(
            reference,
            fast,
            ann_file,
            image_dir,
            names=("eager-fp32", f"{backend}-fp16"),
            batch_size=args.batch_size,
            min_size=800,
            max_size=800,
            progress=False,
        )
    report["settings"]["weights"] = (
        args.ckpt or "deterministic random weights (seed 0): agreement is not meaningful"
    )
    for path in write_report(report, args.out):
        print(f"wrote {path}")
    print(path.read_text())
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
