"""Detection on image files: finding them, batched inference, JSON-ready detections as each batch ends."""

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from .errors import InputError, check_fraction, check_int, check_path
from .eval.inference import Detector, input_device_dtype
from .images import IMAGE_SUFFIXES, load_image
from .transforms import postprocess, preprocess


def find_images(
    paths: Sequence[str | os.PathLike], on_passed_over: Callable[[Path, str], None] | None = None
) -> list[Path]:
    """Image files named by ``paths``: files as given, folders expanded to their images (sorted, not
    recursive). Each other entry of a folder (another file type, a subfolder, a broken link) is
    reported to ``on_passed_over(path, why)``. Raises FileNotFoundError for a missing path and
    InputError when nothing is found."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not isinstance(paths, Sequence):
        raise InputError(f"paths must be a list of image files or folders, got {paths!r}")
    found = []
    for path in (Path(check_path("paths", p)) for p in paths):
        if path.is_dir():
            images = []
            for entry in sorted(path.iterdir()):
                why = _not_an_image(entry)
                if why is None:
                    images.append(entry)
                elif on_passed_over is not None:
                    on_passed_over(entry, why)
            if not images:
                raise InputError(
                    f"folder {path} has no images ({', '.join(IMAGE_SUFFIXES)}): pass image files or another folder"
                )
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}")
    if not found:
        raise InputError("no images given: pass image files or folders")
    return found


def _not_an_image(entry: Path) -> str | None:
    """Why a folder's ``entry`` is not one of its images to read, or None."""
    if entry.is_symlink() and not entry.exists():
        return "a link to a file that does not exist"
    if entry.is_dir():
        return "a folder (folders are not searched inside)"
    if not entry.is_file():
        return "not a regular file"
    if entry.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file type ({entry.suffix or 'no suffix'}); pass it by name to read it anyway"
    return None


@torch.no_grad()
def detect(
    model: Detector,
    images: Sequence[Image.Image],
    class_names: Sequence[str],
    *,
    threshold: float = 0.5,
    top_k: int = 100,
    batch_size: int = 1,
    min_size: int = 800,
    max_size: int = 1333,
) -> list[list[dict]]:
    """Per image, its detections scoring at least ``threshold`` among the ``top_k`` best, best first.

    ``model(images [B, 3, H, W], mask [B, H, W])`` is a compiled or plain AnchorDETR; inputs go to its
    ``.device``/``.dtype`` when it has them. Each detection is ``{"label": int, "name": str, "score":
    float, "box": [x0, y0, x1, y1]}`` with the box in pixels of the original image, clipped to it.
    """
    check_fraction("threshold", threshold)
    check_int("top_k", top_k)
    check_int("batch_size", batch_size)
    if not isinstance(images, Sequence) or isinstance(images, str | bytes):
        raise InputError(
            f"images must be a list of images, got a {type(images).__name__}: e.g. detect(model, [image], ...)"
        )
    if (
        not isinstance(class_names, Sequence)
        or isinstance(class_names, str)
        or not all(isinstance(name, str) for name in class_names)
    ):
        raise InputError(
            f"class_names must be a list of names, one per label (e.g. anchordetr_trt.eval.COCO_CLASSES), got {class_names!r:.80}"
        )
    device, dtype = input_device_dtype(model)
    results = []
    for start in range(0, len(images), batch_size):
        batch, mask, sizes = preprocess(
            images[start : start + batch_size], min_size=min_size, max_size=max_size
        )
        outputs = model(batch.to(device, dtype), mask.to(device))
        for found, (height, width) in zip(postprocess(outputs, sizes, top_k), sizes.tolist(), strict=True):
            keep = found["scores"] >= threshold
            boxes = found["boxes"][keep].float().cpu()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            results.append(
                [
                    {"label": label, "name": _name(class_names, label), "score": score, "box": box}
                    for label, score, box in zip(
                        found["labels"][keep].tolist(),
                        found["scores"][keep].tolist(),
                        boxes.tolist(),
                        strict=True,
                    )
                ]
            )
    return results


def detect_files(
    model: Detector,
    paths: Sequence[Path],
    class_names: Sequence[str],
    *,
    batch_size: int = 1,
    on_unreadable: Callable[[Path, InputError], None] | None = None,
    **options,
) -> Iterator[tuple[Path, Image.Image, list[dict]]]:
    """``detect`` on image files, read upright (EXIF orientation applied) one batch at a time: yields
    ``(path, image, detections)`` as each batch finishes. An unreadable file raises InputError, or,
    with ``on_unreadable``, is reported to it and passed over. ``options``: those of ``detect``."""
    if on_unreadable is not None and not callable(on_unreadable):
        raise InputError(f"on_unreadable must be a function (path, error) or None, got {on_unreadable!r}")
    pending: list[tuple[Path, Image.Image]] = []
    for index, path in enumerate(paths):
        try:
            pending.append((path, load_image(path)))
        except InputError as err:
            if on_unreadable is None:
                raise
            on_unreadable(path, err)
        if pending and (len(pending) == batch_size or index == len(paths) - 1):
            images = [image for _, image in pending]
            found = detect(model, images, class_names, batch_size=batch_size, **options)
            yield from ((path, image, dets) for (path, image), dets in zip(pending, found, strict=True))
            pending = []


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else f"class {label}"
