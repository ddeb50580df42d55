"""preprocess / postprocess against the official COCO evaluation pipeline."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import anchordetr_trt as at
from anchordetr_trt.transforms import IMAGENET_MEAN, IMAGENET_STD, resized_size


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


def test_sixteen_bit_tensor_scales_like_eight_bit():
    array = _random_rgb(64, 64)
    sixteen = torch.from_numpy(array.astype(np.int32) * 257).permute(2, 0, 1)
    eight = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(
        at.preprocess([sixteen], min_size=64)[0], at.preprocess([eight], min_size=64)[0], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "no images"),
        ([np.zeros((0, 5, 3), np.uint8)], "empty"),
        ([np.zeros((5, 5, 2), np.uint8)], "HxWx3"),
        ([torch.full((3, 8, 8), 2.0)], r"\[0, 1\]"),
        ([torch.full((3, 8, 8), float("nan"))], "NaN"),
        (["a.jpg"], "str"),
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


def test_postprocess_rejects_mismatched_sizes():
    outputs = {"pred_logits": torch.zeros(2, 4, 3), "pred_boxes": torch.zeros(2, 4, 4)}
    with pytest.raises(at.InputError, match=r"target_sizes must be \[B, 2\]"):
        at.postprocess(outputs, [[10, 10]])
