"""``anchordetr-trt demo``: detection on generated images with the best backend here (no download)."""

import argparse
from pathlib import Path

from . import options
from .shared import device_of, local_files


def register(commands: argparse._SubParsersAction, parents: options.Parents) -> None:
    """Add the ``demo`` command to ``commands``."""
    demo = commands.add_parser(
        "demo",
        parents=[parents.common],
        help="detect on generated images with the best backend here (no download)",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("out/demo"),
        help="output folder (default out/demo): new, empty, or an earlier demo output, which is replaced",
    )  # fmt: skip
    options.optional_checkpoint(demo, "checkpoint (default: deterministic random weights)")
    demo.add_argument("--num-images", type=options.positive, default=4, help="generated images (default 4)")
    demo.add_argument("--top-k", type=options.top_k, default=5, help="detections drawn per image (default 5)")
    demo.add_argument(
        "--seed", type=options.seed, default=0, help="seed of the images and random weights (default 0)"
    )
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..outputs import RunFolder

    device = device_of(args)
    with RunFolder(args.out, inputs=local_files(args.ckpt)) as folder:
        run_demo(
            folder.path, ckpt=args.ckpt, variant=args.variant, num_images=args.num_images, seed=args.seed,
            top_k=args.top_k, device=device,
        )  # fmt: skip
    print(f"wrote {args.out}/report.md, report.json, detections.json and annotated/*.png")
    return 0
