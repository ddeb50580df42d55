"""Images of a dataset in padded batches, read and preprocessed in threads ahead of the model."""

import functools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from PIL import Image
from torch import Tensor

from anchordetr_trt.errors import InputError
from anchordetr_trt.images import load_image
from anchordetr_trt.transforms import preprocess

from .annotations import CocoDataset, check_counts

logger = logging.getLogger(__name__)


class Batch(NamedTuple):
    image_ids: list[int]
    images: Tensor | None  # [B, 3, H, W] float32, normalized and padded (None when B = 0)
    mask: Tensor | None  # [B, H, W] bool, True on padding
    sizes: Tensor | None  # [B, 2] int64, original (h, w)
    skipped: tuple[tuple[int, str], ...] = ()  # (image id, why) of unreadable images left out, with skip_bad


def chunk(image_ids: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches of ids; sharding whole batches keeps the padding of single-process runs."""
    check_counts(batch_size=batch_size)
    return [list(image_ids[i : i + batch_size]) for i in range(0, len(image_ids), batch_size)]


def iter_batches(
    dataset: CocoDataset,
    batches: Sequence[Sequence[int]],
    *,
    min_size: int,
    max_size: int,
    num_workers: int,
    skip_bad: bool = False,
) -> Iterator[Batch]:
    """Yield ``batches`` in order; up to ``num_workers`` of them are read and resized while the model runs.
    With ``skip_bad``, unreadable images are left out of their batch and listed in its ``skipped``."""
    load = functools.partial(load_batch, min_size=min_size, max_size=max_size, skip_bad=skip_bad)
    if num_workers <= 0:
        for ids in batches:
            yield load(dataset, ids)
        return
    with ThreadPoolExecutor(num_workers, thread_name_prefix="coco-load") as pool:
        pending: deque[Future[Batch]] = deque()
        queued = iter(batches)
        for ids in queued:
            pending.append(pool.submit(load, dataset, ids))
            if len(pending) == num_workers:
                break
        while pending:
            batch = pending.popleft().result()
            ids = next(queued, None)
            if ids is not None:
                pending.append(pool.submit(load, dataset, ids))
            yield batch


def load_batch(
    dataset: CocoDataset, image_ids: Sequence[int], min_size: int, max_size: int, skip_bad: bool = False
) -> Batch:
    images, kept, skipped = [], [], []
    for image_id in image_ids:
        try:
            images.append(dataset_image(dataset, image_id))
        except InputError as error:
            if not skip_bad:
                raise
            logger.warning("skipped: %s", error)
            skipped.append((image_id, str(error)))
        else:
            kept.append(image_id)
    if not kept:
        return Batch([], None, None, None, tuple(skipped))
    # COCO boxes are drawn on the stored pixels: EXIF orientation is not applied.
    batch, mask, sizes = preprocess(images, min_size=min_size, max_size=max_size, exif_orientation=False)
    return Batch(kept, batch, mask, sizes, tuple(skipped))


def dataset_image(dataset: CocoDataset, image_id: int) -> Image.Image:
    """The image file as stored (EXIF orientation is not applied, as in COCO's own annotations),
    checked against the size the annotation file states."""
    path = dataset.image_path(image_id)
    image = load_image(path, upright=False)
    expected = dataset.image_size(image_id)
    if expected is not None and expected != (image.height, image.width):
        raise InputError(
            f"image {path} is {image.height}x{image.width} pixels but {dataset.ann_file} says "
            f"{expected[0]}x{expected[1]} (height x width): the file does not belong to this annotation file"
        )
    return image
