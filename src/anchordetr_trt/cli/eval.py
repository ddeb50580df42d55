"""``anchordetr-trt eval``: COCO bbox mAP of the model on an annotation file and its images."""

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from . import options, shared
from .options import PROG
from .shared import (
    check_backend,
    check_cache_dir,
    check_sizes,
    device_of,
    local_files,
    plural,
    rate,
    resized_side,
)


def register(commands: argparse._SubParsersAction, parents: options.Parents) -> None:
    """Add the ``eval`` command to ``commands``."""
    evaluate = commands.add_parser(
        "eval",
        parents=[parents.common, parents.model, parents.cached],
        help="COCO bbox mAP on an annotation file",
    )
    evaluate.add_argument("--ann-file", type=Path, required=True, help="COCO instances JSON")
    evaluate.add_argument(
        "--image-dir", type=Path, required=True, help="folder of the annotation file's images"
    )
    evaluate.add_argument(
        "--batch-size", type=options.positive, default=8, help="images per model call (default 8)"
    )
    evaluate.add_argument("--max-images", type=options.positive, help="evaluate only the first N images")
    options.size_options(evaluate)
    evaluate.add_argument("--out", type=Path, help="also write the results to this JSON file (a new file)")
    evaluate.add_argument(
        "--skip-bad", action="store_true", help="leave out unreadable images and list them (default: stop)"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval import evaluate_coco
    from ..eval.annotations import load_dataset
    from ..outputs import check_results, write_results

    for flag, path, is_kind, kind, what in (
        ("--ann-file", args.ann_file, Path.is_file, "file", "a COCO annotation file (instances_*.json)"),
        ("--image-dir", args.image_dir, Path.is_dir, "folder", "the folder of its images"),
    ):
        if not is_kind(path):
            problem = "does not exist" if not path.exists() else f"is not a {kind}"
            raise InputError(f"{flag} {path} {problem}: pass {what}")
    check_sizes(args)
    check_cache_dir(args)
    if args.out is not None:
        check_results(
            [args.out], writer="eval", inputs=[args.ann_file, args.image_dir, *local_files(args.ckpt)]
        )
    device = device_of(args)
    check_backend(args, device)
    dataset = load_dataset(args.ann_file, args.image_dir, args.max_images)  # its errors come before compiling
    largest_side = max(
        (
            resized_side(dataset.image_path(image_id), size, args, "--max-images to stop before it")
            for image_id in dataset.image_ids
            if (size := dataset.image_size(image_id)) is not None
        ),
        default=0,
    )
    model = shared.compiled_model(
        args, device, batch=args.batch_size, min_size=args.min_size, max_size=args.max_size,
        largest_side=largest_side,
    )  # fmt: skip
    # skip_bad_images: evaluate_coco's option to leave unreadable images out and list them.
    options = {"skip_bad_images": True} if args.skip_bad else {}
    result = evaluate_coco(
        model, args.ann_file, args.image_dir, batch_size=args.batch_size, max_images=args.max_images,
        min_size=args.min_size, max_size=args.max_size, progress=not args.quiet and sys.stderr.isatty(),
        **options,
    )  # fmt: skip
    for item in result.get("skipped_images", []):
        print(f"skipped {item['file']}: {item['error']}", file=sys.stderr)
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
    stats = "  ".join(f"{n} {result[n]:.3f}" if result.get(n) is not None else f"{n} n/a" for n in names)
    print(f"{plural(result['num_images'], 'image')}, {model.backend} {model.precision}: {stats}")
    print(f"{rate(result['timing']['images_per_s'])} images/s end to end")
    if args.out is not None:
        write_results(
            {args.out: json.dumps({"tool": f"{PROG} eval", **result}, indent=1).encode()}, writer="eval"
        )
        print(f"wrote {args.out}")
    return 0
