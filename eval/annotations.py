"""COCO annotation files: checked here so that pycocotools only ever sees a well-formed dataset."""

import contextlib
import io
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from anchordetr_trt.errors import InputError, check_int, check_path

from .categories import COCO_CLASSES

_REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class CocoDataset:
    """A checked annotation file, its pycocotools index, and the images chosen for evaluation."""

    ann_file: Path
    image_dir: Path
    coco: COCO
    image_ids: tuple[int, ...]  # in the order of the file's "images" list

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def image_size(self, image_id: int) -> tuple[int, int] | None:
        """(height, width) stated by the annotation file, if it states both."""
        info = self.coco.imgs[image_id]
        return (info["height"], info["width"]) if "height" in info and "width" in info else None

    def category_names(self) -> dict[int, str]:
        return {cat_id: cat["name"] for cat_id, cat in self.coco.cats.items()}


def load_dataset(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    max_images: int | None = None,
    category_map: Mapping[int, int] | None = None,
) -> CocoDataset:
    """Read and check ``ann_file``, index it, pick the first ``max_images`` images and check that their
    files exist under ``image_dir``. Model labels are COCO category ids: without ``category_map``
    (dataset category id -> model label, covering every category) a category with a COCO name must
    have that name's COCO id, and no annotated category may have the id of an unused COCO slot (N/A).
    Raises InputError naming the file and the problem."""
    ann_file, image_dir = Path(check_path("ann_file", ann_file)), Path(check_path("image_dir", image_dir))
    data = _read_json(ann_file)
    _check_dataset(data, ann_file)
    if category_map is None:
        _check_category_names(data["categories"], ann_file)
        _check_unused_slots(data, ann_file)
    else:
        check_category_map(category_map, [cat["id"] for cat in data["categories"]], ann_file)
    if max_images is not None:
        check_counts(max_images=max_images)
    image_ids = tuple(image["id"] for image in data["images"][:max_images])
    _check_image_files(data, image_ids, ann_file, image_dir)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return CocoDataset(ann_file, image_dir, coco, image_ids)


def _read_json(ann_file: Path) -> dict[str, Any]:
    if not ann_file.is_file():
        problem = "is a folder" if ann_file.is_dir() else "does not exist"
        raise InputError(f"annotation file {ann_file} {problem}: pass the path of a COCO-format JSON file")
    try:
        with open(ann_file, encoding="utf-8-sig") as f:  # a byte-order mark, as some editors write, is fine
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"annotation file {ann_file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InputError(
            f"annotation file {ann_file} holds a JSON {type(data).__name__}, not an object with "
            f"{', '.join(map(repr, _REQUIRED_KEYS))}"
        )
    return data


def _check_dataset(data: dict[str, Any], ann_file: Path) -> None:
    """Check the parts of the COCO format that bbox evaluation uses; fill ``iscrowd``, ``area`` and
    annotation ``id`` where missing (bbox area, as pycocotools does for results)."""
    missing = [key for key in _REQUIRED_KEYS if not isinstance(data.get(key), list)]
    if missing:
        raise InputError(
            f"annotation file {ann_file} lacks the list(s) {', '.join(map(repr, missing))}: "
            "a COCO detection file has 'images', 'annotations' and 'categories'"
        )
    if not data["images"]:
        raise InputError(f"annotation file {ann_file} lists no images: there is nothing to evaluate")
    if not data["annotations"]:
        raise InputError(f"annotation file {ann_file} has no annotations: there is nothing to score against")

    def fail(kind: str, index: int, problem: str) -> InputError:
        return InputError(f"annotation file {ann_file}: {kind}[{index}] {problem}")

    category_ids = set()
    for index, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise fail("categories", index, f"must have an integer 'id' and a string 'name', got {cat!r}")
        if cat["id"] in category_ids:
            raise fail("categories", index, f"repeats category id {cat['id']}")
        category_ids.add(cat["id"])

    image_ids, stated_sizes = set(), {}
    for index, image in enumerate(data["images"]):
        image_id, file_name = (
            (image.get("id"), image.get("file_name")) if isinstance(image, dict) else (None, None)
        )
        if not (_is_int(image_id) and isinstance(file_name, str) and file_name):
            raise fail("images", index, f"must have an integer 'id' and a string 'file_name', got {image!r}")
        if image["id"] in image_ids:
            raise fail("images", index, f"repeats image id {image['id']}")
        for key in ("height", "width"):
            if key in image and not (_is_int(image[key]) and image[key] > 0):
                raise fail("images", index, f"has {key}={image[key]!r}: it must be a positive integer")
        image_ids.add(image["id"])
        if "height" in image and "width" in image:
            stated_sizes[image["id"]] = (image["height"], image["width"])

    annotation_ids = set()
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise fail("annotations", index, f"is a {type(ann).__name__}, not an object")
        if not (_is_int(ann.get("image_id")) and ann["image_id"] in image_ids):
            raise fail(
                "annotations", index, f"refers to image_id {ann.get('image_id')!r}, which 'images' lacks"
            )
        if not (_is_int(ann.get("category_id")) and ann["category_id"] in category_ids):
            raise fail(
                "annotations", index, f"has category_id {ann.get('category_id')!r}, which 'categories' lacks"
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            raise fail("annotations", index, f"has bbox {bbox!r}: it must be 4 finite numbers [x, y, w, h]")
        if bbox[2] < 0 or bbox[3] < 0:
            raise fail(
                "annotations",
                index,
                f"has a box of negative size {bbox}: COCO boxes are [x, y, width, height]",
            )
        height, width = stated_sizes.get(ann["image_id"], (math.inf, math.inf))
        if bbox[0] > width or bbox[1] > height or bbox[0] + bbox[2] < 0 or bbox[1] + bbox[3] < 0:
            raise fail(
                "annotations",
                index,
                f"has bbox {bbox}, which lies outside its image ({width}x{height}): it could never be matched; "
                "COCO boxes are [x, y, width, height] in pixels",
            )
        ann.setdefault("iscrowd", 0)
        if not (_is_int(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):
            raise fail("annotations", index, f"has iscrowd {ann['iscrowd']!r}: it must be 0 or 1")
        ann.setdefault("area", bbox[2] * bbox[3])
        if not _is_finite_number(ann["area"]) or ann["area"] < 0:
            raise fail("annotations", index, f"has area {ann['area']!r}: it must be a number >= 0")
        if "id" in ann:
            if not _is_int(ann["id"]) or ann["id"] in annotation_ids:
                raise fail("annotations", index, f"has id {ann['id']!r}: ids must be distinct integers")
            annotation_ids.add(ann["id"])
    next_id = max(annotation_ids, default=0) + 1
    for ann in data["annotations"]:
        if "id" not in ann:
            ann["id"], next_id = next_id, next_id + 1


def _check_category_names(categories: list[dict[str, Any]], ann_file: Path) -> None:
    coco_ids = {name: i for i, name in enumerate(COCO_CLASSES) if name != "N/A"}
    moved = [
        (cat["name"], cat["id"], coco_ids[cat["name"].strip().lower()])
        for cat in categories
        if cat["name"].strip().lower() in coco_ids and cat["id"] != coco_ids[cat["name"].strip().lower()]
    ]
    if moved:
        shown = ", ".join(f"{name!r} has id {got} (COCO: {want})" for name, got, want in moved[:3])
        example = ", ".join(f"{got}: {want}" for _, got, want in moved[:2])
        raise InputError(
            f"annotation file {ann_file}: {len(moved)} categories carry COCO names under other ids ({shown}"
            f"{', ...' if len(moved) > 3 else ''}); the model's labels are COCO category ids, so they would be "
            "scored against the wrong classes: renumber the categories to COCO ids, or pass "
            f"category_map={{dataset id: COCO id, ...}} covering every category (e.g. {{{example}, ...}})"
        )


def _check_unused_slots(data: dict[str, Any], ann_file: Path) -> None:
    """InputError for annotated categories whose ids are COCO's unused slots ("N/A", e.g. 0 or 12),
    which a COCO model never predicts: their AP would be 0, averaged into mAP."""
    annotated = {ann["category_id"] for ann in data["annotations"]}
    names = {cat["id"]: cat["name"] for cat in data["categories"]}
    unused = [i for i in sorted(annotated) if 0 <= i < len(COCO_CLASSES) and COCO_CLASSES[i] == "N/A"]
    if unused:
        shown = ", ".join(f"{i} {names[i]!r}" for i in unused[:3]) + (", ..." if len(unused) > 3 else "")
        raise InputError(
            f"annotation file {ann_file}: categories {shown} have ids of COCO's unused slots (N/A), which a "
            "COCO model never predicts: their AP would be 0 and pull mAP down. Drop them from the file; or, "
            "for a model trained with these ids, pass category_map={id: id, ...} for every category"
        )


def check_category_map(category_map: Mapping[int, int], category_ids: list[int], ann_file: Path) -> None:
    """Raise InputError unless ``category_map`` maps every category id of the file to a distinct model
    label (an integer >= 0)."""
    if not isinstance(category_map, Mapping):
        raise InputError(
            f"category_map must be a dict {{dataset category id: model label}}, got {type(category_map).__name__}"
        )
    bad = [(k, v) for k, v in category_map.items() if not (_is_int(k) and _is_int(v) and v >= 0)]
    if bad:
        raise InputError(f"category_map entries must be integer ids -> integer labels >= 0, got {bad[:3]}")
    missing = sorted(set(category_ids) - set(category_map))
    if missing:
        raise InputError(
            f"category_map lacks categories {missing[:5]}{' ...' if len(missing) > 5 else ''} of {ann_file}: "
            "map every category id of the file to the model's label for it"
        )
    labels = list(category_map.values())
    if len(set(labels)) != len(labels):
        raise InputError("category_map maps two categories to one model label: each label may be used once")


def _check_image_files(
    data: dict[str, Any], image_ids: tuple[int, ...], ann_file: Path, image_dir: Path
) -> None:
    if not image_dir.is_dir():
        problem = "is a file" if image_dir.exists() else "does not exist"
        raise InputError(f"image directory {image_dir} {problem}: pass the folder that holds the images")
    wanted = set(image_ids)
    missing = [
        image["file_name"]
        for image in data["images"]
        if image["id"] in wanted and not (image_dir / image["file_name"]).is_file()
    ]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise InputError(
            f"{len(missing)} of the {len(image_ids)} images listed in {ann_file} are missing from {image_dir} "
            f"({shown}): pass the image directory that holds each image's 'file_name'"
        )


def check_counts(**counts: int) -> None:
    """Raise InputError unless every value is a positive integer."""
    for name, value in counts.items():
        check_int(name, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
