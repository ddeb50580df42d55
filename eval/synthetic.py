"""A small, deterministic COCO-format dataset of drawn shapes, to run the evaluation path without COCO."""

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anchordetr_trt.errors import InputError

from .categories import COCO_CATEGORY_IDS, COCO_CLASSES

# Saved file formats, cycled over the images so that loading converts each kind.
_FORMATS = (("RGB", "jpg"), ("L", "png"), ("RGBA", "png"), ("I;16", "png"), ("RGB", "png"))


def make_synthetic_coco(
    out_dir: str | os.PathLike,
    *,
    num_images: int = 8,
    seed: int = 0,
    min_size: int = 64,
    max_size: int = 160,
    max_objects: int = 4,
) -> tuple[Path, Path]:
    """Write images of rectangles and ellipses and their COCO annotations under ``out_dir``.

    Images have random sizes in [min_size, max_size] per side and cycle through RGB JPEG, grayscale,
    RGBA, 16-bit grayscale and RGB PNG files; each holds 1..``max_objects`` shapes labeled with real
    COCO category ids (the last of 5 or more images holds none, as some COCO images do). The same
    arguments always give the same files. Returns ``(ann_file, image_dir)``.
    """
    if num_images < 1 or max_objects < 1 or not 16 <= min_size <= max_size:
        raise InputError(
            f"make_synthetic_coco needs num_images >= 1, max_objects >= 1 and 16 <= min_size <= max_size, "
            f"got num_images={num_images}, max_objects={max_objects}, min_size={min_size}, max_size={max_size}"
        )
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        height, width = (int(s) for s in rng.integers(min_size, max_size + 1, size=2))
        mode, ext = _FORMATS[index % len(_FORMATS)]
        num_objects = (
            0 if index == num_images - 1 and num_images >= 5 else int(rng.integers(1, max_objects + 1))
        )
        canvas = _background(rng, height, width)
        draw = ImageDraw.Draw(canvas)
        for _ in range(num_objects):
            annotations.append(
                _draw_shape(rng, draw, height, width, image_id=index + 1, ann_id=len(annotations) + 1)
            )
        file_name = f"{index + 1:06d}.{ext}"
        _save(canvas, mode, image_dir / file_name)
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
    used = sorted({ann["category_id"] for ann in annotations})
    categories = [{"id": i, "name": COCO_CLASSES[i], "supercategory": "synthetic"} for i in used]
    ann_file = out_dir / "annotations.json"
    dataset = {
        "info": {"description": f"anchordetr_trt synthetic shapes, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file.write_text(json.dumps(dataset, indent=1))
    return ann_file, image_dir


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    # A smooth color gradient with mild noise: shapes stand out but are not on a flat field.
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
    ys, xs = np.linspace(0, 1, height)[:, None, None], np.linspace(0, 1, width)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    pixels = top * (1 - ys) + bottom * ys + rng.normal(0, 8, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_shape(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    height: int,
    width: int,
    *,
    image_id: int,
    ann_id: int,
) -> dict:
    box_w = int(rng.integers(max(4, width // 8), width // 2 + 1))
    box_h = int(rng.integers(max(4, height // 8), height // 2 + 1))
    x0, y0 = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
    color = tuple(int(c) for c in rng.integers(0, 256, size=3))
    corners = (x0, y0, x0 + box_w - 1, y0 + box_h - 1)  # PIL includes the last pixel
    if rng.random() < 0.5:
        draw.rectangle(corners, fill=color, outline=(0, 0, 0))
        area = box_w * box_h
    else:
        draw.ellipse(corners, fill=color, outline=(0, 0, 0))
        area = math.pi * box_w * box_h / 4
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
        "bbox": [x0, y0, box_w, box_h],
        "area": area,
        "iscrowd": 0,
    }


def _save(canvas: Image.Image, mode: str, path: Path) -> None:
    if mode == "I;16":  # 16-bit grayscale PNG: the 8-bit gray levels spread over 0..65535
        gray = np.asarray(canvas.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(path)
    elif mode == "RGBA":
        rgba = canvas.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path)
    else:
        canvas.convert(mode).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
