"""COCO bbox scoring of detections with pycocotools' COCOeval."""

import contextlib
import io
import logging
from collections.abc import Mapping

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .annotations import CocoDataset

logger = logging.getLogger(__name__)

# The order of COCOeval.stats.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def score(dataset: CocoDataset, detections: Mapping[int, np.ndarray]) -> dict:
    """COCOeval (bbox) over ``dataset.image_ids``.

    ``detections``: image id -> [k, 6] rows (x, y, w, h, score, category id), boxes in pixels.
    Returns the 12 stats by name and ``per_class_AP`` {class name: AP} for the classes that have ground
    truth in these images; a stat that COCO leaves undefined (no ground truth of that size) is None.
    """
    rows = [np.column_stack((np.full(len(d), image_id), d)) for image_id, d in detections.items() if len(d)]
    log = io.StringIO()
    # pycocotools reports on stdout; its report is kept for logging at DEBUG, the caller prints the stats.
    with contextlib.redirect_stdout(log):
        results = dataset.coco.loadRes(np.concatenate(rows)) if rows else _no_results(dataset.coco)
        coco_eval = COCOeval(dataset.coco, results, "bbox")
        coco_eval.params.imgIds = list(dataset.image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("COCOeval:\n%s", log.getvalue().strip())
    stats = {name: _defined(value) for name, value in zip(STAT_NAMES, coco_eval.stats, strict=True)}
    return {**stats, "per_class_AP": _per_class_ap(coco_eval, dataset.category_names())}


def _per_class_ap(coco_eval: COCOeval, names: dict[int, str]) -> dict[str, float]:
    # precision: [IoU thresholds, recall points, categories, area ranges, max detections]; -1 = no ground truth
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        if values.size:
            name = names[cat_id] if names[cat_id] not in per_class else f"{names[cat_id]} (id {cat_id})"
            per_class[name] = float(values.mean())
    return per_class


def _no_results(coco: COCO) -> COCO:
    results = COCO()
    results.dataset = {
        "images": coco.dataset["images"],
        "categories": coco.dataset["categories"],
        "annotations": [],
    }
    results.createIndex()
    return results


def _defined(value: float) -> float | None:
    return None if value < 0 else float(value)
