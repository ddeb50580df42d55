"""Comparing two detectors' outputs: differences of the values both give as finite numbers, and
detection matching. Shared by ``eval.parity_report`` and ``anchordetr_trt.testing``.

Detections are rows ``(x, y, w, h, score, key...)``: a box, its score, and one or more key columns
(the label; the label and the query). Two detections can match only where all their keys are equal.
"""

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
    and the |score change| to that detection (NaN where a score is NaN)."""
    if len(rows_a) == 0 or len(rows_b) == 0:
        return rows_a.new_zeros(len(rows_a)), rows_a.new_full((len(rows_a),), float("nan"))
    iou = box_iou(xyxy(rows_a[:, :4]), xyxy(rows_b[:, :4]))
    same_keys = (rows_a[:, None, 5:] == rows_b[None, :, 5:]).all(-1)
    if max_score_diff is not None:
        same_keys &= (rows_a[:, None, 4] - rows_b[None, :, 4]).abs() <= max_score_diff
    best_iou, best = iou.where(same_keys, 0).nan_to_num(0).max(1)
    return best_iou, (rows_a[:, 4] - rows_b[best, 4]).abs()


def count_matches(
    rows_a: np.ndarray, rows_b: np.ndarray, iou_threshold: float, max_score_diff: float | None = None
) -> tuple[int, int, float]:
    """How many detections of ``rows_a`` have one in ``rows_b`` with the same keys and IoU >
    ``iou_threshold`` (and a score within ``max_score_diff``, if given), out of how many, and the
    largest score change of those matches."""
    best_iou, score_diff = match_rows(torch.from_numpy(rows_a), torch.from_numpy(rows_b), max_score_diff)
    matched = best_iou > iou_threshold
    score_diff = score_diff[matched]
    score_diff = score_diff[score_diff.isfinite()]  # NaN outputs are counted and reported on their own
    return int(matched.sum()), len(rows_a), float(score_diff.max()) if len(score_diff) else 0.0


def xyxy(xywh: Tensor) -> Tensor:
    return torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1)
