"""``anchordetr_trt.compile``: a checkpoint in, a ``CompiledAnchorDETR`` out."""

import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backends
from .cache import use_compile_cache
from .checkpoint import Checkpoint, model_from
from .config import AnchorDETRConfig
from .devices import check_device, check_module_device, resolve_device
from .fold import fold_frozen_batchnorm
from .model import OUTPUTS, AnchorDETR, check_inputs
from .spec import (
    DEFAULT_MAX_SHAPE,
    DEFAULT_MIN_SHAPE,
    SIZE_MULTIPLE,
    CompileSpec,
    Shape,
    default_precision,
    round_up,
)

logger = logging.getLogger(__name__)


class CompiledAnchorDETR(nn.Module):
    """A detector built by ``compile``: ``forward(images [B, 3, H, W] float, mask [B, H, W] bool or
    None)`` returns ``pred_logits`` [B, Q, classes] and ``pred_boxes`` [B, Q, 4] in float32, as the model.

    Every backend runs behind this one wrapper, which checks the inputs, moves and casts them, and
    pads them at the bottom and right with masked pixels, as a batch pads its smaller images: up to
    ``spec.min_shape``'s height and width (a panorama resized to a short side under it still runs),
    and for the compiled backends to multiples of 32. Batches larger than ``spec.max_shape``, or
    smaller than its batch, and images taller or wider than it are refused with InputError, as is a
    mask on the CPU (as ``preprocess`` makes it) that marks every pixel of an image as padding. A mask
    already on the GPU is taken as it is: reading it back would stall every call.
    """

    def __init__(
        self, runner: nn.Module, *, backend: str, spec: CompileSpec, config: AnchorDETRConfig | None = None
    ):
        super().__init__()
        self.runner = runner
        self.config = config  # the model's, e.g. its num_classes
        self.backend = backend
        self.spec = spec
        self.padded = backends.RUNNERS[backend].PADDED

    @property
    def device(self) -> torch.device:
        return self.spec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.dtype

    @property
    def precision(self) -> str:
        return self.spec.precision

    def extra_repr(self) -> str:
        spec = self.spec
        return (
            f"backend={self.backend!r}, precision={spec.precision!r}, device={spec.device}, "
            f"shapes={spec.min_shape}..{spec.max_shape}"
        )

    @torch.no_grad()
    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        check_inputs(images, mask)
        batch, _, height, width = images.shape
        _, min_height, min_width = self.spec.min_shape
        if not self.spec.contains((batch, max(height, min_height), max(width, min_width))):
            self.spec.check_contains((batch, height, width))  # raises, naming the shape as passed
        height, width = max(height, min_height), max(width, min_width)
        # Blocking copies: from pinned memory a non-blocking one may still be reading the caller's
        # tensor after this returns, when the caller may refill it with the next frame.
        images = images.to(device=self.device, dtype=self.dtype)
        mask = torch.zeros_like(images[:, 0], dtype=torch.bool) if mask is None else mask.to(self.device)
        if self.padded:
            height, width = round_up(height), round_up(width)
        images, mask = pad_bottom_right(images, mask, height, width)
        out = self.runner(images, mask)
        return {key: out[key].float() for key in OUTPUTS}


def pad_bottom_right(images: Tensor, mask: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pad images [B, 3, H, W] with zeros and mask [B, H, W] with True (padding) at the bottom and
    right to ``height`` x ``width``; inputs of that size are returned as they are."""
    pad_h, pad_w = height - images.shape[2], width - images.shape[3]
    if not pad_h and not pad_w:
        return images, mask
    return F.pad(images, (0, pad_w, 0, pad_h)), F.pad(mask, (0, pad_w, 0, pad_h), value=True)


def pad_to_multiple(images: Tensor, mask: Tensor, multiple: int = SIZE_MULTIPLE) -> tuple[Tensor, Tensor]:
    """``pad_bottom_right`` up to the next multiples of ``multiple``."""
    return pad_bottom_right(
        images, mask, round_up(images.shape[2], multiple), round_up(images.shape[3], multiple)
    )


def compile(
    ckpt: Checkpoint | AnchorDETR,
    *,
    variant: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    min_shape: Shape = DEFAULT_MIN_SHAPE,
    opt_shape: Shape | None = None,
    max_shape: Shape = DEFAULT_MAX_SHAPE,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> CompiledAnchorDETR:
    """Compile an AnchorDETR (a checkpoint path, a loaded checkpoint dict, or an ``AnchorDETR``, which
    is copied, never changed) for inference.

    ``backend``: "tensorrt" (Torch-TensorRT engine with this package's plugins), "inductor"
    (torch.compile with the Triton ops and CUDA graphs), "eager" (the model itself), or "auto" (the
    first of these that runs here; the choice and its reason are logged). Shapes are (batch, height,
    width): one compiled module serves every input within [min_shape, max_shape] and is tuned for
    opt_shape (default (1, 800, 800), moved into the range where it lies outside); images smaller than min_shape's height or width are padded up to it with masked
    pixels. ``precision``: "fp16" (default on a GPU), "bf16" or "fp32" (default, and the only one, on
    the CPU). ``cache_dir`` keeps compiled artifacts so that a second process starts fast (the
    inductor backend's compiled function, the tensorrt backend's module); it also points Inductor and
    Triton at that folder for the rest of the process (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR),
    since they compile lazily and must find it later.
    """
    if isinstance(ckpt, AnchorDETR):
        check_module_device(ckpt)
    device = check_device(device) if device is not None else resolve_device(None)
    spec = CompileSpec(
        precision=precision or default_precision(device),
        device=device,
        min_shape=min_shape,
        opt_shape=opt_shape,
        max_shape=max_shape,
        cache_dir=cache_dir,
    )
    backend, reason = backends.choose_backend(backend, device, spec.precision)
    logger.info("compile: backend %r (%s)", backend, reason)
    if spec.cache_dir is not None:
        use_compile_cache(spec.cache_dir)
    model = model_from(ckpt, variant)
    if backend != "eager":
        model = fold_frozen_batchnorm(model)
    runner = backends.BACKENDS[backend].build(model, spec)
    return CompiledAnchorDETR(runner, backend=backend, spec=spec, config=model.config)
