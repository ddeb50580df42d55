"""``evaluate_coco``: COCO bbox mAP of a detector over an annotation file and its images."""

import os
import time

import numpy as np
import torch

from .annotations import CocoDataset, check_counts, load_dataset
from .inference import Detector, Runner, check_num_classes, detections, non_finite_counts
from .loader import Batch
from .scoring import score
from .sweep import sweep


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
) -> dict | None:
    """COCO bbox evaluation of ``model(images [B, 3, H, W], mask [B, H, W]) -> {"pred_logits": [B, Q, C],
    "pred_boxes": [B, Q, 4] cxcywh in [0, 1]}`` whose labels are category ids (C = 91 for COCO).

    Images (the first ``max_images`` of the file) are resized as by ``preprocess(min_size=, max_size=)``,
    batched ``batch_size`` at a time and scored with pycocotools on the ``top_k`` detections per image.
    ``device``: where the inputs go (default: the model's ``.device``, else its parameters', else CPU).
    Under torchrun (or with torch.distributed initialized) each rank evaluates a share of the batches.

    Returns, on rank 0 (other ranks return None): the 12 COCO stats ``AP, AP50, AP75, APs, APm, APl,
    AR1, AR10, AR100, ARs, ARm, ARl`` (None where COCO leaves one undefined), ``per_class_AP``
    {class name: AP}, ``num_images`` and ``timing`` {``wall_s``, ``model_s`` (the slowest rank's time in
    the model), ``images_per_s`` (end to end)}. Raises InputError for bad annotations or images and
    FloatingPointError if the model returns NaN or infinite values.
    """
    start = time.perf_counter()
    check_counts(top_k=top_k)
    dataset = load_dataset(ann_file, image_dir, max_images)
    runner = Runner(model, device)

    def per_batch(batch: Batch) -> list[tuple[int, np.ndarray]]:
        outputs = runner(batch)
        check_num_classes(dataset.coco.cats, outputs, dataset.ann_file)
        _check_finite(dataset, batch.image_ids, non_finite_counts(outputs))
        return list(zip(batch.image_ids, detections(outputs, batch.sizes, top_k), strict=True))

    done = sweep(
        dataset,
        [runner],
        per_batch,
        batch_size=batch_size,
        min_size=min_size,
        max_size=max_size,
        num_workers=num_workers,
        progress=progress,
        desc="COCO eval",
    )
    if done is None:
        return None
    records, (model_seconds,) = done
    result = score(dataset, dict(records))
    wall = time.perf_counter() - start
    num_images = len(dataset.image_ids)
    timing = {"wall_s": wall, "model_s": model_seconds, "images_per_s": num_images / wall}
    return {**result, "num_images": num_images, "timing": timing}


def _check_finite(dataset: CocoDataset, image_ids: list[int], counts: torch.Tensor) -> None:
    bad = [
        str(dataset.image_path(image_id)) for image_id, n in zip(image_ids, counts.tolist(), strict=True) if n
    ]
    if bad:
        raise FloatingPointError(
            f"the model returned NaN or infinite values for {', '.join(bad)}: such images cannot be scored; "
            "check the model's precision (compare with precision='fp32') and its inputs"
        )
