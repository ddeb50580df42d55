"""Parity assertions for tests, in the style of ``torch.testing.assert_close``.

``assert_detections_close(actual, expected)`` compares two model outputs (dicts of ``pred_logits``
[B, Q, C] and ``pred_boxes`` [B, Q, 4]); ``assert_parity(model, reference, images)`` runs two models
on the same images first. Both raise AssertionError with a report: the largest differences of logits
and boxes and where they are, the share of the reference's detections that the other output gives
too, NaN/inf counts, and the worst image. ``compare_detections`` returns the same figures without
asserting.

Default tolerances, by the precision the compared model computes in (``TOLERANCES``):

========= ========== ========= ============ ============== ================
precision logits     boxes     match: IoU > score within   matched at least
========= ========== ========= ============ ============== ================
fp32      0.005      0.0005    0.99         0.001          99%
fp16      0.15       0.01      0.9          0.02           99%
bf16      1.0        0.05      0.8          0.08           90%
========= ========== ========= ============ ============== ================

fp16 and bf16 sit about twice above what the trained-model check measured against eager fp32
(docs/accuracy.md), with the match rule of that check for fp16 (IoU 0.9, score within 0.02, 99%);
bf16 moves more scores past 0.02 and is held to a looser score and match rule. fp32 is not measured
against a second fp32 implementation: a tenth of the fp16 figure (other summation orders, TF32
convolutions). Every figure can be overridden per call. Compiled backends pad height and width to multiples of 32, which
alone moves logits by up to 0.02: at fp32, compare on inputs already on that grid (or pass
``logits_atol=0.03``).

A detection of the reference is a (query, class) pair among its ``top_k`` highest scores of an image
with score >= ``score_threshold``; it is matched when the other output's box of that query has IoU >
``iou_threshold`` with it and its score for that class is within ``score_atol``. Pairing by query
rather than by overlap keeps the check exact for untrained weights, whose boxes all look alike.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .comparison import finite_abs_diff, match_rows
from .devices import check_tensor_device
from .errors import InputError
from .model import OUTPUTS, check_inputs

__all__ = [
    "TOLERANCES",
    "DetectionComparison",
    "Tolerance",
    "assert_detections_close",
    "assert_parity",
    "compare_detections",
    "example_batches",
]

_PRECISION_OF_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Tolerance:
    """How far a model may be from its reference (see the module docstring)."""

    logits_atol: float
    boxes_atol: float
    iou_threshold: float
    score_atol: float
    min_match_rate: float


TOLERANCES = {
    "fp32": Tolerance(logits_atol=5e-3, boxes_atol=5e-4, iou_threshold=0.99, score_atol=1e-3, min_match_rate=0.99),
    "fp16": Tolerance(logits_atol=0.15, boxes_atol=1e-2, iou_threshold=0.9, score_atol=2e-2, min_match_rate=0.99),
    "bf16": Tolerance(logits_atol=1.0, boxes_atol=5e-2, iou_threshold=0.8, score_atol=8e-2, min_match_rate=0.9),
}  # fmt: skip


@dataclass
class DetectionComparison:
    """The figures of one comparison; ``failures`` lists what is outside ``tolerance`` (empty: close)."""

    precision: str
    tolerance: Tolerance
    max_abs_diff: dict[str, float]  # output -> largest |actual - expected| over values finite in both
    worst_at: dict[str, tuple[int, ...]]  # output -> (image, query[, class]) of that difference
    finite_in_both: dict[str, tuple[int, int]]  # output -> (values finite in both, values)
    matched: int
    compared: int  # the reference's detections (see the module docstring)
    per_image: list[tuple[int, int]]  # (matched, compared) per image
    non_finite: dict[str, dict[str, int]]  # "actual"/"expected" -> output -> NaN/inf count
    failures: list[str] = field(default_factory=list)

    @property
    def match_rate(self) -> float | None:
        return self.matched / self.compared if self.compared else None

    @property
    def worst_image(self) -> int:
        """The image with the lowest matched share (ties: the largest logit difference)."""
        shares = [m / c if c else 1.0 for m, c in self.per_image]
        return min(range(len(shares)), key=lambda i: (shares[i], i != self.worst_at["pred_logits"][0]))

    def figures(self) -> dict:
        """JSON-ready figures."""
        return {
            "precision": self.precision,
            "max_abs_diff": self.max_abs_diff,
            "match_rate": self.match_rate,
            "matched": self.matched,
            "compared": self.compared,
            "non_finite": self.non_finite,
            "worst_image": self.worst_image,
        }

    def report(self) -> str:
        """A readable report; its first line says whether the outputs are close."""
        tol = self.tolerance
        head = "Detections are close" if not self.failures else "Detections are not close"
        lines = [
            f"{head} (tolerances for {self.precision}: logits {tol.logits_atol:g}, boxes {tol.boxes_atol:g}; "
            f"a detection matches with IoU > {tol.iou_threshold:g} and score within {tol.score_atol:g}):"
        ]
        for key, atol in (("pred_logits", tol.logits_atol), ("pred_boxes", tol.boxes_atol)):
            diff, where = self.max_abs_diff[key], self.worst_at[key]
            names = ("image", "query", "class")
            at = ", ".join(f"{name} {index}" for name, index in zip(names, where, strict=False))
            verdict = "FAIL" if diff > atol else "ok"
            finite, total = self.finite_in_both[key]
            over = f" over the {finite} of {total} values finite in both" if finite < total else ""
            lines.append(f"  {verdict:<4} {key}: max abs diff {diff:.3g} (limit {atol:g}) at {at}{over}")
        if self.compared:
            m, c = self.per_image[self.worst_image]
            rate = f"{self.matched} of {self.compared} ({self.match_rate:.1%}, at least {tol.min_match_rate:.0%})"
            verdict = "FAIL" if self.match_rate < tol.min_match_rate else "ok"
            lines.append(
                f"  {verdict:<4} matched detections: {rate}; worst image {self.worst_image}: {m} of {c}"
            )
        else:
            lines.append(
                "  n/a  matched detections: the reference has no detection above the score threshold"
            )
        counts = {side: sum(by_key.values()) for side, by_key in self.non_finite.items()}
        verdict = "FAIL" if any(counts.values()) else "ok"
        detail = ", ".join(
            f"{side} {counts[side]} ({', '.join(f'{k} {n}' for k, n in self.non_finite[side].items())})"
            for side in counts
        )
        lines.append(f"  {verdict:<4} NaN/inf values: {detail}")
        return "\n".join(lines)


def compare_detections(
    actual: dict[str, Tensor],
    expected: dict[str, Tensor],
    *,
    precision: str | None = None,
    score_threshold: float = 0.05,
    top_k: int = 100,
    **tolerance: float,
) -> DetectionComparison:
    """Compare two model outputs; see ``assert_detections_close`` for the arguments."""
    _check_outputs(actual, expected)
    precision = precision or _precision_of(actual)
    tol = _tolerance(precision, tolerance)
    if not (
        _is_number(top_k, int) and top_k >= 1 and _is_number(score_threshold) and 0 <= score_threshold <= 1
    ):
        raise InputError(
            f"top_k must be an int >= 1 and score_threshold in [0, 1], got {top_k!r} and {score_threshold!r}"
        )
    actual = {key: actual[key].detach().float().to(expected[key].device) for key in OUTPUTS}
    expected = {key: expected[key].detach().float() for key in OUTPUTS}
    max_diff, worst_at, finite_in_both = {}, {}, {}
    for key in OUTPUTS:
        both = torch.isfinite(actual[key]) & torch.isfinite(expected[key])
        finite_in_both[key] = (int(both.sum()), both.numel())
        diff = finite_abs_diff(actual[key], expected[key])
        flat = int(diff.argmax())
        max_diff[key] = float(diff.flatten()[flat])
        worst_at[key] = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        if key == "pred_boxes":
            worst_at[key] = worst_at[key][:2]  # the coordinate is not worth naming
    per_image = [
        _match_image(actual, expected, image, score_threshold, top_k, tol)
        for image in range(expected["pred_logits"].shape[0])
    ]
    non_finite = {
        side: {key: int((~torch.isfinite(out[key])).sum()) for key in OUTPUTS}
        for side, out in (("actual", actual), ("expected", expected))
    }
    comparison = DetectionComparison(
        precision=precision,
        tolerance=tol,
        max_abs_diff=max_diff,
        worst_at=worst_at,
        finite_in_both=finite_in_both,
        matched=sum(m for m, _ in per_image),
        compared=sum(c for _, c in per_image),
        per_image=per_image,
        non_finite=non_finite,
    )
    comparison.failures = _failures(comparison)
    return comparison


def assert_detections_close(
    actual: dict[str, Tensor],
    expected: dict[str, Tensor],
    *,
    precision: str | None = None,
    score_threshold: float = 0.05,
    top_k: int = 100,
    msg: str | None = None,
    **tolerance: float,
) -> None:
    """Raise AssertionError unless ``actual`` is close to ``expected`` (the reference's output).

    ``precision`` ("fp32", "fp16", "bf16") picks the default tolerances of ``TOLERANCES``; by default
    the dtype of ``actual["pred_logits"]`` (compiled modules, and models after ``set_precision``,
    return float32 whatever they compute in: pass their precision, or use ``assert_parity``, which
    does). Keyword overrides: ``logits_atol``, ``boxes_atol``, ``iou_threshold``, ``score_atol``,
    ``min_match_rate``. Detections compared are the reference's ``top_k`` per image with score >=
    ``score_threshold``. ``msg`` heads the report.
    """
    comparison = compare_detections(
        actual, expected, precision=precision, score_threshold=score_threshold, top_k=top_k, **tolerance
    )
    if comparison.failures:
        report = comparison.report()
        raise AssertionError(f"{msg}\n{report}" if msg else report)


def assert_parity(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    images: Tensor | Sequence,
    mask: Tensor | None = None,
    *,
    precision: str | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    score_threshold: float = 0.05,
    top_k: int = 100,
    **tolerance: float,
) -> None:
    """Run ``model`` and ``reference`` (e.g. a compiled module and the eager fp32 model) on the same
    images and ``assert_detections_close`` their outputs.

    ``images``: a batch [B, 3, H, W] (normalized, as ``preprocess`` makes it) with its padding ``mask``
    [B, H, W] (None: no padding), or a list of images (arrays, PIL images, CHW tensors) that
    ``preprocess(images, min_size=..., max_size=...)`` batches. Each model gets the inputs on its own
    device and dtype. ``precision`` defaults to the model's ``.precision`` or its parameters' dtype.
    """
    from .eval.inference import TimedDetector
    from .eval.loader import Batch
    from .transforms import preprocess

    if not (isinstance(images, Tensor) and images.dim() == 4):
        if mask is not None:
            raise InputError(
                "assert_parity: pass mask only with a batch tensor; preprocess makes the mask of a list"
            )
        images, mask, _ = preprocess(images, min_size=min_size, max_size=max_size)
    check_inputs(images, mask)  # the model's own rules: normalized float images, a bool mask
    if mask is None:
        mask = torch.zeros_like(images[:, 0], dtype=torch.bool)
    batch = Batch(list(range(len(images))), images, mask, torch.zeros(len(images), 2, dtype=torch.int64))
    runner, reference_runner = TimedDetector(model), TimedDetector(reference, name="reference")
    with torch.no_grad():
        actual, expected = runner(batch), reference_runner(batch)
    if precision is None:
        precision = getattr(model, "precision", None) or _PRECISION_OF_DTYPE.get(runner.dtype, "fp32")
    assert_detections_close(
        actual,
        expected,
        precision=precision,
        score_threshold=score_threshold,
        top_k=top_k,
        msg=f"{_describe(model)} vs {_describe(reference)} on {len(images)} image(s) of {tuple(images.shape[2:])}",
        **tolerance,
    )


# Image sizes (height, width) of ``example_batches``, one tuple per batch: the first pads both images.
EXAMPLE_IMAGE_SIZES = (((120, 160), (160, 100)), ((96, 128),))
# ``preprocess`` (min_size, max_size) of ``example_batches`` by device type: small on the CPU.
EXAMPLE_RESIZE = {"cpu": (128, 160), "cuda": (640, 800)}


def example_batches(
    image_sizes: Sequence[Sequence[tuple[int, int]]] = EXAMPLE_IMAGE_SIZES,
    *,
    device: str | torch.device = "cpu",
    min_size: int | None = None,
    max_size: int | None = None,
    seed: int = 0,
) -> list[tuple[Tensor, Tensor]]:
    """``(images [B, 3, H, W], mask [B, H, W])`` batches on ``device``, made by ``preprocess`` from
    smooth random RGB images: one batch per entry of ``image_sizes``, a list of (height, width);
    images of different shapes in a batch are padded. ``min_size``/``max_size`` default to
    ``EXAMPLE_RESIZE`` of the device type."""
    from .devices import check_device
    from .errors import check_int, check_seed
    from .transforms import preprocess

    device = check_device(device)
    default_min, default_max = EXAMPLE_RESIZE["cuda" if device.type == "cuda" else "cpu"]
    generator = torch.Generator().manual_seed(check_seed(seed))
    if not (isinstance(image_sizes, Sequence) and all(isinstance(sizes, Sequence) for sizes in image_sizes)):
        raise InputError(
            f"image_sizes must be a list of batches, each a list of (height, width), got {image_sizes!r}"
        )
    for i, sizes in enumerate(image_sizes):
        for j, size in enumerate(sizes):
            try:
                valid = len(size) == 2 and all(check_int("side", side) for side in size)
            except (InputError, TypeError):
                valid = False
            if not valid:
                raise InputError(
                    f"image_sizes[{i}][{j}] must be (height, width) of positive integers, got {size!r}"
                )
    batches = []
    for sizes in image_sizes:
        images = [
            torch.nn.functional.interpolate(
                torch.rand(1, 3, max(1, h // 16), max(1, w // 16), generator=generator),
                size=(h, w),
                mode="bilinear",
            )[0]
            .mul(255)
            .to(torch.uint8)
            .permute(1, 2, 0)
            .numpy()  # HxWx3 arrays: a CHW tensor 3 or 4 pixels wide would be ambiguous
            for h, w in sizes
        ]
        images, mask, _ = preprocess(
            images, min_size=min_size or default_min, max_size=max_size or default_max
        )
        batches.append((images.to(device), mask.to(device)))
    return batches


def _tolerance(precision: str, overrides: dict[str, float]) -> Tolerance:
    if precision not in TOLERANCES:
        raise InputError(f"unknown precision {precision!r}: choose one of {', '.join(TOLERANCES)}")
    unknown = set(overrides) - set(Tolerance.__dataclass_fields__)
    if unknown:
        raise InputError(
            f"unknown tolerance {', '.join(sorted(unknown))}: choose from {', '.join(Tolerance.__dataclass_fields__)}"
        )
    for name, value in overrides.items():
        fraction = name in _FRACTIONS
        if not (_is_number(value) and value >= 0 and (value <= 1 or not fraction)):
            raise InputError(
                f"{name} must be a number in [0, 1], got {value!r}"
                if fraction
                else f"{name} must be a finite number >= 0, got {value!r}"
            )
    return replace(TOLERANCES[precision], **overrides)


# Tolerances that are shares (a rate, an IoU); the others are absolute differences.
_FRACTIONS = ("iou_threshold", "min_match_rate")


def _is_number(value: object, kind: type = float) -> bool:
    """A finite int (or, for ``kind`` float, float) that is not a bool."""
    types = (int,) if kind is int else (int, float)
    return isinstance(value, types) and not isinstance(value, bool) and math.isfinite(value)


def _precision_of(outputs: dict[str, Tensor]) -> str:
    return _PRECISION_OF_DTYPE.get(outputs["pred_logits"].dtype, "fp32")


def _check_outputs(actual: dict, expected: dict) -> None:
    for name, out in (("actual", actual), ("expected", expected)):
        if not isinstance(out, dict) or not set(OUTPUTS) <= out.keys():
            raise InputError(f"{name} must be a model output: a dict with 'pred_logits' and 'pred_boxes'")
        for key, last in (("pred_logits", None), ("pred_boxes", 4)):
            value = out[key]
            if (
                not isinstance(value, Tensor)
                or value.dim() != 3
                or 0 in value.shape[:2]
                or (last is not None and value.shape[2] != last)
            ):
                layout = "[B, Q, classes]" if last is None else "[B, Q, 4]"
                got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise InputError(f"{name}[{key!r}] must be a tensor {layout} with B, Q >= 1, got {got}")
            check_tensor_device(value, f"{name}[{key!r}]")
            if not value.is_floating_point():
                raise InputError(
                    f"{name}[{key!r}] must be a float tensor (a model output), got {value.dtype}"
                )
    for key in OUTPUTS:
        if actual[key].shape != expected[key].shape:
            raise AssertionError(
                f"{key} shapes differ: actual {list(actual[key].shape)}, expected {list(expected[key].shape)} "
                "(are both models of one variant, on the same batch?)"
            )


def _match_image(
    actual: dict, expected: dict, image: int, score_threshold: float, top_k: int, tol: Tolerance
) -> tuple[int, int]:
    """(matched, compared) of the reference's detections of one image."""
    scores = expected["pred_logits"][image].sigmoid()
    num_classes = scores.shape[1]
    top = scores.nan_to_num(-1).flatten().topk(min(top_k, scores.numel()))
    slots = top.indices[top.values >= score_threshold]
    queries, labels = slots // num_classes, slots % num_classes
    rows = [_rows(out, image, queries, labels) for out in (expected, actual)]
    best_iou, score_diff = match_rows(*rows)
    matched = (best_iou > tol.iou_threshold) & (score_diff <= tol.score_atol)
    return int(matched.sum()), len(slots)


def _rows(out: dict, image: int, queries: Tensor, labels: Tensor) -> Tensor:
    """Detections (x, y, w, h, score, label, query) of one image's ``queries`` and ``labels``."""
    cx, cy, w, h = out["pred_boxes"][image, queries].double().unbind(-1)
    scores = out["pred_logits"][image, queries, labels].double().sigmoid()
    return torch.stack((cx - w / 2, cy - h / 2, w, h, scores, labels.double(), queries.double()), 1)


def _failures(c: DetectionComparison) -> list[str]:
    tol, failures = c.tolerance, []
    for key, atol in (("pred_logits", tol.logits_atol), ("pred_boxes", tol.boxes_atol)):
        if c.max_abs_diff[key] > atol:
            failures.append(f"{key} max abs diff {c.max_abs_diff[key]:.3g} > {atol:g}")
    if c.compared and c.match_rate < tol.min_match_rate:
        failures.append(f"matched {c.match_rate:.1%} < {tol.min_match_rate:.0%} of the detections")
    for side, by_key in c.non_finite.items():
        if sum(by_key.values()):
            failures.append(f"{side} has {sum(by_key.values())} NaN/inf values")
    return failures


def _describe(model: object) -> str:
    backend, precision = getattr(model, "backend", None), getattr(model, "precision", None)
    if backend:
        return f"{backend} {precision}" if precision else str(backend)
    return type(model).__name__
