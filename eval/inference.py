"""Running a detector on a batch: device and dtype of the inputs, timing, output checks, detections."""

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from anchordetr_trt.devices import check_device, check_module_device
from anchordetr_trt.errors import InputError
from anchordetr_trt.transforms import postprocess

from .loader import Batch

Detector = Callable[[Tensor, Tensor], dict[str, Tensor]]


class TimedDetector:
    """Calls ``model(images [B, 3, H, W], mask [B, H, W])`` on the model's device and input dtype.

    The device is ``device`` if given, else the model's ``.device`` attribute (compiled modules), else
    the device of its parameters, else the CPU.
    """

    def __init__(self, model: Detector, device: str | torch.device | None = None, *, name: str = "model"):
        self.model = model
        self.device, self.dtype = input_device_dtype(model, device, name=name)
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
    model: Detector, device: str | torch.device | None = None, *, name: str = "model"
) -> tuple[torch.device, torch.dtype]:
    """Where ``model``'s inputs go and in which floating dtype; InputError (naming ``name``) unless
    ``model`` is a detector (see ``check_detector``).

    Device: ``device`` if given, else the model's ``.device`` attribute (compiled modules), else the
    device of its parameters or buffers, else the CPU. Dtype: its ``.dtype`` attribute, else its first
    floating parameter's, else float32.
    """
    check_detector(model, name)
    return _device_of(model, device), _input_dtype(model)


def check_detector(model: object, name: str = "model") -> Detector:
    """``model`` if it can be called as a detector, with its weights (if a module) on a device the
    package runs on; InputError naming ``name`` otherwise. Every entry point that takes a model checks it here."""
    if model is None or not callable(model):
        got = "None" if model is None else f"a {type(model).__name__}, which cannot be called"
        raise InputError(
            f"{name} is {got}: pass a model, e.g. anchordetr_trt.load_model(ckpt) or anchordetr_trt.compile(ckpt)",
            argument=name,
        )
    if isinstance(model, nn.Module):
        check_module_device(model, name)
    return model


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


def check_num_classes(
    category_ids: Iterable[int],
    num_classes: int | dict[str, Tensor] | None,
    ann_file: Path,
    category_map: Mapping[int, int] | None = None,
) -> None:
    """Model labels are category ids (or ``category_map``'s labels): each needs one of the model's
    ``num_classes`` logit slots (or those of its ``outputs``; None: not known yet, nothing checked)."""
    if isinstance(num_classes, dict):
        num_classes = num_classes["pred_logits"].shape[-1]
    if num_classes is None:
        return
    labels = {i: i for i in category_ids} if category_map is None else dict(category_map)
    beyond = sorted((category, label) for category, label in labels.items() if not 0 <= label < num_classes)
    if not beyond:
        return
    slots = f"the model's {num_classes} class slots (0..{num_classes - 1})"
    if category_map is not None:
        shown = ", ".join(f"category {category} to label {label}" for category, label in beyond[:3])
        raise InputError(f"category_map maps {shown}, outside {slots}: map each category to one of them")
    raise InputError(
        f"{ann_file} has category ids {[c for c, _ in beyond][:5]} outside {slots}: the model's labels are "
        "category ids, so the dataset must use the ids the model was trained with (or pass category_map=)"
    )


def num_classes_of(model: Detector) -> int | None:
    """The model's number of class slots, where its config tells it before a call."""
    return getattr(getattr(model, "config", None), "num_classes", None)
