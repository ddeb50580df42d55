"""The synthetic shapes set as training data: learnable classes, object sizes, occlusion, splits."""

import colorsys
import json
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from anchordetr_trt import InputError
from anchordetr_trt.eval import COCO_CLASSES, make_synthetic_coco
from anchordetr_trt.eval.synthetic import SHAPE_CLASSES, synthetic_image

TRAIN_LIKE = {"min_size": 320, "max_size": 640, "max_objects": 10}  # as scripts.train_synthetic


@pytest.fixture(scope="module")
def scenes():
    return [synthetic_image(0, index, **TRAIN_LIKE) for index in range(30)]


def test_each_class_is_one_shape_in_one_hue_on_a_coco_id():
    ids = [c.category_id for c in SHAPE_CLASSES]
    assert len(SHAPE_CLASSES) >= 6 and len(set(ids)) == len(ids)
    assert all(COCO_CLASSES[i] != "N/A" for i in ids)
    assert len({c.shape for c in SHAPE_CLASSES}) == len(SHAPE_CLASSES)
    hues = sorted(c.hue for c in SHAPE_CLASSES)
    gaps = np.diff([*hues, hues[0] + 360])
    assert gaps.min() >= 30  # hues further apart than their +-8 degree jitter


def _hue_distance(a, b):
    return abs((a - b + 180) % 360 - 180)


def test_objects_on_top_show_their_class_hue(scenes):
    # The last object drawn is never covered: its saturated pixels have the class's hue.
    hue_of = {c.category_id: c.hue for c in SHAPE_CLASSES}
    checked = 0
    for pixels, objects in scenes:
        x, y, w, h = objects[-1]["bbox"]
        patch = pixels[y : y + h, x : x + w].reshape(-1, 3) / 255.0
        hsv = np.array([colorsys.rgb_to_hsv(*rgb) for rgb in patch[:: max(1, len(patch) // 400)]])
        saturated = hsv[hsv[:, 1] > 0.5]
        assert len(saturated), objects[-1]
        hue = np.median(saturated[:, 0]) * 360
        assert _hue_distance(hue, hue_of[objects[-1]["category_id"]]) < 15
        checked += 1
    assert checked == len(scenes)


def test_sizes_span_small_medium_large_and_images_vary(scenes):
    areas = np.array([obj["bbox"][2] * obj["bbox"][3] for _, objects in scenes for obj in objects])
    small, large = (areas < 32**2).mean(), (areas >= 96**2).mean()
    assert small > 0.1 and large > 0.1 and 1 - small - large > 0.2
    shapes = [pixels.shape[:2] for pixels, _ in scenes]
    assert all(320 <= s <= 640 for shape in shapes for s in shape)
    aspects = [w / h for h, w in shapes]
    assert min(aspects) < 0.8 and max(aspects) > 1.25
    counts = [len(objects) for _, objects in scenes]
    assert min(counts) >= 1 and max(counts) <= 10 and len(set(counts)) > 4
    assert {obj["category_id"] for _, objects in scenes for obj in objects} == {
        c.category_id for c in SHAPE_CLASSES
    }


def _covered(a, b):
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(iw, 0) * max(ih, 0) / min(a[2] * a[3], b[2] * b[3])


def test_objects_overlap_but_stay_half_visible(scenes):
    overlaps = [_covered(a["bbox"], b["bbox"]) for _, objects in scenes for a, b in combinations(objects, 2)]
    assert max(overlaps) <= 0.5 and sum(o > 0.05 for o in overlaps) >= 5
    for pixels, objects in scenes:
        for obj in objects:
            x, y, w, h = obj["bbox"]
            assert x >= 0 and y >= 0 and w >= 4 and h >= 4
            assert x + w <= pixels.shape[1] and y + h <= pixels.shape[0]


def test_backgrounds_are_textured_not_flat(scenes):
    for pixels, _ in scenes[:5]:
        gray = pixels.astype(np.float32).mean(2)
        assert gray.std() > 5 and np.abs(np.diff(gray, axis=1)).mean() > 1


def test_splits_differ_and_an_image_is_the_same_on_disk_and_on_the_fly(tmp_path):
    again = synthetic_image(0, 3, **TRAIN_LIKE)
    other = synthetic_image(1, 3, **TRAIN_LIKE)
    first = synthetic_image(0, 3, **TRAIN_LIKE)
    assert np.array_equal(again[0], first[0]) and again[1] == first[1]
    assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0])

    ann_file, image_dir = make_synthetic_coco(
        tmp_path, num_images=4, seed=7, mixed_formats=False, **TRAIN_LIKE
    )
    data = json.loads(ann_file.read_text())
    for index, image in enumerate(data["images"]):
        pixels, objects = synthetic_image(7, index, **TRAIN_LIKE)
        with Image.open(image_dir / image["file_name"]) as file:
            assert file.mode == "RGB" and file.format == "PNG"
            assert np.array_equal(np.asarray(file), pixels)  # lossless: colour is the class cue
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        assert [a["bbox"] for a in anns] == [o["bbox"] for o in objects]
        assert [a["category_id"] for a in anns] == [o["category_id"] for o in objects]


@pytest.mark.parametrize(
    "kwargs",
    [{"min_size": 8}, {"min_size": 100, "max_size": 50}, {"max_objects": 0}, {"num_images": 0}],
)
def test_bad_arguments_are_named(tmp_path, kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        make_synthetic_coco(tmp_path, **kwargs)


def test_files_of_others_are_never_replaced_and_the_same_call_again_is_fine(tmp_path):
    make_synthetic_coco(tmp_path, num_images=2, seed=0)
    make_synthetic_coco(tmp_path, num_images=2, seed=0)  # the same files: replaced by themselves
    user_file = tmp_path / "images" / "000001.jpg"
    user_file.write_bytes(b"the user's photo")
    untouched = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(
        InputError,
        match=r"make_synthetic_coco: out_dir .*000001\.jpg exists and anchordetr-trt did not write it.*left alone",
    ):
        make_synthetic_coco(tmp_path, num_images=3, seed=0)
    assert user_file.read_bytes() == b"the user's photo"
    assert sorted(p.name for p in tmp_path.rglob("*")) == untouched  # nothing written, 000003 neither
