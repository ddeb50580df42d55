"""Pre- and post-processing matching the official COCO evaluation pipeline."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = np.ndarray | Image.Image | Tensor


def resized_size(height: int, width: int, min_size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """(h, w) after scaling the short side to ``min_size`` unless the long side would pass ``max_size``."""
    short, long = min(height, width), max(height, width)
    if long / short * min_size > max_size:
        min_size = round(max_size * short / long)
    if short == min_size:
        return height, width
    if width < height:
        return int(min_size * height / width), min_size
    return min_size, int(min_size * width / height)


def preprocess(
    images: Sequence[ImageLike] | ImageLike, *, min_size: int = 800, max_size: int = 1333
) -> tuple[Tensor, Tensor, Tensor]:
    """Resize, normalize and pad images into one batch.

    ``images``: HxWx3 uint8 arrays, PIL images, or CHW tensors (uint8, or float in [0, 1]); grayscale
    and RGBA are converted to RGB. Returns ``(batch [B, 3, H, W] float32, mask [B, H, W] bool with True
    on padding, sizes [B, 2] int64 original (h, w))``.
    """
    if isinstance(images, np.ndarray | Image.Image | Tensor) and not _is_batch_tensor(images):
        images = [images]
    if len(images) == 0:
        raise InputError("preprocess() got no images: pass a list of arrays, PIL images or CHW tensors")
    tensors, sizes = [], []
    for index, image in enumerate(images):
        image = _as_rgb(image, index)
        height, width = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[-2:]
        sizes.append((height, width))
        new_h, new_w = resized_size(height, width, min_size, max_size)
        if isinstance(image, Image.Image):  # 8-bit images resize in PIL, as the official pipeline does
            image = TF.to_tensor(image.resize((new_w, new_h), Image.BILINEAR))
        else:
            image = TF.resize(image, [new_h, new_w], antialias=True)
        tensors.append(TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD))
    batch, mask = pad_batch(tensors)
    return batch, mask, torch.tensor(sizes, dtype=torch.int64)


def pad_batch(images: Sequence[Tensor], size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Pad CHW images at the bottom and right to a common size (default: the largest of each side)."""
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
    outputs: dict[str, Tensor], target_sizes: Tensor | Sequence, top_k: int = 100
) -> list[dict[str, Tensor]]:
    """Top-k detections per image: ``scores`` [k], ``labels`` [k] (COCO category ids) and ``boxes``
    [k, 4] (x0, y0, x1, y1 in pixels of the image of size ``target_sizes[i]`` = (h, w))."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    sizes = torch.as_tensor(target_sizes, device=logits.device)
    if sizes.dim() != 2 or sizes.shape != (logits.shape[0], 2):
        raise InputError(
            f"target_sizes must be [B, 2] (h, w) with B = {logits.shape[0]}, got {list(sizes.shape)}"
        )
    num_classes = logits.shape[-1]
    top_k = min(top_k, logits.shape[1] * num_classes)
    scores, index = logits.float().sigmoid().flatten(1).topk(top_k, dim=1)
    query, labels = index // num_classes, index % num_classes
    cx, cy, w, h = boxes.float().unbind(-1)
    xyxy = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
    xyxy = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))
    img_h, img_w = sizes.float().unbind(1)
    xyxy = xyxy * torch.stack((img_w, img_h, img_w, img_h), dim=1)[:, None]
    return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, xyxy, strict=True)]


def _is_batch_tensor(images: Any) -> bool:
    return isinstance(images, Tensor) and images.dim() == 4


def _as_rgb(image: ImageLike, index: int) -> Image.Image | Tensor:
    """8-bit images -> RGB PIL image; 16-bit and float images -> float32 RGB [3, H, W] in [0, 1]."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise InputError(f"image {index}: array of shape {image.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise InputError(
                f"image {index}: tensor of shape {list(image.shape)} is not CHW with 1, 3 or 4 channels"
            )
        tensor = image.detach().cpu()
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
    return _scale_to_unit(tensor.contiguous(), index)


def _scale_to_unit(tensor: Tensor, index: int) -> Tensor:
    if tensor.dtype in (torch.uint16, torch.int16, torch.int32, torch.int64):
        return tensor.float() / 65535  # 16-bit images
    if not tensor.is_floating_point():
        raise InputError(f"image {index}: unsupported dtype {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise InputError(f"image {index} has NaN or infinite values")
    if tensor.min() < 0 or tensor.max() > 1:
        raise InputError(
            f"image {index}: float values must lie in [0, 1], got [{tensor.min():.3g}, {tensor.max():.3g}]; "
            "pass uint8 images or divide by 255"
        )
    return tensor.float()


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        array = array / (65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0))
        return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
