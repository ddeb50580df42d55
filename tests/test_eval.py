"""anchordetr_trt.eval on a synthetic COCO set: scoring against an oracle, bad inputs, parity reports,
and a two-process torchrun evaluation on the CPU."""

import datetime
import json
import logging
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anchordetr_trt as at
from anchordetr_trt.comparison import count_matches
from anchordetr_trt.eval import (
    COCO_CLASSES,
    evaluate_coco,
    make_synthetic_coco,
    parity_report,
    write_report,
)
from anchordetr_trt.eval.annotations import load_dataset
from anchordetr_trt.eval.loader import load_batch

SIZES = {"min_size": 64, "max_size": 96}  # small images keep the CPU runs fast
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class Oracle:
    """A detector that answers the ground truth of whichever dataset image it is given.

    It finds the image by its preprocessed pixels, so it works in any batch order and on any rank.
    Each ground-truth box gets one query with logit +20 for its category, moved right by
    ``shift(image_id)`` box widths; the other queries get distinct logits near -20 (no score ties).
    """

    def __init__(self, ann_file, image_dir, *, shift=lambda image_id: 0.0, num_queries=20, num_classes=91):
        data = json.loads(Path(ann_file).read_text())
        self.images = []
        for image in data["images"]:
            pixels = at.preprocess([Image.open(Path(image_dir) / image["file_name"])], **SIZES)[0][0]
            anns = [ann for ann in data["annotations"] if ann["image_id"] == image["id"]]
            self.images.append((image, pixels, anns))
        self.shift, self.num_queries, self.num_classes = shift, num_queries, num_classes

    def outputs_for(self, image_id):
        """pred_logits [Q, C] and pred_boxes [Q, 4] for one image."""
        image, _, anns = next(entry for entry in self.images if entry[0]["id"] == image_id)
        q, c = self.num_queries, self.num_classes
        logits = -20 - 1e-3 * torch.arange(q * c, dtype=torch.float32).view(q, c)
        boxes = torch.stack([torch.linspace(0.1, 0.9, q), torch.full((q,), 0.5), *torch.full((2, q), 0.1)], 1)
        height, width = image["height"], image["width"]
        for query, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            cx = x + w / 2 + self.shift(image_id) * w
            boxes[query] = torch.tensor([cx / width, (y + h / 2) / height, w / width, h / height])
            logits[query, ann["category_id"]] = 20.0
        return logits, boxes

    def image_id_of(self, pixels):
        return next(
            image["id"]
            for image, ref, _ in self.images
            if ref.shape == pixels.shape and torch.equal(ref, pixels)
        )

    def __call__(self, images, mask):
        found = []
        for image, pad in zip(images, mask, strict=True):
            height, width = int((~pad).any(1).sum()), int((~pad).any(0).sum())
            found.append(self.outputs_for(self.image_id_of(image[:, :height, :width])))
        logits, boxes = zip(*found, strict=True)
        return {"pred_logits": torch.stack(logits), "pred_boxes": torch.stack(boxes)}


class Perturbed:
    """``model`` with every logit +0.5 and, for image ``moved_id``, every box moved right by half its width."""

    def __init__(self, model, moved_id):
        self.model, self.moved_id = model, moved_id

    def __call__(self, images, mask):
        out = self.model(images, mask)
        boxes = out["pred_boxes"].clone()
        for b, image in enumerate(images):
            height, width = int((~mask[b]).any(1).sum()), int((~mask[b]).any(0).sum())
            if self.model.image_id_of(image[:, :height, :width]) == self.moved_id:
                boxes[b, :, 0] += 0.5 * boxes[b, :, 2]
        return {"pred_logits": out["pred_logits"] + 0.5, "pred_boxes": boxes}


class NaNOn:
    """``model`` with NaN logits for image ``image_id``."""

    def __init__(self, model, image_id):
        self.model, self.image_id = model, image_id

    def __call__(self, images, mask):
        out = self.model(images, mask)
        for b, image in enumerate(images):
            height, width = int((~mask[b]).any(1).sum()), int((~mask[b]).any(0).sum())
            if self.model.image_id_of(image[:, :height, :width]) == self.image_id:
                out["pred_logits"][b, 3, 7] = float("nan")
        return out


def never_called(images, mask):
    raise AssertionError("the model must not run on bad input")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=6, seed=0)


@pytest.fixture(scope="module")
def oracle(synthetic):
    return Oracle(*synthetic)


def _copy_dataset(synthetic, tmp_path):
    ann_file, image_dir = synthetic
    shutil.copytree(image_dir, tmp_path / "images")
    shutil.copy(ann_file, tmp_path / "annotations.json")
    return tmp_path / "annotations.json", tmp_path / "images"


def _evaluate(model, ann_file, image_dir, **kwargs):
    return evaluate_coco(model, ann_file, image_dir, progress=False, **{**SIZES, **kwargs})


# --- the synthetic dataset -------------------------------------------------------------------------------


def test_category_table_has_91_slots_and_80_classes():
    named = [name for name in COCO_CLASSES if name != "N/A"]
    assert len(COCO_CLASSES) == 91 and len(named) == len(set(named)) == 80
    assert (COCO_CLASSES[1], COCO_CLASSES[13], COCO_CLASSES[90]) == ("person", "stop sign", "toothbrush")


def test_synthetic_dataset_is_deterministic_and_consistent(synthetic, tmp_path):
    ann_file, image_dir = synthetic
    again, again_dir = make_synthetic_coco(tmp_path / "again", num_images=6, seed=0)
    other, _ = make_synthetic_coco(tmp_path / "other", num_images=6, seed=1)
    assert again.read_bytes() == ann_file.read_bytes() and other.read_bytes() != ann_file.read_bytes()
    for path in image_dir.iterdir():
        assert (again_dir / path.name).read_bytes() == path.read_bytes()

    data = json.loads(ann_file.read_text())
    modes, sizes = set(), set()
    for image in data["images"]:
        with Image.open(image_dir / image["file_name"]) as file:
            modes.add(file.mode)
            assert (file.height, file.width) == (image["height"], image["width"])
        sizes.add((image["height"], image["width"]))
    assert {"RGB", "L", "RGBA", "I;16"} <= modes and len(sizes) == len(data["images"])
    images = {image["id"]: image for image in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        image = images[ann["image_id"]]
        assert min(x, y) >= 0 and x + w <= image["width"] and y + h <= image["height"] and min(w, h) > 0
    assert {cat["name"] for cat in data["categories"]} == {
        COCO_CLASSES[cat["id"]] for cat in data["categories"]
    }
    assert not any(ann["image_id"] == 6 for ann in data["annotations"])  # an image without objects


def _write_rgb16_png(path, rgb16):
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, color type 2 = RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_image_files_of_every_mode_load_as_their_rgb_source(tmp_path):
    # One picture stored as 8-bit RGB, RGBA, 16-bit RGB, grayscale and 16-bit grayscale.
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    files = {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full(gray.shape, 90, np.uint8)])),
        "rgb16.png": None,
        "gray.png": Image.fromarray(gray),
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),
    }
    (tmp_path / "images").mkdir()
    for name, image in files.items():
        if image is not None:
            image.save(tmp_path / "images" / name)
    _write_rgb16_png(tmp_path / "images" / "rgb16.png", rgb.astype(np.uint16) * 257)
    data = {
        "images": [{"id": i, "file_name": name} for i, name in enumerate(files, 1)],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    dataset = load_dataset(tmp_path / "ann.json", tmp_path / "images")
    batch = load_batch(dataset, [1, 2, 3, 4, 5], **SIZES)
    assert batch.sizes.tolist() == [[40, 56]] * 5
    torch.testing.assert_close(batch.images[1], batch.images[0], atol=0, rtol=0)  # alpha dropped
    torch.testing.assert_close(batch.images[2], batch.images[0], atol=0, rtol=0)  # 16 bits scaled like 8
    torch.testing.assert_close(batch.images[4], batch.images[3], atol=0, rtol=0)
    gray_levels = batch.images[3] * torch.tensor(at.transforms.IMAGENET_STD)[:, None, None]
    gray_levels += torch.tensor(at.transforms.IMAGENET_MEAN)[:, None, None]
    torch.testing.assert_close(gray_levels[0], gray_levels[2], atol=1e-6, rtol=0)


def test_eval_reads_the_stored_pixels_whatever_the_exif_orientation(tmp_path):
    # COCO's boxes are drawn on the stored pixels; preprocess() alone would turn the photo upright.
    stored = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    (tmp_path / "images").mkdir()
    stored.save(tmp_path / "images" / "photo.jpg", exif=exif.tobytes())
    data = {
        "images": [{"id": 1, "file_name": "photo.jpg", "height": 40, "width": 56}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    batch = load_batch(load_dataset(tmp_path / "ann.json", tmp_path / "images"), [1], **SIZES)
    assert batch.sizes.tolist() == [[40, 56]]
    assert at.preprocess(Image.open(tmp_path / "images" / "photo.jpg"), **SIZES)[2].tolist() == [[56, 40]]


# --- scoring ---------------------------------------------------------------------------------------------


def test_real_model_end_to_end(synthetic):
    torch.manual_seed(0)
    model = at.build_model(at.VARIANTS["r50-c5"])
    result = _evaluate(model, *synthetic, max_images=3, batch_size=2)
    assert set(result) == {*STAT_NAMES, "per_class_AP", "num_images", "timing"}
    assert result["num_images"] == 3
    defined = [result[name] for name in STAT_NAMES if result[name] is not None]
    assert len(defined) >= 8 and all(0 <= value <= 1 for value in defined)
    assert result["per_class_AP"] and set(result["per_class_AP"]) <= set(COCO_CLASSES)
    assert all(math.isfinite(ap) for ap in result["per_class_AP"].values())
    assert result["timing"]["model_s"] > 0 and result["timing"]["wall_s"] >= result["timing"]["model_s"]


@pytest.mark.parametrize(("batch_size", "max_images"), [(1, None), (4, None), (2, 3)])
def test_oracle_scores_ap_one(synthetic, oracle, batch_size, max_images):
    # max_images=3 must score only those images' ground truth, else their misses would cost recall.
    result = _evaluate(oracle, *synthetic, batch_size=batch_size, max_images=max_images)
    assert result["num_images"] == (max_images or 6)
    for name in ("AP", "AP50", "AP75", "AR10", "AR100"):
        assert result[name] == pytest.approx(1.0, abs=1e-12), name
    data = json.loads(synthetic[0].read_text())
    scored_ids = [image["id"] for image in data["images"][:max_images]]
    # AR1 keeps one detection per image and class: a class's recall is (images with it) / (its objects).
    pairs = [
        (ann["category_id"], ann["image_id"]) for ann in data["annotations"] if ann["image_id"] in scored_ids
    ]
    recalls = [
        len({i for c, i in pairs if c == cat}) / sum(c == cat for c, _ in pairs)
        for cat in {c for c, _ in pairs}
    ]
    assert result["AR1"] == pytest.approx(np.mean(recalls), abs=1e-12)
    classes = {
        COCO_CLASSES[ann["category_id"]] for ann in data["annotations"] if ann["image_id"] in scored_ids
    }
    assert result["per_class_AP"] == dict.fromkeys(classes, pytest.approx(1.0, abs=1e-12))


def test_shifted_oracle_scores_exactly_the_thresholds_it_passes(synthetic):
    # Moving each box by 0.2 of its width gives IoU 0.8 / 1.2 = 2/3: a match at IoU 0.50..0.65 (4 of 10).
    result = _evaluate(Oracle(*synthetic, shift=lambda image_id: 0.2), *synthetic)
    assert result["AP50"] == pytest.approx(1.0) and result["AP75"] == 0.0
    assert result["AP"] == pytest.approx(0.4)


class DropoutOnBoxes(torch.nn.Module):
    """``model`` with dropout on its boxes: right only in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model, self.dropout = model, torch.nn.Dropout(0.5)

    def forward(self, images, mask):
        out = self.model(images, mask)
        return {**out, "pred_boxes": self.dropout(out["pred_boxes"])}


def test_modules_are_evaluated_in_eval_mode_and_left_as_they_were(synthetic, oracle):
    model = DropoutOnBoxes(oracle).train()
    assert _evaluate(model, *synthetic)["AP"] == pytest.approx(1.0)
    assert model.training and model.dropout.training
    model.dropout.eval()
    _evaluate(model, *synthetic)
    assert model.training and not model.dropout.training


def test_parity_of_a_model_and_its_eager_compile_is_exact(synthetic):
    torch.manual_seed(0)
    model = at.build_model(at.VARIANTS["r50-c5"])
    compiled = at.compile(model, backend="eager", device="cpu", precision="fp32", min_shape=(1, 32, 32))
    report = parity_report(model, compiled, *synthetic, max_images=2, progress=False, **SIZES)
    assert report["agreement"]["mean"] == 1.0 and report["problems"] == []
    assert (
        report["numeric"]["pred_logits"]["max_abs_diff"]
        == 0
        == report["numeric"]["pred_boxes"]["max_abs_diff"]
    )
    assert report["models"]["a"]["stats"] == report["models"]["b"]["stats"]
    assert set(report["delta"].values()) <= {0.0, None}


# --- bad input -------------------------------------------------------------------------------------------


def _drop_annotations(data):
    del data["annotations"]


def _negative_width(data):
    data["annotations"][0]["bbox"][2] = -3


def _short_bbox(data):
    data["annotations"][0]["bbox"] = [1, 2, 3]


def _unknown_image(data):
    data["annotations"][0]["image_id"] = 999


def _unknown_category(data):
    data["annotations"][0]["category_id"] = 12345


def _repeated_image_id(data):
    data["images"][1]["id"] = data["images"][0]["id"]


def _no_images(data):
    data["images"], data["annotations"] = [], []


def _no_annotations(data):
    data["annotations"] = []


def _wrong_image_size(data):
    data["images"][0]["height"] += 1


def _file_name_not_a_string(data):
    data["images"][1]["file_name"] = 5


def _iscrowd_not_0_or_1(data):
    data["annotations"][0]["iscrowd"] = "no"


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_drop_annotations, "lacks the list.*'annotations'"),
        (_negative_width, r"annotations\[0\] has a box of negative size"),
        (_short_bbox, r"annotations\[0\] has bbox \[1, 2, 3\]"),
        (_unknown_image, "refers to image_id 999"),
        (_unknown_category, "category_id 12345"),
        (_repeated_image_id, r"images\[1\] repeats image id"),
        (_no_images, "lists no images"),
        (_no_annotations, "has no annotations"),
        (_wrong_image_size, "000001.jpg is 146x125 pixels but .* says 147x125"),
        (_file_name_not_a_string, r"images\[1\] must have an integer 'id' and a string 'file_name'"),
        (_iscrowd_not_0_or_1, r"annotations\[0\] has iscrowd 'no': it must be 0 or 1"),
    ],
)
def test_bad_annotations_are_named_before_scoring(synthetic, tmp_path, corrupt, message):
    ann_file, image_dir = _copy_dataset(synthetic, tmp_path)
    data = json.loads(ann_file.read_text())
    corrupt(data)
    ann_file.write_text(json.dumps(data))
    model = never_called if corrupt is not _wrong_image_size else Oracle(*synthetic)
    with pytest.raises(at.InputError, match=message) as error:
        _evaluate(model, ann_file, image_dir)
    assert str(ann_file) in str(error.value) or "000001.jpg" in str(error.value)


def test_an_unknown_device_is_named(synthetic):
    with pytest.raises(at.InputError, match="device='gpu0' is not supported"):
        evaluate_coco(never_called, *synthetic, device="gpu0")


@pytest.mark.parametrize(
    ("content", "message"), [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list")]
)
def test_unparsable_annotation_file(tmp_path, content, message):
    (tmp_path / "ann.json").write_text(content)
    with pytest.raises(at.InputError, match=message):
        _evaluate(never_called, tmp_path / "ann.json", tmp_path)


def test_missing_files_are_named(synthetic, tmp_path):
    ann_file, image_dir = _copy_dataset(synthetic, tmp_path)
    with pytest.raises(at.InputError, match=r"annotation file .*nope\.json does not exist"):
        _evaluate(never_called, tmp_path / "nope.json", image_dir)
    (image_dir / "000003.png").unlink()
    with pytest.raises(
        at.InputError, match=f"1 of the 6 images .* missing from {image_dir} \\(000003.png\\)"
    ):
        _evaluate(never_called, ann_file, image_dir)
    # Images past max_images are not needed.
    assert _evaluate(Oracle(*synthetic), ann_file, image_dir, max_images=2)["AP"] == pytest.approx(1.0)


def test_unreadable_image_is_named(synthetic, tmp_path, oracle):
    ann_file, image_dir = _copy_dataset(synthetic, tmp_path)
    (image_dir / "000002.png").write_bytes(b"not a png")
    with pytest.raises(at.InputError, match=r"cannot read image .*000002\.png"):
        _evaluate(oracle, ann_file, image_dir)


def test_bad_images_are_skipped_and_listed_on_request(synthetic, tmp_path, oracle):
    ann_file, image_dir = _copy_dataset(synthetic, tmp_path)
    (image_dir / "000002.png").write_bytes(b"not a png")
    (image_dir / "000005.png").write_bytes((image_dir / "000005.png").read_bytes()[:60])  # truncated
    result = _evaluate(oracle, ann_file, image_dir, batch_size=4, skip_bad_images=True)
    assert [(s["image_id"], Path(s["file"]).name) for s in result["skipped_images"]] == [
        (2, "000002.png"),
        (5, "000005.png"),
    ]
    assert all("cannot read image" in s["error"] for s in result["skipped_images"])
    # The skipped images' ground truth is not scored: the oracle is perfect on the rest.
    assert result["num_images"] == 4 and result["AP"] == pytest.approx(1.0, abs=1e-12)


def test_skipping_every_image_leaves_nothing_to_score(synthetic, tmp_path, oracle):
    ann_file, image_dir = _copy_dataset(synthetic, tmp_path)
    for path in image_dir.iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(at.InputError, match="none of the 6 images could be read: there is nothing to score"):
        _evaluate(oracle, ann_file, image_dir, skip_bad_images=True)


def _contiguous_ids(data):
    """The common remapping: COCO's 80 names renumbered 1..N in order (ids 12, 26, ... are gaps in COCO)."""
    new_id = {cat["id"]: i for i, cat in enumerate(sorted(data["categories"], key=lambda c: c["id"]), 1)}
    for cat in data["categories"]:
        cat["id"] = new_id[cat["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = new_id[ann["category_id"]]
    return {new: old for old, new in new_id.items()}


def test_coco_names_under_other_ids_are_refused(synthetic, tmp_path):
    ann_file, image_dir = _copy_dataset(synthetic, tmp_path)
    data = json.loads(ann_file.read_text())
    _contiguous_ids(data)
    ann_file.write_text(json.dumps(data))
    with pytest.raises(
        at.InputError, match=r"categories carry COCO names under other ids .*pass category_map="
    ):
        _evaluate(never_called, ann_file, image_dir)


@pytest.mark.parametrize(("category", "name"), [(0, "background"), (12, "street sign")])
def test_categories_in_cocos_unused_slots_are_refused(synthetic, tmp_path, category, name):
    """Scored against a slot the model never predicts, their AP of 0 would pull mAP down unseen."""
    ann_file, image_dir = _copy_dataset(synthetic, tmp_path)
    data = json.loads(ann_file.read_text())
    data["categories"].append({"id": category, "name": name})
    data["annotations"][0]["category_id"] = category
    ann_file.write_text(json.dumps(data))
    with pytest.raises(
        at.InputError, match=rf"categories {category} '{name}' have ids of COCO's unused slots"
    ):
        _evaluate(never_called, ann_file, image_dir)


def test_category_map_scores_a_renumbered_dataset(synthetic, tmp_path, oracle):
    # The oracle answers COCO ids (it reads the original file); the map turns them into the file's ids.
    ann_file, image_dir = _copy_dataset(synthetic, tmp_path)
    data = json.loads(ann_file.read_text())
    category_map = _contiguous_ids(data)
    ann_file.write_text(json.dumps(data))
    result = _evaluate(oracle, ann_file, image_dir, category_map=category_map)
    assert result["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("category_map", "message"),
    [
        ({}, r"category_map lacks categories \["),
        ([(1, 1)], "category_map must be a dict"),
        ({"person": 1}, "category_map entries must be integer ids -> integer labels >= 0"),
        ({1: -1}, "category_map entries must be integer ids -> integer labels >= 0"),
        ("all", "category_map must be a dict"),
    ],
)
def test_bad_category_map(synthetic, category_map, message):
    with pytest.raises(at.InputError, match=message):
        _evaluate(never_called, *synthetic, category_map=category_map)


def test_category_map_with_a_label_used_twice(synthetic):
    ids = [cat["id"] for cat in json.loads(synthetic[0].read_text())["categories"]]
    with pytest.raises(at.InputError, match="maps two categories to one model label"):
        _evaluate(never_called, *synthetic, category_map=dict.fromkeys(ids, 1))


def test_skip_bad_images_must_be_a_bool(synthetic):
    with pytest.raises(at.InputError, match="skip_bad_images must be True or False, got 'yes'"):
        _evaluate(never_called, *synthetic, skip_bad_images="yes")


def test_pycocotools_report_only_at_debug(synthetic, oracle, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="anchordetr_trt.eval"):
        _evaluate(oracle, *synthetic, max_images=2)
    assert capsys.readouterr().out == "" and not any("COCOeval" in r.message for r in caplog.records)
    # The CLI may have set the scoring logger's own level earlier in this process.
    with caplog.at_level(logging.DEBUG, logger="anchordetr_trt.eval.scoring"):
        _evaluate(oracle, *synthetic, max_images=2)
    assert any("Average Precision" in r.message for r in caplog.records)


def test_non_finite_predictions_are_not_scored(synthetic, oracle):
    with pytest.raises(FloatingPointError, match=r"NaN or infinite values for .*000004\.png"):
        _evaluate(NaNOn(oracle, image_id=4), *synthetic, batch_size=2)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda images, mask: {"logits": None}, "must return a dict with 'pred_logits' and 'pred_boxes'"),
        (
            lambda images, mask: {
                "pred_logits": torch.zeros(len(images), 5, 10),
                "pred_boxes": torch.zeros(len(images), 5, 4),
            },
            "outside the model's 10 class slots",
        ),
    ],
)
def test_model_outputs_that_cannot_be_scored(synthetic, model, message):
    with pytest.raises(at.InputError, match=message):
        _evaluate(model, *synthetic)


# --- parity ----------------------------------------------------------------------------------------------


def test_parity_report_measures_a_known_difference(synthetic, oracle, tmp_path):
    moved_id = 2
    report = parity_report(
        oracle,
        Perturbed(oracle, moved_id),
        *synthetic,
        names=("exact", "perturbed"),
        batch_size=4,
        progress=False,
        **SIZES,
    )
    exact, perturbed = (report["models"][name]["stats"] for name in ("exact", "perturbed"))
    assert exact["AP"] == pytest.approx(1.0) and perturbed["AP"] < 0.95
    assert report["delta"]["AP"] == pytest.approx(perturbed["AP"] - exact["AP"])
    assert report["problems"] == [] and report["num_images"] == 6

    # Only the moved image's detections disagree (IoU 1/3 < 0.9); scores of matches move by ~1e-9.
    agreement = report["agreement"]
    assert agreement["mean"] == pytest.approx(5 / 6) and agreement["min"] == 0.0
    assert agreement["images_below_1"] == 1 and [w["image_id"] for w in agreement["worst"]] == [moved_id]
    assert agreement["max_score_diff"] < 1e-6

    logits, boxes = oracle.outputs_for(moved_id)
    moved = 0.5 * boxes[:, 2].double()
    numeric = report["numeric"]
    assert numeric["pred_logits"]["max_abs_diff"] == pytest.approx(0.5, abs=1e-5)
    assert numeric["pred_logits"]["mean_abs_diff"] == pytest.approx(0.5, abs=1e-5)
    assert numeric["pred_logits"]["values_compared"] == 6 * logits.numel()
    assert numeric["pred_boxes"]["max_abs_diff"] == pytest.approx(moved.max().item(), rel=1e-5)
    assert numeric["pred_boxes"]["mean_abs_diff"] == pytest.approx(
        moved.sum().item() / (6 * boxes.numel()), rel=1e-5
    )

    json_path, md_path = write_report(report, tmp_path / "report")
    assert json.loads(json_path.read_text()) == report
    md_path.write_text("the user's notes")
    with pytest.raises(
        at.InputError, match=r"write_report: out_dir .*parity\.md exists and anchordetr-trt did not write it"
    ):
        write_report(report, tmp_path / "report")
    assert md_path.read_text() == "the user's notes"
    md_path.unlink()
    write_report(report, tmp_path / "report")  # its own json again, and a new md
    markdown = md_path.read_text()
    assert "# Parity: exact vs perturbed" in markdown
    assert f"| AP | 1.0000 | {perturbed['AP']:.4f} | {perturbed['AP'] - 1:+.4f} |" in markdown


def test_parity_agreement_leaves_out_images_with_nothing_to_compare(synthetic, oracle, tmp_path):
    # No detection of a scores 0.3 (its best logits are -5): nothing to compare, which says nothing
    # either way, not full agreement.
    def unsure(images, mask):
        out = oracle(images, mask)
        return {**out, "pred_logits": out["pred_logits"] - 25}

    report = parity_report(unsure, oracle, *synthetic, match_min_score=0.3, progress=False, **SIZES)
    agreement = report["agreement"]
    assert agreement["mean"] is None and agreement["min"] is None and agreement["images_compared"] == 0
    assert agreement["matched"] == agreement["compared"] == 0
    _, md_path = write_report(report, tmp_path)
    markdown = md_path.read_text()
    assert "Share of a's detections scoring at least 0.3 per image" in markdown
    assert "no image of 6 had a detection to compare; 0 of 0 detections matched" in markdown


def test_matching_takes_each_detection_of_b_once_in_score_order():
    box = [0.1, 0.1, 0.2, 0.2]
    shifted = [0.13, 0.1, 0.2, 0.2]  # IoU 0.54 with box
    b = np.array([[*box, 0.9, 1.0]])
    duplicates = np.array([[*box, 0.9, 1.0], [*box, 0.8, 1.0]])
    assert count_matches(duplicates, b, 0.5)[:2] == (1, 2)
    # A higher-scored detection below the IoU threshold takes nothing from the one that matches.
    near_and_exact = np.array([[*shifted, 0.95, 1.0], [*box, 0.9, 1.0]])
    assert count_matches(near_and_exact, b, 0.9)[:2] == (1, 2)
    assert count_matches(near_and_exact, b, 0.5)[:2] == (1, 2)  # the first in score order takes it
    assert count_matches(near_and_exact, np.array([[*box, 0.9, 2.0]]), 0.5)[:2] == (0, 2)  # other label


def test_parity_report_flags_non_finite_outputs(synthetic, oracle, tmp_path):
    report = parity_report(oracle, NaNOn(oracle, image_id=5), *synthetic, progress=False, **SIZES)
    assert report["models"]["a"]["stats"]["AP"] == pytest.approx(1.0)
    assert report["models"]["b"]["stats"] is None
    assert (
        report["models"]["b"]["non_finite_images"] == [5] and report["models"]["b"]["non_finite_values"] == 1
    )
    assert report["delta"]["AP"] is None and "b returned NaN" in report["problems"][0]
    assert report["numeric"]["pred_logits"]["values_compared"] == 6 * 20 * 91 - 1
    _, md_path = write_report(report, tmp_path)
    assert "**Problems:**" in md_path.read_text()


# --- distributed -----------------------------------------------------------------------------------------


def _uneven_shift(image_id):
    return 0.15 * (image_id % 3)  # IoU 1, 0.74 or 0.54 by image: AP strictly between 0 and 1


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(synthetic, tmp_path):
    ann_file, image_dir = synthetic
    expected = _evaluate(Oracle(*synthetic, shift=_uneven_shift), *synthetic, batch_size=2)
    assert 0.2 < expected["AP"] < 0.9
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        __file__, str(ann_file), str(image_dir), str(tmp_path),
    ]  # fmt: skip
    unavailable = _process_group_unavailable()
    if unavailable:
        pytest.skip(f"cannot start a torch.distributed process group here: {unavailable}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank1["result"] is None
    got = rank0["result"]
    assert got["num_images"] == 6
    for key in (*STAT_NAMES, "per_class_AP"):
        assert got[key] == expected[key], key
    # A failure on rank 1 (image 3 is in its share: batches [1, 2], [3, 4], [5, 6]) is raised on both ranks.
    assert rank1["error"].startswith("FloatingPointError") and "000003.png" in rank1["error"]
    assert rank0["error"].startswith("RuntimeError: evaluation failed on rank 1: FloatingPointError")


def _process_group_unavailable():
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "this PyTorch build lacks torch.distributed with gloo"
    try:  # torchrun's rendezvous needs a TCP store on localhost
        torch.distributed.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=10))
    except (RuntimeError, OSError) as error:
        return f"no TCP store on localhost ({error})"
    return None


def _torchrun_worker(ann_file, image_dir, out_dir):
    """Run by each torchrun rank: one evaluation, then one that fails on an image of rank 1."""
    oracle = Oracle(ann_file, image_dir, shift=_uneven_shift)
    result = _evaluate(oracle, ann_file, image_dir, batch_size=2)
    try:
        _evaluate(NaNOn(oracle, image_id=3), ann_file, image_dir, batch_size=2)
        error = None
    except Exception as caught:
        error = f"{type(caught).__name__}: {caught}"
    rank = torch.distributed.get_rank()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"result": result, "error": error}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _torchrun_worker(*sys.argv[1:])
