"""Drawing detections on an image: one colored box and a "name score" label per detection (PIL)."""

from collections.abc import Iterable, Mapping
from typing import Any

from PIL import Image, ImageDraw, ImageFont

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
    canvas = pil_to_rgb(image)  # a copy; 16-bit and 32-bit gray scaled to 8 bits
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(min(canvas.size) / 200))
    font = _font(max(10, round(min(canvas.size) / 30)))
    for det in sorted(detections, key=lambda d: d["score"]):
        color = _PALETTE[int(det["label"]) % len(_PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in det["box"])
        draw.rectangle((x0, y0, x1, y1), outline=color, width=line)
        text = f"{det['name']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        # The label sits above the box, or inside it when the box touches the top edge.
        label_y = y0 - (bottom - top) - 2 if y0 - (bottom - top) - 2 >= 0 else y0
        draw.rectangle((x0, label_y, x0 + right - left + 4, label_y + bottom - top + 2), fill=color)
        draw.text((x0 + 2 - left, label_y + 1 - top), text, fill=(255, 255, 255), font=font)
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType has only the fixed-size bitmap font
        return ImageFont.load_default()
