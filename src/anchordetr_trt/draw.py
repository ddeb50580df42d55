"""Drawing detections on an image: one colored box and a "name score" label per detection (PIL)."""

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .errors import InputError, check_int

# The RGB conversion that preprocess uses: the drawing shows what the model saw.
from .transforms import pil_to_rgb

# Distinct, saturated colors; a class always gets the same one.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40), (128, 0, 0),
)  # fmt: skip


def draw_detections(image: Image.Image, detections: Iterable[Mapping[str, Any]]) -> Image.Image:
    """A copy of ``image`` (any PIL mode, shown as RGB) with each detection drawn.

    A detection is a mapping with ``box`` (x0, y0, x1, y1 in pixels), ``label`` (int), ``name`` (str)
    and ``score`` (float), as written by ``anchordetr-trt detect``; higher scores are drawn last (on top).
    """
    if not isinstance(image, Image.Image):
        raise InputError(
            f"image must be a PIL image, got {type(image).__name__}: e.g. PIL.Image.fromarray(array)"
        )
    detections = check_detections(detections)
    canvas = pil_to_rgb(image)  # a copy; 16-bit and 32-bit gray scaled to 8 bits
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(min(canvas.size) / 200))
    font = _font(max(10, round(min(canvas.size) / 30)))
    for det in sorted(detections, key=lambda d: d["score"]):
        color = _PALETTE[int(det["label"]) % len(_PALETTE)]
        x0, y0, x1, y1 = det["box"]
        draw.rectangle((x0, y0, x1, y1), outline=color, width=line)
        text = f"{det['name']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        # The label sits above the box, or inside it when the box touches the top edge.
        label_y = y0 - (bottom - top) - 2 if y0 - (bottom - top) - 2 >= 0 else y0
        draw.rectangle((x0, label_y, x0 + right - left + 4, label_y + bottom - top + 2), fill=color)
        draw.text((x0 + 2 - left, label_y + 1 - top), text, fill=(255, 255, 255), font=font)
    return canvas


_LAYOUT = "{'box': [x0, y0, x1, y1], 'label': int, 'name': str, 'score': float}, as detect() returns"


def check_detections(detections: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The detections as dicts with a ``box`` of 4 floats; InputError naming the first one that is not
    a detection as ``detect`` returns it (x0 <= x1, y0 <= y1, finite numbers, a ``name`` and a label)."""
    if isinstance(detections, Mapping) or not isinstance(detections, Iterable):
        postprocessed = isinstance(detections, Mapping) and {"scores", "labels", "boxes"} <= detections.keys()
        got = (
            "postprocess() output (tensors of scores, labels and boxes)"
            if postprocessed
            else type(detections).__name__
        )
        raise InputError(f"detections must be a list of detections {_LAYOUT}, got {got}")
    checked = []
    for index, det in enumerate(detections):
        if not isinstance(det, Mapping):
            raise InputError(f"detection {index} is a {type(det).__name__}, not a detection {_LAYOUT}")
        missing = [key for key in ("box", "label", "name", "score") if key not in det]
        if missing:
            raise InputError(f"detection {index} lacks {', '.join(map(repr, missing))}: each is {_LAYOUT}")
        box = det["box"]
        box = box.tolist() if hasattr(box, "tolist") else box
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            values = []
        ordered = len(values) == 4 and values[0] <= values[2] and values[1] <= values[3]
        if not (ordered and all(math.isfinite(v) for v in values)):
            raise InputError(
                f"detection {index} has box {box!r}: a box is 4 finite numbers [x0, y0, x1, y1] in pixels with "
                "x0 <= x1 and y0 <= y1"
            )
        score = det["score"]
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise InputError(f"detection {index} has score {score!r}: a score is a finite number")
        check_int(f"detection {index}'s label", det["label"], 0)
        checked.append({**det, "box": values, "name": str(det["name"])})
    return checked


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType has only the fixed-size bitmap font
        return ImageFont.load_default()
