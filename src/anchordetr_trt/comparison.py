"""Comparing two detectors' outputs: differences of the values both give as finite numbers, and
detection matching. Shared by ``eval.parity_report`` and ``anchordetr_trt.testing``.

Detections are rows ``(x, y, w, h, score, key...)``: a box, its score, and one or more key columns
(the label; the label and the query). Two detections can match only where all their keys are equal.
"""

import math

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou


def finite_abs_diff(a: Tensor, b: Tensor) -> Tensor:
    """|a - b| in float64, 0 where either value is NaN or infinite (those are counted on their own)."""
    both_finite = torch.isfinite(a) & torch.isfinite(b)
    return (a.double() - b.double()).abs().where(both_finite, 0)


def abs_diff(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per image (dim 0): max, sum and count of |a - b| over the values finite in both."""
    diff = finite_abs_diff(a, b).flatten(1)
    both_finite = (torch.isfinite(a) & torch.isfinite(b)).flatten(1)
    return diff.max(1).values, diff.sum(1), both_finite.sum(1)


def match_rows(rows_a: Tensor, rows_b: Tensor, max_score_diff: float | None = None) -> tuple[Tensor, Tensor]:
    """For each detection of ``rows_a`` [Na, 5 + K]: the best IoU with a detection of ``rows_b``
    [Nb, 5 + K] with the same K keys (and a score within ``max_score_diff``, if given; 0 where none),
    and the |score change| to that detection (NaN where a score is NaN). Not one-to-one: for keys
    that name one detection each (the query among them)."""
    if len(rows_a) == 0 or len(rows_b) == 0:
        return rows_a.new_zeros(len(rows_a)), rows_a.new_full((len(rows_a),), float("nan"))
    best_iou, best = _pair_ious(rows_a, rows_b, max_score_diff).max(1)
    return best_iou, (rows_a[:, 4] - rows_b[best, 4]).abs()


def count_matches(
    rows_a: np.ndarray, rows_b: np.ndarray, iou_threshold: float, max_score_diff: float | None = None
) -> tuple[int, int, float]:
    """How many detections of ``rows_a`` have one in ``rows_b`` with the same keys and IoU >
    ``iou_threshold`` (and a score within ``max_score_diff``, if given), out of how many, and the
    largest score change of those matches. One to one: in descending score order, each detection of
    ``rows_a`` takes the free one of ``rows_b`` with the highest such IoU, so that two duplicates of
    ``rows_a`` cannot both match one detection."""
    a, b = torch.from_numpy(rows_a), torch.from_numpy(rows_b)
    if len(a) == 0 or len(b) == 0:
        return 0, len(a), 0.0
    ious = _pair_ious(a, b, max_score_diff)
    free = torch.ones(len(b), dtype=torch.bool)
    matched, largest = 0, 0.0
    for i in torch.argsort(a[:, 4].nan_to_num(-math.inf), descending=True).tolist():  # NaN scores last
        candidates = ious[i].where(free, 0)
        j = int(candidates.argmax())
        if candidates[j] > iou_threshold:
            free[j] = False
            matched += 1
            change = abs(float(a[i, 4] - b[j, 4]))
            if math.isfinite(change):  # NaN outputs are counted and reported on their own
                largest = max(largest, change)
    return matched, len(a), largest


def _pair_ious(rows_a: Tensor, rows_b: Tensor, max_score_diff: float | None) -> Tensor:
    """[Na, Nb] IoU of each pair with the same keys (and scores within ``max_score_diff``), else 0."""
    iou = box_iou(xyxy(rows_a[:, :4]), xyxy(rows_b[:, :4]))
    same_keys = (rows_a[:, None, 5:] == rows_b[None, :, 5:]).all(-1)
    if max_score_diff is not None:
        same_keys &= (rows_a[:, None, 4] - rows_b[None, :, 4]).abs() <= max_score_diff
    return iou.where(same_keys, 0).nan_to_num(0)


def xyxy(xywh: Tensor) -> Tensor:
    return torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1)
