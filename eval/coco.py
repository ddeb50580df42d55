"""``evaluate_coco``: COCO bbox mAP of a detector over an annotation file and its images."""

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import torch

from anchordetr_trt.errors import InputError, check_bool

from .annotations import CocoDataset, check_counts, load_dataset
from .dataset_pass import dataset_pass
from .inference import (
    Detector,
    TimedDetector,
    check_num_classes,
    detections,
    non_finite_counts,
    num_classes_of,
)
from .loader import Batch
from .scoring import score


def evaluate_coco(
    model: Detector,
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    max_images: int | None = None,
    device: str | torch.device | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    top_k: int = 100,
    num_workers: int = 4,
    progress: bool = True,
    skip_bad_images: bool = False,
    category_map: Mapping[int, int] | None = None,
) -> dict | None:
    """COCO bbox evaluation of ``model(images [B, 3, H, W], mask [B, H, W]) -> {"pred_logits": [B, Q, C],
    "pred_boxes": [B, Q, 4] cxcywh in [0, 1]}`` whose labels are category ids (C = 91 for COCO).

    Images (the first ``max_images`` of the file) are resized as by ``preprocess(min_size=, max_size=)``,
    batched ``batch_size`` at a time and scored with pycocotools on the ``top_k`` detections per image.
    ``device``: where the inputs go (default: the model's ``.device``, else its parameters', else CPU).
    Under torchrun (or with torch.distributed initialized) each rank evaluates a share of the batches.
    ``skip_bad_images``: leave unreadable images out (logged, listed in the result, not scored) instead of
    raising. ``category_map``: {dataset category id: model label} for datasets not numbered as COCO;
    without it, a category with a COCO name must have its COCO id (else InputError).

    Returns, on rank 0 (other ranks return None): the 12 COCO stats ``AP, AP50, AP75, APs, APm, APl,
    AR1, AR10, AR100, ARs, ARm, ARl`` (None where COCO leaves one undefined), ``per_class_AP``
    {class name: AP}, ``num_images`` and ``timing`` {``wall_s``, ``model_s`` (the slowest rank's time in
    the model), ``images_per_s`` (end to end)}, and with ``skip_bad_images`` ``skipped_images``
    [{``image_id``, ``file``, ``error``}]; ``num_images`` counts the images scored. Raises InputError for bad annotations or images and
    FloatingPointError if the model returns NaN or infinite values.
    """
    start = time.perf_counter()
    check_counts(top_k=top_k)
    check_bool("skip_bad_images", skip_bad_images)
    dataset = load_dataset(ann_file, image_dir, max_images, category_map)
    runner = TimedDetector(model, device)
    check_num_classes(dataset.coco.cats, num_classes_of(model), dataset.ann_file, category_map)
    to_category = _label_lookup(category_map)

    def per_batch(batch: Batch) -> list[tuple[int, np.ndarray | str]]:
        skipped: list[tuple[int, np.ndarray | str]] = list(batch.skipped)
        if not batch.image_ids:
            return skipped
        outputs = runner(batch)
        check_num_classes(dataset.coco.cats, outputs, dataset.ann_file, category_map)
        _check_finite(dataset, batch.image_ids, non_finite_counts(outputs))
        found = [to_category(rows) for rows in detections(outputs, batch.sizes, top_k)]
        return list(zip(batch.image_ids, found, strict=True)) + skipped

    done = dataset_pass(
        dataset,
        [runner],
        per_batch,
        batch_size=batch_size,
        min_size=min_size,
        max_size=max_size,
        num_workers=num_workers,
        progress=progress,
        desc="COCO eval",
        skip_bad_images=skip_bad_images,
    )
    if done is None:
        return None
    records, (model_seconds,) = done
    skipped = {image_id: error for image_id, error in records if isinstance(error, str)}
    if len(skipped) == len(dataset.image_ids):
        raise InputError(f"none of the {len(skipped)} images could be read: there is nothing to score")
    scored = replace(dataset, image_ids=tuple(i for i in dataset.image_ids if i not in skipped))
    result = score(scored, {image_id: rows for image_id, rows in records if image_id not in skipped})
    wall = time.perf_counter() - start
    num_images = len(scored.image_ids)
    timing = {"wall_s": wall, "model_s": model_seconds, "images_per_s": num_images / wall}
    result = {**result, "num_images": num_images, "timing": timing}
    if skip_bad_images:
        result["skipped_images"] = [
            {"image_id": image_id, "file": str(dataset.image_path(image_id)), "error": error}
            for image_id, error in skipped.items()
        ]
    return result


def _label_lookup(category_map: Mapping[int, int] | None) -> Callable[[np.ndarray], np.ndarray]:
    """Detection rows with model labels -> rows with dataset category ids (unmapped labels dropped)."""
    if category_map is None:
        return lambda rows: rows
    to_category = {label: category_id for category_id, label in category_map.items()}

    def convert(rows: np.ndarray) -> np.ndarray:
        categories = np.array([to_category.get(int(label), -1) for label in rows[:, 5]], dtype=np.float64)
        rows = rows[categories >= 0].copy()
        rows[:, 5] = categories[categories >= 0]
        return rows

    return convert


def _check_finite(dataset: CocoDataset, image_ids: list[int], counts: torch.Tensor) -> None:
    bad = [
        str(dataset.image_path(image_id)) for image_id, n in zip(image_ids, counts.tolist(), strict=True) if n
    ]
    if bad:
        raise FloatingPointError(
            f"the model returned NaN or infinite values for {', '.join(bad)}: such images cannot be scored; "
            "check the model's precision (compare with precision='fp32') and its inputs"
        )
