"""Running a detector on a batch: device and dtype of the inputs, timing, output checks, detections."""

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from anchordetr_trt.devices import check_device
from anchordetr_trt.errors import InputError
from anchordetr_trt.transforms import postprocess

from .loader import Batch

Detector = Callable[[Tensor, Tensor], dict[str, Tensor]]


class TimedDetector:
    """Calls ``model(images [B, 3, H, W], mask [B, H, W])`` on the model's device and input dtype.

    The device is ``device`` if given, else the model's ``.device`` attribute (compiled modules), else
    the device of its parameters, else the CPU.
    """

    def __init__(self, model: Detector, device: str | torch.device | None = None):
        self.model = model
        self.device, self.dtype = input_device_dtype(model, device)
        self.seconds = 0.0  # time spent in the model, synchronized on CUDA

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        images = batch.images.to(self.device, self.dtype, non_blocking=True)
        mask = batch.mask.to(self.device, non_blocking=True)
        start = time.perf_counter()
        outputs = self.model(images, mask)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        _check_structure(outputs, len(batch.image_ids))
        return outputs

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """An ``nn.Module`` model in eval mode (no dropout) for the duration; each submodule's mode is restored."""
        if not isinstance(self.model, nn.Module):
            yield
            return
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training


def non_finite_counts(outputs: dict[str, Tensor]) -> Tensor:
    """[B] number of NaN or infinite values in each image's logits and boxes."""
    return sum(
        (~torch.isfinite(outputs[key].float())).flatten(1).sum(1) for key in ("pred_logits", "pred_boxes")
    )


def detections(outputs: dict[str, Tensor], sizes: Tensor, top_k: int) -> list[np.ndarray]:
    """Per image, [top_k, 6] float64 rows (x, y, w, h, score, label) in pixels of the original image.
    Non-finite outputs are the callers' to report per image (evaluate_coco refuses them, parity counts them)."""
    num_candidates = outputs["pred_logits"].shape[1] * outputs["pred_logits"].shape[2]
    results = postprocess(  # unclipped, as the official evaluation scores them
        outputs,
        sizes.to(outputs["pred_logits"].device),
        top_k=min(top_k, num_candidates),
        clip=False,
        check_finite=False,
    )
    rows = []
    for result in results:
        x0, y0, x1, y1 = result["boxes"].double().unbind(-1)
        rows.append(
            torch.stack((x0, y0, x1 - x0, y1 - y0, result["scores"].double(), result["labels"].double()), 1)
            .cpu()
            .numpy()
        )
    return rows


def input_device_dtype(
    model: Detector, device: str | torch.device | None = None
) -> tuple[torch.device, torch.dtype]:
    """Where ``model``'s inputs go and in which floating dtype.

    Device: ``device`` if given, else the model's ``.device`` attribute (compiled modules), else the
    device of its parameters or buffers, else the CPU. Dtype: its ``.dtype`` attribute, else its first
    floating parameter's, else float32.
    """
    return _device_of(model, device), _input_dtype(model)


def _device_of(model: Detector, device: str | torch.device | None) -> torch.device:
    attribute = getattr(model, "device", None)
    first = None
    if isinstance(model, nn.Module):
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if device is None:
        if isinstance(attribute, str | torch.device):
            return torch.device(attribute)
        return first.device if first is not None else torch.device("cpu")
    device = check_device(device)
    if attribute is None and first is not None and first.device.type != device.type:
        raise InputError(
            f"the model's parameters are on {first.device} but device={str(device)!r}: "
            f"move the model first (model.to({str(device)!r})) or leave device=None"
        )
    return device


def _input_dtype(model: Detector) -> torch.dtype:
    attribute = getattr(model, "dtype", None)
    if isinstance(attribute, torch.dtype) and attribute.is_floating_point:
        return attribute
    if isinstance(model, nn.Module):
        for param in model.parameters():
            if param.is_floating_point():
                return param.dtype
    return torch.float32


def _check_structure(outputs: dict[str, Tensor], batch_size: int) -> None:
    if not isinstance(outputs, dict) or not {"pred_logits", "pred_boxes"} <= outputs.keys():
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise InputError(f"the model must return a dict with 'pred_logits' and 'pred_boxes', got {got}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if not isinstance(logits, Tensor) or not isinstance(boxes, Tensor):
        raise InputError(
            f"the model returned {type(logits).__name__} and {type(boxes).__name__}: "
            "pred_logits and pred_boxes must be tensors"
        )
    if logits.dim() != 3 or logits.shape[0] != batch_size or boxes.shape != (*logits.shape[:2], 4):
        raise InputError(
            f"the model returned pred_logits {list(logits.shape)} and pred_boxes {list(boxes.shape)}; "
            f"expected [{batch_size}, Q, classes] and [{batch_size}, Q, 4]"
        )


def check_num_classes(category_ids: Iterable[int], outputs: dict[str, Tensor], ann_file: Path) -> None:
    """Model labels are category ids: every category of the dataset needs a logit slot."""
    num_classes = outputs["pred_logits"].shape[-1]
    beyond = sorted(i for i in category_ids if not 0 <= i < num_classes)
    if beyond:
        raise InputError(
            f"{ann_file} has category ids {beyond[:5]} outside the model's {num_classes} class slots "
            f"(0..{num_classes - 1}): the model's labels are category ids, so the dataset must use the "
            "ids the model was trained with"
        )
