"""preprocess / postprocess against the official COCO evaluation pipeline."""

import io

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import anchordetr_trt as at
from anchordetr_trt.transforms import IMAGENET_MEAN, IMAGENET_STD, pil_to_rgb, resized_size


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((480, 640), (800, 1066)),
        ((640, 480), (1066, 800)),
        ((800, 800), (800, 800)),
        ((200, 1000), (267, 1335)),
        ((1000, 200), (1335, 267)),
        ((801, 1200), (800, 1198)),
    ],
)
def test_resized_size(size, expected):
    # As in the official transform, rounding the short side can push the long one past max_size.
    assert resized_size(*size) == expected


def _random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_preprocess_equals_pil_resize_and_normalize():
    array = _random_rgb(240, 320)
    batch, mask, sizes = at.preprocess([array], min_size=400, max_size=700)
    expected = TF.normalize(
        TF.to_tensor(TF.resize(Image.fromarray(array), [400, 533])), IMAGENET_MEAN, IMAGENET_STD
    )
    assert batch.shape == (1, 3, 400, 533)
    torch.testing.assert_close(batch[0], expected, atol=1e-6, rtol=0)
    assert not mask.any() and sizes.tolist() == [[240, 320]]


def test_array_pil_and_uint8_tensor_inputs_agree():
    array = _random_rgb(100, 150)
    results = [
        at.preprocess([x], min_size=128)[0]
        for x in (array, Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1))
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=0, rtol=0)


def test_padding_and_mask():
    batch, mask, sizes = at.preprocess(
        [_random_rgb(100, 200), _random_rgb(200, 100)], min_size=100, max_size=400
    )
    assert batch.shape == (2, 3, 200, 200)
    assert sizes.tolist() == [[100, 200], [200, 100]]
    assert not mask[0, :100, :200].any() and mask[0, 100:].all()
    assert not mask[1, :200, :100].any() and mask[1, :, 100:].all()
    assert (batch[0, :, 100:] == 0).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_pil_modes_convert_to_rgb(mode):
    rgb = Image.fromarray(_random_rgb(64, 80))
    image = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    batch, _, _ = at.preprocess([image], min_size=64)
    assert batch.shape == (1, 3, 64, 80) and torch.isfinite(batch).all()
    if mode in ("L", "I;16"):  # gray: the three channels hold the same image
        unnormalized = (
            batch[0] * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
        )
        torch.testing.assert_close(unnormalized[0], unnormalized[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["array", "tensor"])
def test_sixteen_bit_scales_like_eight_bit(kind):
    array = _random_rgb(64, 64)
    sixteen = array.astype(np.uint16) * 257
    if kind == "tensor":
        sixteen = torch.from_numpy(sixteen).permute(2, 0, 1)
    eight = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(
        at.preprocess([sixteen], min_size=64)[0], at.preprocess([eight], min_size=64)[0], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.int8, np.uint32, np.bool_])
@pytest.mark.parametrize("kind", ["array", "tensor"])
def test_integer_dtypes_other_than_uint8_and_uint16_are_refused(dtype, kind):
    # An int64 array of 0..255 was once read as 16-bit: a nearly black image, without a word.
    image = _random_rgb(32, 32).astype(dtype)
    if kind == "tensor":
        image = torch.from_numpy(image).permute(2, 0, 1)
    with pytest.raises(at.InputError, match=r"image 0: .* is ambiguous .*pass uint8 \(0\.\.255\), uint16"):
        at.preprocess(image, min_size=32)


def test_float_pixels_are_taken_in_zero_one():
    array = _random_rgb(32, 48)
    for as_float in (array.astype(np.float64) / 255, torch.from_numpy(array).permute(2, 0, 1).half() / 255):
        torch.testing.assert_close(
            at.preprocess(as_float, min_size=32)[0], at.preprocess(array, min_size=32)[0], atol=2e-3, rtol=0
        )


def _with_exif_orientation(image, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_exif_orientation_makes_phone_photos_upright():
    # Orientation 6: the camera stored the pixels rotated; viewers turn the image 90 degrees clockwise.
    stored = Image.fromarray(_random_rgb(40, 64))
    photo = _with_exif_orientation(stored, 6)
    assert photo.size == (64, 40)
    batch, _, sizes = at.preprocess(photo, min_size=40)
    assert sizes.tolist() == [[64, 40]] and batch.shape == (1, 3, 64, 40)
    no_exif = _with_exif_orientation(stored, 1)
    upright = no_exif.transpose(Image.Transpose.ROTATE_270)
    torch.testing.assert_close(batch, at.preprocess(upright, min_size=40)[0], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (10, 2000, (7, 1400)),  # the official rule: the long side passes max_size, as documented
        (2000, 10, (1400, 7)),
        (1, 5000, (1, 5000)),  # the short side never drops below 1 pixel
        (3, 3, (800, 800)),
    ],
)
def test_extreme_aspect_ratios_do_not_crash(height, width, expected):
    batch, _, sizes = at.preprocess(np.zeros((height, width, 3), np.uint8))
    assert resized_size(height, width) == expected
    assert batch.shape[2:] == expected and sizes.tolist() == [[height, width]]


def test_sixteen_bit_pil_helper_is_shared_with_drawing():
    gray16 = Image.fromarray((np.arange(256, dtype=np.uint16) * 257).reshape(16, 16))
    assert np.asarray(pil_to_rgb(gray16))[..., 0].ravel().tolist() == list(range(256))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_size": 0}, "min_size must be an integer >= 1 .* got 0"),
        ({"min_size": -5}, "min_size must be an integer >= 1 .* got -5"),
        ({"min_size": 64.5}, "min_size must be an integer >= 1 .* got 64.5"),
        ({"min_size": True}, "min_size must be an integer >= 1 .* got True"),
        ({"max_size": 0}, "max_size must be an integer >= 1 .* got 0"),
        ({"min_size": 800, "max_size": 600}, "max_size=600 is below min_size=800"),
    ],
)
def test_bad_sizes(kwargs, message):
    with pytest.raises(at.InputError, match=message):
        at.preprocess(_random_rgb(16, 16), **kwargs)


def test_gray_tensors_of_any_width_are_read():
    batch, _, sizes = at.preprocess([torch.rand(100, 3), torch.rand(100, 4)])
    assert sizes.tolist() == [[100, 3], [100, 4]] and batch.shape[1] == 3


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "no images"),
        ([np.zeros((0, 5, 3), np.uint8)], "empty"),
        ([Image.new("RGB", (0, 10))], r"image 0 is empty \(10, 0\)"),
        ([np.zeros((5, 5, 2), np.uint8)], "HxWx3"),
        ([torch.full((3, 8, 8), 2.0)], r"\[0, 1\]"),
        # An HWC tensor of 3 rows reads as CHW 3 pixels wide: refused, not resized to 800 x 3 * 800 / 640.
        ([torch.zeros(3, 640, 3)], r"\[3, 640, 3\] is ambiguous \(CHW or HWC\): pass HWC as image.permute"),
        ([torch.zeros(1, 640, 4, dtype=torch.uint8)], r"\[1, 640, 4\] is ambiguous"),
        (
            [torch.zeros(480, 640, 3)],
            r"\[480, 640, 3\] is not CHW with 1, 3 or 4 channels: pass image.permute",
        ),
        ([torch.full((3, 8, 8), float("nan"))], "NaN"),
        ([np.full((8, 8, 3), np.inf, np.float32)], "image 0 has NaN or infinite pixel values"),
        ([np.full((8, 8, 3), -0.5, np.float32)], r"float values must lie in \[0, 1\].*divide by 255"),
        (["a.jpg"], "str"),
        ("a.jpg", r"got a str, not an image: open the file first \(PIL\.Image\.open"),
        (None, "got None: pass an image"),
        (42, "got a int: pass a PIL image"),
        (Image.fromarray(np.full((4, 4), 70000, np.int32), "I"), "outside the 16-bit range"),
        (Image.fromarray(np.full((4, 4), 3.0, np.float32), "F"), r"float values must lie in \[0, 1\]"),
    ],
)
def test_bad_images(images, message):
    with pytest.raises(at.InputError, match=message):
        at.preprocess(images)


def test_postprocess_geometry():
    logits = torch.full((1, 2, 3), -10.0)
    logits[0, 1, 2] = 5.0
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 0.2]]])
    (result,) = at.postprocess(
        {"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), top_k=2
    )
    assert result["labels"][0] == 2 and result["scores"][0] == pytest.approx(
        torch.sigmoid(torch.tensor(5.0)).item()
    )
    torch.testing.assert_close(result["boxes"][0], torch.tensor([0.0, 40.0, 100.0, 60.0]))


def test_postprocess_clips_boxes_to_the_image_unless_asked_not_to():
    # A box centred near the top-left corner, wider than twice its distance to the edges: it reaches past both.
    outputs = {"pred_logits": torch.zeros(1, 1, 2), "pred_boxes": torch.tensor([[[0.1, 0.2, 0.6, 0.8]]])}
    (clipped,) = at.postprocess(outputs, [[100, 200]], top_k=1)
    torch.testing.assert_close(clipped["boxes"], torch.tensor([[0.0, 0.0, 80.0, 60.0]]))
    (official,) = at.postprocess(outputs, [[100, 200]], top_k=1, clip=False)
    torch.testing.assert_close(official["boxes"], torch.tensor([[-40.0, -20.0, 80.0, 60.0]]))
    with pytest.raises(at.InputError, match="clip must be True or False, got 'no'"):  # "no" reads as True
        at.postprocess(outputs, [[100, 200]], top_k=1, clip="no")
    # Sizes as NumPy gives them, unsigned included (torch compares no uint64).
    (unsigned,) = at.postprocess(outputs, np.array([[100, 200]], dtype=np.uint64), top_k=1)
    torch.testing.assert_close(unsigned["boxes"], clipped["boxes"])


def _outputs(batch=2, boxes_batch=None, queries=4, classes=3):
    return {
        "pred_logits": torch.zeros(batch, queries, classes),
        "pred_boxes": torch.full((batch if boxes_batch is None else boxes_batch, queries, 4), 0.5),
    }


def _nan_outputs():
    outputs = _outputs()
    outputs["pred_boxes"][1, 2, 0] = float("nan")
    return outputs


@pytest.mark.parametrize(
    ("outputs", "sizes", "top_k", "message"),
    [
        (_outputs(), [[10, 10]], 5, r"target_sizes must be \[B, 2\] \(h, w\) with B = 2, got \[1, 2\]"),
        (_outputs(), [[10, 10], [-4, 10]], 5, r"target_sizes must be positive \(h, w\)"),
        (_outputs(), [[10.5, 10], [4, 10]], 5, "target_sizes must hold integer pixel sizes.*float"),
        (_outputs(), "10x10", 5, r"target_sizes must be \[B, 2\]"),
        (
            _outputs(batch=1, boxes_batch=2),
            [[10, 10]],
            5,
            r"pred_logits \[1, 4, 3\] and pred_boxes \[2, 4, 4\]",
        ),
        ({"pred_logits": torch.zeros(2, 4, 3)}, [[1, 1]] * 2, 5, "'pred_logits' and 'pred_boxes'"),
        (_outputs(), [[10, 10]] * 2, -1, r"top_k must be an integer in 1\.\.12 .* got -1"),
        (_outputs(), [[10, 10]] * 2, 5.5, r"top_k must be an integer in 1\.\.12 .* got 5\.5"),
        (_outputs(), [[10, 10]] * 2, 13, r"top_k must be an integer in 1\.\.12 .* got 13"),
        (_nan_outputs(), [[10, 10]] * 2, 5, "the model produced NaN or infinite outputs"),
    ],
)
def test_postprocess_bad_inputs(outputs, sizes, top_k, message):
    with pytest.raises(at.InputError, match=message):
        at.postprocess(outputs, sizes, top_k=top_k)


def test_postprocess_can_skip_the_finite_check():
    results = at.postprocess(_nan_outputs(), [[10, 10]] * 2, top_k=3, check_finite=False)
    assert [len(r["scores"]) for r in results] == [3, 3]
