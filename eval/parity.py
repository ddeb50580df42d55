"""``parity_report``: two detectors (e.g. eager FP32 and a compiled FP16 backend) on the same images."""

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from anchordetr_trt.comparison import abs_diff, count_matches
from anchordetr_trt.errors import InputError, check_fraction

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
from .scoring import STAT_NAMES, score


class _ImageComparison(NamedTuple):
    image_id: int
    detections: tuple[np.ndarray, np.ndarray]  # per model, [top_k, 6] (x, y, w, h, score, label)
    non_finite: tuple[int, int]  # per model, NaN or infinite output values
    diffs: dict[str, tuple[float, float, int]]  # output -> (max, sum, count) of |a - b| where both finite
    matched: int  # of a's top detections, how many b also has
    compared: int
    max_score_diff: float  # over the matched detections


def parity_report(
    model_a: Detector,
    model_b: Detector,
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    names: Sequence[str] = ("a", "b"),
    batch_size: int = 8,
    max_images: int | None = None,
    devices: Sequence[str | torch.device | None] = (None, None),
    min_size: int = 800,
    max_size: int = 1333,
    top_k: int = 100,
    match_top_k: int = 10,
    iou_threshold: float = 0.9,
    match_min_score: float | None = None,
    match_max_score_diff: float | None = None,
    num_workers: int = 4,
    progress: bool = True,
) -> dict | None:
    """Run both detectors on the same preprocessed batches and compare them.

    Returns (on rank 0 under torchrun, None on other ranks) a JSON-ready dict:
    ``models`` {name: {``stats`` (as ``evaluate_coco``, or None when the model returned NaN/inf
    values), ``non_finite_values``, ``non_finite_images``, ``model_s``}}, ``delta`` {stat: b - a},
    ``agreement`` (per image, the share of a's top ``match_top_k`` detections that b's top ``top_k``
    has with the same label and IoU > ``iou_threshold``: ``mean``, ``min``, ``images_below_1``, the
    ``worst`` images, ``max_score_diff`` of the matched detections, ``matched`` of ``compared``
    detections over all images), ``numeric`` {``pred_logits``,
    ``pred_boxes``: ``max_abs_diff``, ``mean_abs_diff``} over the values both give as finite numbers,
    ``problems`` (sentences; empty when nothing is off) and ``settings``.

    ``match_min_score``: compare a's detections with at least this score instead of its top
    ``match_top_k``; ``match_max_score_diff``: a match must also keep the score within this distance.

    Agreement is meaningful for trained weights: the near-equal scores of random weights are reordered
    by any rounding difference.
    """
    if not (isinstance(names, Sequence) and len(names) == 2 and all(isinstance(n, str) for n in names)) or (
        names[0] == names[1]
    ):
        raise InputError(f"names must be two different labels, got {names!r}")
    check_counts(top_k=top_k, match_top_k=match_top_k)
    if check_fraction("iou_threshold", iou_threshold, open_low=True) == 1:
        raise InputError(f"iou_threshold must lie in (0, 1), got {iou_threshold!r}")
    for name, value in (("match_min_score", match_min_score), ("match_max_score_diff", match_max_score_diff)):
        if value is not None:
            check_fraction(name, value)
    matching = {"min_score": match_min_score, "max_score_diff": match_max_score_diff}
    dataset = load_dataset(ann_file, image_dir, max_images)
    runners = [
        TimedDetector(model, device, name=name)
        for model, device, name in zip((model_a, model_b), devices, ("model_a", "model_b"), strict=True)
    ]
    for model in (model_a, model_b):
        check_num_classes(dataset.coco.cats, num_classes_of(model), dataset.ann_file)

    def per_batch(batch: Batch) -> list[_ImageComparison]:
        outputs = [runner(batch) for runner in runners]
        for out in outputs:
            check_num_classes(dataset.coco.cats, out, dataset.ann_file)
        return _compare(
            batch, *outputs, top_k=top_k, match_top_k=match_top_k, iou_threshold=iou_threshold, **matching
        )

    done = dataset_pass(
        dataset,
        runners,
        per_batch,
        batch_size=batch_size,
        min_size=min_size,
        max_size=max_size,
        num_workers=num_workers,
        progress=progress,
        desc=f"parity {names[0]} vs {names[1]}",
    )
    if done is None:
        return None
    records, seconds = done
    models, problems = {}, []
    for index, name in enumerate(names):
        bad_images = sorted(r.image_id for r in records if r.non_finite[index])
        if bad_images:
            problems.append(
                f"{name} returned NaN or infinite values for {len(bad_images)} image(s): not scored"
            )
        stats = None if bad_images else score(dataset, {r.image_id: r.detections[index] for r in records})
        models[name] = {
            "stats": stats,
            "non_finite_values": sum(r.non_finite[index] for r in records),
            "non_finite_images": bad_images,
            "model_s": seconds[index],
        }
    return {
        "names": list(names),
        "ann_file": str(dataset.ann_file),
        "num_images": len(records),
        "settings": {
            "batch_size": batch_size,
            "min_size": min_size,
            "max_size": max_size,
            "top_k": top_k,
            "match_top_k": match_top_k,
            "iou_threshold": iou_threshold,
            "match_min_score": match_min_score,
            "match_max_score_diff": match_max_score_diff,
        },
        "models": models,
        "delta": _delta(models[names[0]]["stats"], models[names[1]]["stats"]),
        "agreement": _agreement_summary(records, dataset),
        "numeric": _numeric_summary(records),
        "problems": problems,
    }


def _compare(
    batch: Batch,
    out_a: dict,
    out_b: dict,
    *,
    top_k: int,
    match_top_k: int,
    iou_threshold: float,
    min_score: float | None = None,
    max_score_diff: float | None = None,
) -> list[_ImageComparison]:
    for key in ("pred_logits", "pred_boxes"):
        if out_a[key].shape != out_b[key].shape:
            raise InputError(
                f"the two models' {key} differ in shape ({list(out_a[key].shape)} vs {list(out_b[key].shape)}): "
                "compare models of the same variant"
            )
    out_b = {key: out_b[key].to(out_a[key].device) for key in ("pred_logits", "pred_boxes")}
    diffs = {key: abs_diff(out_a[key], out_b[key]) for key in ("pred_logits", "pred_boxes")}
    non_finite = [non_finite_counts(out).tolist() for out in (out_a, out_b)]
    dets_a, dets_b = (detections(out, batch.sizes, top_k) for out in (out_a, out_b))
    records = []
    for i, image_id in enumerate(batch.image_ids):
        rows_a = dets_a[i][:match_top_k] if min_score is None else dets_a[i][dets_a[i][:, 4] >= min_score]
        matched, compared, score_diff = count_matches(rows_a, dets_b[i], iou_threshold, max_score_diff)
        records.append(
            _ImageComparison(
                image_id=image_id,
                detections=(dets_a[i], dets_b[i]),
                non_finite=(non_finite[0][i], non_finite[1][i]),
                diffs={key: tuple(v[i].item() for v in value) for key, value in diffs.items()},
                matched=matched,
                compared=compared,
                max_score_diff=score_diff,
            )
        )
    return records


def _delta(stats_a: dict | None, stats_b: dict | None) -> dict[str, float | None]:
    if stats_a is None or stats_b is None:
        return dict.fromkeys(STAT_NAMES)
    return {
        name: None if stats_a[name] is None or stats_b[name] is None else stats_b[name] - stats_a[name]
        for name in STAT_NAMES
    }


def _agreement_summary(records: list[_ImageComparison], dataset: CocoDataset) -> dict:
    """Per image, the share of a's compared detections that b matched, over the images where a had any
    to compare (an image with none says nothing either way): mean and min (None where no image had
    any), the images below 1 and the worst five; and the totals."""
    shares = [(r.matched / r.compared, r) for r in records if r.compared]
    worst = sorted(shares, key=lambda pair: pair[0])[:5]
    return {
        "mean": float(np.mean([share for share, _ in shares])) if shares else None,
        "min": min(share for share, _ in shares) if shares else None,
        "images_compared": len(shares),
        "images_below_1": sum(share < 1 for share, _ in shares),
        "worst": [
            {
                "image_id": r.image_id,
                "file_name": dataset.coco.imgs[r.image_id]["file_name"],
                "agreement": share,
            }
            for share, r in worst
            if share < 1
        ],
        "max_score_diff": max(r.max_score_diff for r in records),
        "matched": sum(r.matched for r in records),
        "compared": sum(r.compared for r in records),
    }


def _numeric_summary(records: list[_ImageComparison]) -> dict:
    summary = {}
    for key in ("pred_logits", "pred_boxes"):
        count = sum(r.diffs[key][2] for r in records)
        summary[key] = {
            "max_abs_diff": max(r.diffs[key][0] for r in records) if count else None,
            "mean_abs_diff": sum(r.diffs[key][1] for r in records) / count if count else None,
            "values_compared": count,
        }
    return summary
