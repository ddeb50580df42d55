"""A/B of the bfloat16 rule on the trained synthetic-shapes model (scripts/train_synthetic.py): eager
bfloat16 with every weight rounded (``model.to(torch.bfloat16)``, the rule before) against
``AnchorDETR.set_precision(torch.bfloat16)`` (anchor points and prediction heads float32, what
compile() runs), each scored and compared with the fp32 reference as the accuracy stage does.
Writes OUT/ab_bf16_heads.json.

    python scripts/ab_bf16_heads.py --out DIR [--ckpt .cache/train/anchordetr_synthetic.pth]
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_accuracy import compare, fp32_reference, trained_recipe
from train_synthetic import DEFAULT_CKPT, git_commit, val_settings

import anchordetr_trt as at
from anchordetr_trt.eval import evaluate_coco


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    recipe, data_dir = trained_recipe(args.ckpt, None)
    ann_file, image_dir = recipe.val_split(data_dir)
    settings = val_settings(recipe, args.batch_size)
    reference = fp32_reference(args.ckpt)
    stats = evaluate_coco(reference, ann_file, image_dir, **settings)
    rules = {
        "all_bf16": lambda model: model.to(torch.bfloat16),
        "set_precision_bf16": lambda model: model.set_precision(torch.bfloat16),
    }
    report = {"commit": git_commit(), "reference_ap": 100 * stats["AP"]}
    for name, cast in rules.items():
        model = cast(at.load_model(args.ckpt, device="cuda")).set_fused_ops(True)
        entry = compare(reference, model, name, ann_file, image_dir, settings, stats)
        report[name] = {
            key: entry[key]
            for key in ("ap", "delta_ap", "delta", "matched_rate", "mean_abs_diff", "max_abs_diff")
        }
        print(
            name,
            f"AP {entry['ap']:.2f} dAP {entry['delta_ap']:+.3f} matched {entry['matched_rate']:.4f}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab_bf16_heads.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
