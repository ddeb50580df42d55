"""Deterministic COCO-format datasets of drawn shapes: to run the evaluation path without COCO, and to
train a detector whose accuracy can be measured (``scripts.train_synthetic``).

Each of the ``SHAPE_CLASSES`` is one shape in one hue, labeled with a real COCO category id, so the
classes are learnable. Objects are small, medium and large (COCO's 32² and 96² pixel area limits),
overlap and partly occlude each other; backgrounds are low-saturation textures (gradients, blotches,
stripes, grain). Image ``index`` of seed ``seed`` is the same picture whether it is written to disk by
``make_synthetic_coco`` or rendered on the fly by ``synthetic_image`` during training.
"""

import io
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from anchordetr_trt.errors import InputError, check_bool, check_int, check_path, check_seed
from anchordetr_trt.outputs import check_results, write_results
from anchordetr_trt.transforms import MAX_RESIZED_SIDE

from .categories import COCO_CLASSES

# Saved file formats, cycled over the images so that loading converts each kind.
_FORMATS = (("RGB", "jpg"), ("L", "png"), ("RGBA", "png"), ("I;16", "png"), ("RGB", "png"))


class ShapeClass(NamedTuple):
    category_id: int  # COCO category id: the model's label
    shape: str
    hue: float  # degrees; objects vary around it by a few degrees


# Hues 45 degrees apart and eight distinct outlines: either cue alone tells the classes apart.
SHAPE_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(1, "ellipse", 0.0),  # person
    ShapeClass(3, "rectangle", 45.0),  # car
    ShapeClass(17, "triangle", 90.0),  # cat
    ShapeClass(18, "diamond", 135.0),  # dog
    ShapeClass(44, "cross", 180.0),  # bottle
    ShapeClass(62, "ring", 225.0),  # chair
    ShapeClass(72, "star", 270.0),  # tv
    ShapeClass(85, "hexagon", 315.0),  # clock
)

# Outlines in unit-box coordinates (each spans [0, 1] on both axes) and the share of the box they fill.
_STAR = [
    (0.5 + r * math.sin(math.pi * k / 5), 0.5 - r * math.cos(math.pi * k / 5))
    for k, r in zip(range(10), [0.5, 0.2] * 5, strict=True)
]
_OUTLINES = {
    "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "hexagon": [(0.25, 0.0), (0.75, 0.0), (1.0, 0.5), (0.75, 1.0), (0.25, 1.0), (0.0, 0.5)],
    "star": _STAR,
}
_FILL = {
    "ellipse": math.pi / 4,
    "rectangle": 1.0,
    "triangle": 0.5,
    "diamond": 0.5,
    "cross": 5 / 9,
    "ring": math.pi / 4 * (1 - 0.55**2),
    "star": 0.36,
    "hexagon": 0.75,
}
_MAX_COVERED = 0.5  # at most this share of a smaller object's box lies under a larger one
_PLACEMENT_TRIES = 20


def _unit_polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in points]


_POLYGONS = {name: _unit_polygon(points) for name, points in _OUTLINES.items()}


def make_synthetic_coco(
    out_dir: str | os.PathLike,
    *,
    num_images: int = 8,
    seed: int = 0,
    min_size: int = 64,
    max_size: int = 160,
    max_objects: int = 4,
    mixed_formats: bool = True,
) -> tuple[Path, Path]:
    """Write images of drawn shapes and their COCO annotations under ``out_dir``.

    Images have random sizes in [min_size, max_size] per side and hold 1..``max_objects`` objects of
    the ``SHAPE_CLASSES`` (the last of 5 or more images holds none, as some COCO images do). With
    ``mixed_formats`` the files cycle through RGB JPEG, grayscale, RGBA, 16-bit grayscale and RGB PNG
    (to exercise loading); without, every image is an RGB PNG (lossless colour: a training or accuracy
    set). The same arguments always give the same files. They are result files
    (``outputs.write_results``): a file of the same name is replaced only if an earlier call wrote
    it and it is unchanged since; otherwise InputError, before anything is written. Returns
    ``(ann_file, image_dir)``.
    """
    _check_sizes(min_size, max_size, max_objects)
    check_int("num_images", num_images)
    check_seed(seed)
    check_bool("mixed_formats", mixed_formats)
    out_dir = Path(check_path("out_dir", out_dir))
    image_dir = out_dir / "images"
    check_results([out_dir / "annotations.json"], "make_synthetic_coco: out_dir")  # before the drawing
    files, images, annotations = {}, [], []
    for index in range(num_images):
        empty = index == num_images - 1 and num_images >= 5
        pixels, objects = synthetic_image(
            seed, index, min_size=min_size, max_size=max_size, max_objects=0 if empty else max_objects
        )
        height, width = pixels.shape[:2]
        mode, ext = _FORMATS[index % len(_FORMATS)] if mixed_formats else ("RGB", "png")
        file_name = f"{index + 1:06d}.{ext}"
        files[image_dir / file_name] = _encoded(Image.fromarray(pixels), mode, ext)
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **obj, "iscrowd": 0})
    used = sorted({ann["category_id"] for ann in annotations})
    categories = [{"id": i, "name": COCO_CLASSES[i], "supercategory": "synthetic"} for i in used]
    ann_file = out_dir / "annotations.json"
    dataset = {
        "info": {"description": f"anchordetr_trt synthetic shapes, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    files[ann_file] = json.dumps(dataset, indent=1).encode()
    write_results(files, "make_synthetic_coco: out_dir", root=out_dir)
    image_dir.mkdir(parents=True, exist_ok=True)  # the folder is returned even where it holds no image
    return ann_file, image_dir


def synthetic_image(
    seed: int, index: int, *, min_size: int = 64, max_size: int = 160, max_objects: int = 4
) -> tuple[np.ndarray, list[dict]]:
    """Image ``index`` of the set drawn from ``seed``: pixels [H, W, 3] uint8 with H, W in
    [min_size, max_size], and its objects as COCO annotation fields (``bbox`` [x, y, w, h] in pixels,
    ``category_id``, ``area`` of the drawn shape). Holds 1..``max_objects`` objects (none when 0)."""
    _check_sizes(min_size, max_size, max(check_int("max_objects", max_objects, 0), 1))
    rng = np.random.default_rng((check_seed(seed), check_int("index", index, 0)))
    height, width = (int(s) for s in rng.integers(min_size, max_size + 1, size=2))
    canvas = Image.fromarray(_background(rng, height, width))
    count = int(rng.integers(1, max_objects + 1)) if max_objects else 0
    boxes = _place_boxes(rng, height, width, count)
    draw = ImageDraw.Draw(canvas)
    objects = []
    for box in sorted(boxes, key=lambda b: -b[2] * b[3]):  # large first: small ones stay visible
        shape_class = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        _draw(draw, shape_class, box, _color(rng, shape_class.hue))
        x, y, w, h = box
        objects.append(
            {
                "bbox": [x, y, w, h],
                "category_id": shape_class.category_id,
                "area": _FILL[shape_class.shape] * w * h,
            }
        )
    return np.asarray(canvas), objects


def _check_sizes(min_size: int, max_size: int, max_objects: int) -> None:
    check_int("min_size", min_size, 16, MAX_RESIZED_SIDE)
    check_int("max_size", max_size, 16, MAX_RESIZED_SIDE)
    check_int("max_objects", max_objects)
    if max_objects < 1 or not 16 <= min_size <= max_size:
        raise InputError(
            "synthetic images need max_objects >= 1 and 16 <= min_size <= max_size, got "
            f"max_objects={max_objects}, min_size={min_size}, max_size={max_size}"
        )


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Grey-ish so that the objects' saturated hues are the colour cue: a gradient with large blotches
    # (a coarse grid upsampled), optional stripes at a random angle, and pixel grain.
    cells = int(rng.integers(2, 12))
    corners = rng.uniform(50, 210, size=(2, 2, 1)) + rng.normal(0, 12, size=(2, 2, 3))
    grid_y, grid_x = np.linspace(0, 1, cells)[:, None, None], np.linspace(0, 1, cells)[None, :, None]
    gradient = (corners[0, 0] * (1 - grid_x) + corners[0, 1] * grid_x) * (1 - grid_y) + (
        corners[1, 0] * (1 - grid_x) + corners[1, 1] * grid_x
    ) * grid_y
    blotches = rng.uniform(0.3, 1.0) * (
        rng.normal(0, 30, (cells, cells, 1)) + rng.normal(0, 8, (cells, cells, 3))
    )
    coarse = np.clip(gradient + blotches, 0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    detail = np.float32(rng.uniform(2, 10)) * _grain(rng, height, width)
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 40)
        xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(angle) / period)
        ys = np.arange(height, dtype=np.float32)[:, None] * np.float32(math.sin(angle) / period)
        detail += np.float32(rng.uniform(8, 25)) * np.sin(np.float32(2 * math.pi) * (xs + ys))
    return np.clip(smooth + detail.astype(np.int16)[..., None], 0, 255).astype(np.uint8)


_GRAIN_SIZE = 1024
_grain_table: list[np.ndarray] = []


def _grain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Unit Gaussian pixel noise [height, width] float32: a random window of a fixed table (drawing
    fresh noise per pixel was a third of the rendering time)."""
    if height > _GRAIN_SIZE or width > _GRAIN_SIZE:
        return rng.standard_normal((height, width), dtype=np.float32)
    if not _grain_table:
        _grain_table.append(
            np.random.default_rng(12345).standard_normal((_GRAIN_SIZE,) * 2, dtype=np.float32)
        )
    top, left = (int(rng.integers(0, _GRAIN_SIZE - n + 1)) for n in (height, width))
    return _grain_table[0][top : top + height, left : left + width]


def _place_boxes(rng: np.random.Generator, height: int, width: int, count: int) -> list[tuple[int, ...]]:
    """Up to ``count`` integer boxes (x, y, w, h), sides log-uniform from ~4% to 60% of the short side
    (small, medium and large objects), none covering more than half of a smaller one."""
    short = min(height, width)
    low, high = max(4.0, 0.04 * short), 0.6 * short
    boxes: list[tuple[int, ...]] = []
    for _ in range(count):
        for _ in range(_PLACEMENT_TRIES):
            side = math.exp(rng.uniform(math.log(low), math.log(high)))
            stretch = math.exp(rng.uniform(-0.35, 0.35))
            w = int(np.clip(round(side * stretch), 4, width))
            h = int(np.clip(round(side / stretch), 4, height))
            box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
            if all(_covered(box, other) <= _MAX_COVERED for other in boxes):
                boxes.append(box)
                break
    return boxes


def _covered(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection of boxes a and b over the smaller one's area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(iw, 0) * max(ih, 0) / min(a[2] * a[3], b[2] * b[3])


def _color(rng: np.random.Generator, hue: float) -> tuple[int, int, int]:
    h = (hue + rng.uniform(-8, 8)) % 360 / 60
    saturation, value = rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0)
    x = 1 - abs(h % 2 - 1)
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
    return tuple(int(255 * value * (1 - saturation + saturation * c)) for c in rgb)


def _draw(draw: ImageDraw.ImageDraw, shape_class: ShapeClass, box: tuple[int, ...], color: tuple) -> None:
    x, y, w, h = box
    x1, y1 = x + w - 1, y + h - 1  # PIL includes the last pixel: the shape spans exactly the box
    shape = shape_class.shape
    if shape == "ellipse":
        draw.ellipse((x, y, x1, y1), fill=color)
    elif shape == "rectangle":
        draw.rectangle((x, y, x1, y1), fill=color)
    elif shape == "ring":
        draw.ellipse((x, y, x1, y1), outline=color, width=max(2, round(0.225 * min(w, h))))
    elif shape == "cross":
        draw.rectangle((x, y + h // 3, x1, y1 - h // 3), fill=color)
        draw.rectangle((x + w // 3, y, x1 - w // 3, y1), fill=color)
    else:
        draw.polygon([(x + u * (w - 1), y + v * (h - 1)) for u, v in _POLYGONS[shape]], fill=color)


def _encoded(canvas: Image.Image, mode: str, ext: str) -> bytes:
    """``canvas`` as the bytes of a ``mode`` image file in format ``ext`` ("jpg" or "png")."""
    buffer = io.BytesIO()
    if mode == "I;16":  # 16-bit grayscale PNG: the 8-bit gray levels spread over 0..65535
        gray = np.asarray(canvas.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(buffer, format="PNG")
    elif mode == "RGBA":
        rgba = canvas.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(buffer, format="PNG")
    elif ext == "jpg":
        canvas.convert(mode).save(buffer, format="JPEG", quality=95)
    else:
        canvas.convert(mode).save(buffer, format="PNG", compress_level=1)  # fast to write; PNG stays lossless
    return buffer.getvalue()
