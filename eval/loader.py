"""Images of a dataset in padded batches, read and preprocessed in threads ahead of the model."""

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


class Batch(NamedTuple):
    image_ids: list[int]
    images: Tensor  # [B, 3, H, W] float32, normalized and padded
    mask: Tensor  # [B, H, W] bool, True on padding
    sizes: Tensor  # [B, 2] int64, original (h, w)


def chunk(image_ids: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches of ids; sharding whole batches keeps the padding of single-process runs."""
    check_counts(batch_size=batch_size)
    return [list(image_ids[i : i + batch_size]) for i in range(0, len(image_ids), batch_size)]


def iter_batches(
    dataset: CocoDataset, batches: Sequence[Sequence[int]], *, min_size: int, max_size: int, num_workers: int
) -> Iterator[Batch]:
    """Yield ``batches`` in order; up to ``num_workers`` of them are read and resized while the model runs."""
    if num_workers <= 0:
        for ids in batches:
            yield load_batch(dataset, ids, min_size, max_size)
        return
    with ThreadPoolExecutor(num_workers, thread_name_prefix="coco-load") as pool:
        pending: deque[Future[Batch]] = deque()
        queued = iter(batches)
        for ids in queued:
            pending.append(pool.submit(load_batch, dataset, ids, min_size, max_size))
            if len(pending) == num_workers:
                break
        while pending:
            batch = pending.popleft().result()
            ids = next(queued, None)
            if ids is not None:
                pending.append(pool.submit(load_batch, dataset, ids, min_size, max_size))
            yield batch


def load_batch(dataset: CocoDataset, image_ids: Sequence[int], min_size: int, max_size: int) -> Batch:
    images = [dataset_image(dataset, image_id) for image_id in image_ids]
    batch, mask, sizes = preprocess(images, min_size=min_size, max_size=max_size)
    return Batch(list(image_ids), batch, mask, sizes)


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
