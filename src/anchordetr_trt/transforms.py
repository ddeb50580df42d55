"""Pre- and post-processing matching the official COCO evaluation pipeline."""

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import ExifTags, Image, ImageOps
from torch import Tensor

from .devices import check_tensor_device
from .errors import InputError, check_bool, check_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The longest side an image may have once resized: 8192x8192 float32 RGB is 0.8 GB per image already.
MAX_RESIZED_SIDE = 8192

ImageLike = np.ndarray | Image.Image | Tensor


def resized_size(height: int, width: int, min_size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """(h, w) after scaling the short side to ``min_size`` unless the long side would pass ``max_size``.

    This is the official evaluation transform, rounding included: the long side can end a few pixels
    above ``max_size`` (a 10x2000 image becomes 7x1400 for 800/1333). The short side never drops
    below 1 pixel, so an image longer than ``max_size`` times its short side keeps a long side above
    ``max_size`` (1x5000 stays 1x5000) rather than vanishing.
    """
    height, width = check_int("height", height), check_int("width", width)
    min_size, max_size = check_int("min_size", min_size), check_int("max_size", max_size)
    short, long = min(height, width), max(height, width)
    if long / short * min_size > max_size:
        min_size = max(1, round(max_size * short / long))
    if short == min_size:
        return height, width
    if width < height:
        return int(min_size * height / width), min_size
    return min_size, int(min_size * width / height)


def preprocess(
    images: Sequence[ImageLike] | ImageLike,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    exif_orientation: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Resize, normalize and pad images into one batch.

    ``images``: one image or a list of them, each a PIL image, an HxW or HxWxC array or a CxHxW (or
    HxW) tensor with C = 1, 3 or 4 (gray and RGBA become RGB); a tensor that reads as both CxHxW and
    HxWxC (C and H in 1, 3, 4) is refused. Values by dtype: uint8 0..255, uint16
    0..65535, float in [0, 1]; other integer dtypes are refused (convert with ``.astype(np.uint8)``).
    PIL images are turned upright by their EXIF orientation first, unless ``exif_orientation=False``
    (datasets annotated on the stored pixels, as COCO is). Each image is resized by
    ``resized_size(h, w, min_size, max_size)``. Returns ``(batch [B, 3, H, W] float32, mask [B, H, W]
    bool with True on padding, sizes [B, 2] int64 (h, w) of each upright image before resizing)``.
    """
    _check_sizes(min_size, max_size)
    check_bool("exif_orientation", exif_orientation)
    if images is None:
        raise InputError(
            "preprocess() got None: pass an image (PIL image, HxWx3 array or CHW tensor) or a list"
        )
    if isinstance(images, np.ndarray | Image.Image | Tensor) and not _is_batch_tensor(images):
        images = [images]
    if isinstance(images, str | bytes | os.PathLike):
        raise InputError(
            f"preprocess() got a {type(images).__name__}, not an image: open the file first "
            "(PIL.Image.open(path)) and pass the image"
        )
    if not isinstance(images, Iterable):
        raise InputError(
            f"preprocess() got a {type(images).__name__}: pass a PIL image, an array, a tensor or a list of them"
        )
    images = list(images)
    if len(images) == 0:
        raise InputError("preprocess() got no images: pass a list of arrays, PIL images or CHW tensors")
    tensors, sizes = [], []
    for index, image in enumerate(images):
        if isinstance(image, Image.Image):
            check_open(image, f"image {index}")
        if exif_orientation and isinstance(image, Image.Image):
            image = upright(image)
        image = _as_rgb(image, index)
        height, width = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[-2:]
        sizes.append((height, width))
        new_h, new_w = resized_size(height, width, min_size, max_size)
        if max(new_h, new_w) > MAX_RESIZED_SIDE:
            raise InputError(
                f"image {index} ({height}x{width}) resizes to {new_h}x{new_w} (min_size={min_size}, "
                f"max_size={max_size}), past the {MAX_RESIZED_SIDE}-pixel side this package takes (a float "
                "batch that large runs out of memory): lower min_size and max_size, or crop the image"
            )
        if isinstance(image, Image.Image):  # 8-bit images resize in PIL, as the official pipeline does
            image = TF.to_tensor(image.resize((new_w, new_h), Image.BILINEAR))
        else:
            image = TF.resize(image, [new_h, new_w], antialias=True)
        tensors.append(TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD))
    batch, mask = pad_batch(tensors)
    return batch, mask, torch.tensor(sizes, dtype=torch.int64)


def _check_sizes(min_size: int, max_size: int) -> None:
    check_int("min_size", min_size, what=" (pixels)")
    check_int("max_size", max_size, what=" (pixels)")
    if max_size < min_size:
        raise InputError(
            f"max_size={max_size} is below min_size={min_size}: the long side cap must be at least "
            "the short side target (the defaults are min_size=800, max_size=1333)"
        )


def pad_batch(images: Sequence[Tensor], size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Pad CHW images at the bottom and right to a common size (default: the largest of each side)."""
    if not images or any(
        not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3 for img in images
    ):
        raise InputError("pad_batch takes a non-empty list of [3, H, W] tensors (normalized RGB images)")
    height = max(img.shape[-2] for img in images) if size is None else size[0]
    width = max(img.shape[-1] for img in images) if size is None else size[1]
    batch = images[0].new_zeros((len(images), 3, height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=images[0].device)
    for img, padded, m in zip(images, batch, mask, strict=True):
        h, w = img.shape[-2:]
        if h > height or w > width:
            raise InputError(f"image of size {h}x{w} does not fit the padded size {height}x{width}")
        padded[:, :h, :w] = img
        m[:h, :w] = False
    return batch, mask


def postprocess(
    outputs: dict[str, Tensor],
    target_sizes: Tensor | Sequence,
    top_k: int = 100,
    *,
    clip: bool = True,
    check_finite: bool = True,
) -> list[dict[str, Tensor]]:
    """Top-k detections per image: ``scores`` [k], ``labels`` [k] (COCO category ids) and ``boxes``
    [k, 4] (x0, y0, x1, y1 in pixels of the image of size ``target_sizes[i]`` = (h, w)), clipped to
    the image as torchvision's detectors return them; ``clip=False`` gives the official PostProcess's
    boxes, which may reach past the image's edges (what COCO evaluation of the official model scores).

    ``outputs``: the model's ``pred_logits`` [B, Q, classes] and ``pred_boxes`` [B, Q, 4];
    ``target_sizes`` [B, 2] positive integers; ``top_k`` at most Q * classes. NaN or infinite outputs,
    and boxes outside [0, 1], raise InputError unless ``check_finite=False`` (one host sync per call).
    """
    logits, boxes = _check_outputs(outputs)
    num_queries, num_classes = logits.shape[1:]
    top_k = check_int("top_k", top_k, 1, num_queries * num_classes, " (queries x classes)")
    sizes = _check_target_sizes(target_sizes, logits.shape[0], logits.device)
    clip = check_bool("clip", clip)
    if check_bool("check_finite", check_finite):
        finite = torch.isfinite(logits).all() & torch.isfinite(boxes).all()
        in_range = ((boxes >= 0) & (boxes <= 1)).all()
        finite, in_range = torch.stack((finite, in_range)).tolist()  # one host sync for both
        if not finite:
            raise InputError(
                "the model produced NaN or infinite outputs: check the images for NaN/Inf pixels and the "
                "weights, or compare with an fp32 model (precision='fp32')"
            )
        if not in_range:
            raise InputError(
                "pred_boxes must be (cx, cy, w, h) in [0, 1] of the image, as the model's sigmoid gives them: "
                "pass the model's outputs unchanged"
            )
    scores, index = logits.float().sigmoid().flatten(1).topk(int(top_k), dim=1)
    query, labels = index // num_classes, index % num_classes
    cx, cy, w, h = boxes.float().unbind(-1)
    xyxy = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
    xyxy = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))
    img_h, img_w = sizes.float().unbind(1)
    scale = torch.stack((img_w, img_h, img_w, img_h), dim=1)[:, None]
    xyxy = xyxy * scale
    if clip:
        xyxy = torch.minimum(xyxy.clamp(min=0), scale)
    return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, xyxy, strict=True)]


def _check_outputs(outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    if not isinstance(outputs, dict) or not {"pred_logits", "pred_boxes"} <= outputs.keys():
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise InputError(f"outputs must be the model's dict with 'pred_logits' and 'pred_boxes', got {got}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if not (isinstance(logits, Tensor) and isinstance(boxes, Tensor)):
        raise InputError("outputs['pred_logits'] and outputs['pred_boxes'] must be tensors")
    for name, value in (("pred_logits", logits), ("pred_boxes", boxes)):
        check_tensor_device(value, name)
        if not value.is_floating_point():
            raise InputError(
                f"outputs[{name!r}] must be a float tensor, got {value.dtype}: pass the model's outputs unchanged"
            )
    if logits.dim() != 3 or boxes.shape != (*logits.shape[:2], 4):
        raise InputError(
            f"outputs have pred_logits {list(logits.shape)} and pred_boxes {list(boxes.shape)}: expected "
            "[B, Q, classes] and [B, Q, 4] with the same B and Q (pass the model's outputs unchanged)"
        )
    empty = [name for name, size in zip(("queries", "classes"), logits.shape[1:], strict=True) if size == 0]
    if empty:
        raise InputError(
            f"outputs have 0 {' and 0 '.join(empty)} (pred_logits {list(logits.shape)}): there is nothing to "
            "rank; pass the model's outputs unchanged"
        )
    return logits, boxes


def _check_target_sizes(target_sizes: Tensor | Sequence, batch: int, device: torch.device) -> Tensor:
    if isinstance(target_sizes, np.ndarray) and target_sizes.dtype.kind == "u":
        target_sizes = target_sizes.astype(np.int64)  # torch compares few unsigned dtypes (uint64)
    try:
        sizes = torch.as_tensor(target_sizes)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(
            f"target_sizes must be [B, 2] (h, w) integers, got {type(target_sizes).__name__}: "
            "pass the sizes returned by preprocess()"
        ) from None
    check_tensor_device(sizes, "target_sizes")
    if sizes.dim() != 2 or sizes.shape != (batch, 2):
        raise InputError(f"target_sizes must be [B, 2] (h, w) with B = {batch}, got {list(sizes.shape)}")
    if sizes.is_floating_point() or sizes.is_complex() or sizes.dtype == torch.bool:
        raise InputError(
            f"target_sizes must hold integer pixel sizes, got {sizes.dtype}: pass the sizes returned by "
            "preprocess() or convert with .long()"
        )
    if (sizes < 1).any():
        raise InputError(
            f"target_sizes must be positive (h, w), got {sizes.tolist()}: pass each image's height and width"
        )
    return sizes.to(device)


def _is_batch_tensor(images: Any) -> bool:
    return isinstance(images, Tensor) and images.dim() == 4


def _as_rgb(image: ImageLike, index: int) -> Image.Image | Tensor:
    """8-bit images -> RGB PIL image; 16-bit and float images -> float32 RGB [3, H, W]
    in [0, 1]."""
    if isinstance(image, Image.Image):
        if not image.width or not image.height:
            raise InputError(f"image {index} is empty ({image.height}, {image.width})")
        return pil_to_rgb(image, f"image {index}")
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise InputError(f"image {index}: array of shape {image.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
        if image.dtype == np.uint16:  # torch has few uint16 kernels: scale in numpy
            image = image.astype(np.float32) / 65535
        elif image.dtype.kind not in "uf" or (image.dtype.kind == "f" and image.dtype.itemsize > 8):
            raise _dtype_error(index, str(image.dtype), "array")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        hwc = image.dim() == 3 and image.shape[-1] in (3, 4)
        if hwc and image.shape[0] in (1, 3, 4):  # HWC of 1, 3 or 4 rows, or CHW 3 or 4 pixels wide
            raise InputError(
                f"image {index}: tensor of shape {list(image.shape)} is ambiguous (CHW or HWC): pass HWC "
                "as image.permute(2, 0, 1), or either as an HxWxC array (image.numpy())"
            )
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            fix = ": pass image.permute(2, 0, 1)" if hwc else ""
            raise InputError(
                f"image {index}: tensor of shape {list(image.shape)} is not CHW with 1, 3 or 4 channels{fix}"
            )
        tensor = check_tensor_device(image, f"image {index}").detach().cpu()
        if tensor.dtype == torch.uint16:
            tensor = tensor.to(torch.float32) / 65535
    else:
        raise InputError(
            f"image {index}: unsupported type {type(image).__name__}; pass an array, PIL image or tensor"
        )
    if tensor.shape[-2] == 0 or tensor.shape[-1] == 0:
        raise InputError(f"image {index} is empty ({tuple(tensor.shape[-2:])})")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    tensor = tensor[:3]  # RGBA: the alpha channel is dropped
    if tensor.dtype == torch.uint8:
        return Image.fromarray(tensor.permute(1, 2, 0).numpy())
    if not tensor.is_floating_point() or tensor.is_complex():
        raise _dtype_error(index, str(tensor.dtype).removeprefix("torch."), "tensor")
    return _check_unit_range(tensor.contiguous().float(), f"image {index}")


def _dtype_error(index: int, dtype: str, kind: str) -> InputError:
    convert = ".astype(np.uint8)" if kind == "array" else ".to(torch.uint8)"
    return InputError(
        f"image {index}: {kind} of dtype {dtype} is ambiguous (8-bit? 16-bit?): pass uint8 (0..255), "
        f"uint16 (0..65535) or float in [0, 1], e.g. {convert} for values 0..255"
    )


def _check_unit_range(tensor: Tensor, name: str) -> Tensor:
    low, high = (value.item() for value in torch.aminmax(tensor))  # one pass: NaN and inf propagate
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f"{name} has NaN or infinite pixel values: fix or drop the image")
    if low < 0 or high > 1:
        raise InputError(
            f"{name}: float values must lie in [0, 1], got [{low:.3g}, {high:.3g}]; "
            "pass uint8 images or divide by 255"
        )
    return tensor


def check_open(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` with its pixels read; InputError if it was closed before (used after its ``with
    Image.open(...)`` block), or if its pixels cannot be decoded."""
    try:
        image.load()
    except (AssertionError, ValueError):  # Pillow's errors for a closed file
        raise InputError(
            f"{name} was closed before its pixels were read (used after its `with Image.open(...)` block?): "
            "call .load() inside the block, or read the file with anchordetr_trt.images.load_image"
        ) from None
    except OSError as error:
        raise InputError(f"{name} cannot be decoded ({error}): check the file it was read from") from None
    return image


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (phone photos), or itself when it has none."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def pil_to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """An 8-bit RGB copy of ``image`` in any PIL mode. 16-bit gray ("I;16*", and "I" as 16-bit PNGs
    open) is scaled by 1/257; "F" must lie in [0, 1]. Raises InputError for values outside those ranges
    and for an image closed before its pixels were read."""
    check_open(image, name)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.array(image, dtype=np.float32)
        if image.mode == "F":
            array = _check_unit_range(torch.from_numpy(array), name).numpy()
        elif array.min() < 0 or array.max() > 65535:
            raise InputError(
                f"{name}: 32-bit integer pixels in [{array.min():.0f}, {array.max():.0f}] are outside the "
                "16-bit range 0..65535: convert the image to 8 or 16 bits first"
            )
        else:
            array = array / 65535
        return Image.fromarray((array * 255).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
