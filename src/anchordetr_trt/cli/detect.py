"""``anchordetr-trt detect``: detections of image files as JSON lines and JSON, and annotated PNGs."""

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import InputError
from . import options, shared
from .shared import check_backend, check_cache_dir, check_sizes, device_of, local_files, plural, resized_side

DEFAULT_OUT = Path("out/detect")


def register(commands: argparse._SubParsersAction, parents: options.Parents) -> None:
    """Add the ``detect`` command to ``commands``."""
    detect = commands.add_parser(
        "detect",
        parents=[parents.common, parents.model, parents.cached],
        help="detect objects in images: JSON detections and annotated PNGs",
    )
    detect.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    detect.add_argument(
        "--out", type=Path,
        help=f"output folder (default {DEFAULT_OUT}): new, empty, or an earlier detect output, which is replaced",
    )  # fmt: skip
    detect.add_argument(
        "--threshold", type=options.fraction, default=0.5, help="minimum score to keep (default 0.5)"
    )
    detect.add_argument(
        "--top-k", type=options.top_k, default=100, help="at most this many detections per image"
    )
    detect.add_argument(
        "--batch-size", type=options.positive, default=1, help="images per model call (default 1)"
    )
    options.size_options(detect)
    detect.add_argument(
        "--no-draw", action="store_true", help="write the detections only, no annotated images"
    )
    detect.add_argument(
        "--skip-bad", action="store_true", help="report unreadable image files and go on (default: stop)"
    )
    detect.add_argument("--quiet", action="store_true", help="no progress bar and no line per image")
    detect.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..detect import detect_files, find_images
    from ..draw import draw_detections
    from ..eval import COCO_CLASSES
    from ..images import check_image
    from ..outputs import RunFolder

    # None where --out is not given: the summary then says where the files went.
    out_given, args.out = args.out is not None, args.out or DEFAULT_OUT
    check_sizes(args)
    check_cache_dir(args, args.out)
    device = device_of(args)
    check_backend(args, device)
    skipped: list[tuple[Path, str]] = []

    def skip(path: Path, err: Exception | str) -> None:
        skipped.append((path, str(err)))
        tqdm.write(f"skipped {path}: {err}", file=sys.stderr)

    paths = find_images(args.images, on_passed_over=skip)

    readable, largest_side = [], 0
    for path in paths:  # headers only, so that a file that is no image stops the run before the model loads
        try:
            side = resized_side(path, check_image(path), args, leave_out=None)
        except InputError as err:  # not an image, or too large: the other fix is to leave it out
            if not args.skip_bad:
                raise InputError(f"{err}; or --skip-bad to leave it out") from None
            skip(path, err)
            continue
        readable.append(path)
        largest_side = max(largest_side, side)
    if not readable:
        raise InputError(f"none of the {len(paths)} image files could be read (see the lines above)")

    with RunFolder(args.out, inputs=[*args.images, *local_files(args.ckpt)]) as folder:
        model = shared.compiled_model(
            args, device, batch=args.batch_size, min_size=args.min_size, max_size=args.max_size,
            largest_side=largest_side,
        )  # fmt: skip
        stream_path, records, names = folder.path / "detections.jsonl", [], set()
        if not args.no_draw:
            (folder.path / "annotated").mkdir(exist_ok=True)  # left empty by a run stopped early
        start = time.perf_counter()
        results = detect_files(
            model, readable, COCO_CLASSES, batch_size=args.batch_size, threshold=args.threshold,
            top_k=args.top_k, min_size=args.min_size, max_size=args.max_size,
            on_unreadable=skip if args.skip_bad else None,
        )  # fmt: skip
        show = not args.quiet and sys.stderr.isatty()
        try:
            with (
                stream_path.open("w") as stream,
                tqdm(
                    total=len(readable), unit="img", desc="detect", file=sys.stderr, disable=not show
                ) as bar,
            ):
                for path, image, dets in results:
                    # The image is the upright one (EXIF orientation applied), as are the boxes.
                    record = {
                        "image": str(path),
                        "height": image.height,
                        "width": image.width,
                        "detections": dets,
                    }
                    if not args.no_draw:
                        drawing = folder.path / "annotated" / f"{_unique(path.stem, names)}.png"
                        draw_detections(image, dets).save(drawing)
                        record["annotated"] = str(folder.final(drawing))
                    stream.write(json.dumps(record) + "\n")
                    stream.flush()  # each image's result is kept as soon as it is done
                    records.append(record)
                    bar.update(1)
                    if not args.quiet:
                        best = ", ".join(f"{d['name']} {d['score']:.2f}" for d in dets[:3]) or "-"
                        tqdm.write(f"{path.name}: {len(dets)} detections  {best}", file=sys.stdout)
        except KeyboardInterrupt:
            done = f"the {len(records)} images done so far are in {folder.final(stream_path)}"
            print(f"interrupted: {done}", file=sys.stderr)
            raise
        seconds = time.perf_counter() - start
        if not records:  # --skip-bad passed over every image: no run to put in place of the earlier one
            raise InputError(f"none of the {len(paths)} image files could be read (see the lines above)")
        (folder.path / "detections.json").write_text(json.dumps(records, indent=1))
        if skipped:
            (folder.path / "skipped.txt").write_text("".join(f"{path}\t{why}\n" for path, why in skipped))
    defaulted = "" if out_given else f" (--out defaults to {DEFAULT_OUT})"
    print(
        f"{plural(len(records), 'image')} in {seconds:.2f} s with {model.backend} {model.precision} on "
        f"{model.device}; wrote {args.out / 'detections.jsonl'} and {args.out / 'detections.json'}"
        + ("" if args.no_draw else f" and {args.out / 'annotated'}/*.png")
        + defaulted
        + (
            f"; skipped {len(skipped)} files (unreadable, or no images), listed in {args.out / 'skipped.txt'}"
            if skipped
            else ""
        )
    )
    return 0


def _unique(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        name, n = f"{stem}_{n}", n + 1
    taken.add(name)
    return name
