"""``anchordetr_trt.compile``: a checkpoint in, a fast inference module out."""

import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import Checkpoint, load_model
from .devices import resolve_device
from .errors import BackendUnavailableError, InputError
from .export import Shape, check_shape_range
from .fold import fold_frozen_batchnorm
from .model import AnchorDETR, check_inputs

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "inductor", "eager")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CompiledAnchorDETR(nn.Module):
    """A compiled detector: ``forward(images [B, 3, H, W], mask [B, H, W] bool or None)`` returns the
    model's ``pred_logits`` / ``pred_boxes`` in float32. Inputs are moved to the module's device and
    precision; compiled backends reject shapes outside ``[min_shape, max_shape]`` with InputError."""

    def __init__(
        self,
        runner: nn.Module,
        *,
        backend: str,
        precision: str,
        device: torch.device,
        min_shape: Shape | None,
        max_shape: Shape | None,
    ):
        super().__init__()
        self.runner = runner
        self.backend = backend
        self.precision = precision
        self.device = device
        self.dtype = PRECISIONS[precision]
        self.min_shape = min_shape
        self.max_shape = max_shape

    def extra_repr(self) -> str:
        shapes = f", shapes={self.min_shape}..{self.max_shape}" if self.min_shape else ""
        return f"backend={self.backend!r}, precision={self.precision!r}, device={self.device}{shapes}"

    @torch.no_grad()
    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        check_inputs(images, mask)
        if self.min_shape is not None:
            self._check_range(images)
        images = images.to(device=self.device, dtype=self.dtype, non_blocking=True)
        if mask is None:
            mask = torch.zeros_like(images[:, 0], dtype=torch.bool)
        out = self.runner(images, mask.to(self.device, non_blocking=True))
        return {key: out[key].float() for key in ("pred_logits", "pred_boxes")}

    def _check_range(self, images: Tensor) -> None:
        shape = (images.shape[0], images.shape[2], images.shape[3])
        if all(lo <= s <= hi for lo, s, hi in zip(self.min_shape, shape, self.max_shape, strict=True)):
            return
        raise InputError(
            f"input (batch, height, width) = {shape} is outside the compiled range {self.min_shape}..{self.max_shape}: "
            "split the batch, resize the images (preprocess(min_size=..., max_size=...)), or compile with a wider "
            "min_shape/max_shape"
        )


def compile(
    ckpt: Checkpoint | AnchorDETR,
    *,
    variant: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    min_shape: Shape = (1, 320, 320),
    opt_shape: Shape = (1, 800, 800),
    max_shape: Shape = (8, 1344, 1344),
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> CompiledAnchorDETR:
    """Compile an AnchorDETR checkpoint (a path, a loaded checkpoint dict, or an ``AnchorDETR``) for inference.

    ``backend``: "tensorrt" (Torch-TensorRT engine with this package's plugins), "inductor"
    (torch.compile with the Triton ops and CUDA graphs), "eager" (the model itself), or "auto" (the
    first of these that runs here; the choice and its reason are logged). Shapes are (batch, height,
    width); compiled backends accept inputs within [min_shape, max_shape] and are tuned for opt_shape.
    ``precision``: "fp16" (default on a GPU), "bf16" or "fp32" (default, and the only one, on the CPU).
    ``cache_dir`` keeps compiled artifacts so that a second process starts fast.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    device = resolve_device(device)
    if precision is None:
        precision = "fp32" if device.type == "cpu" else "fp16"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    check_shape_range(min_shape, max_shape, opt_shape)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "device='cuda' was asked for but no CUDA GPU is visible: use device='cpu'"
        )
    backend = _choose_backend(backend, device)
    if device.type == "cpu" and precision != "fp32":
        raise BackendUnavailableError(
            f"precision={precision!r} is for GPUs; on the CPU use precision='fp32' (or run on a CUDA device)"
        )
    model = ckpt if isinstance(ckpt, AnchorDETR) else load_model(ckpt, variant=variant)
    model.eval().set_fused_ops(device.type == "cuda")
    if cache_dir is not None:
        _use_cache_dir(Path(cache_dir))

    shapes = {"min_shape": min_shape, "opt_shape": opt_shape, "max_shape": max_shape}
    if backend == "eager":
        runner = model.to(device=device, dtype=PRECISIONS[precision])
        return CompiledAnchorDETR(
            runner, backend=backend, precision=precision, device=device, min_shape=None, max_shape=None
        )
    model = fold_frozen_batchnorm(model)
    if backend == "inductor":
        from .backends.inductor import compile_inductor

        runner = compile_inductor(model, dtype=PRECISIONS[precision], device=device, **shapes)
    else:
        from .backends.tensorrt import compile_tensorrt

        runner = compile_tensorrt(model, precision=precision, device=device, cache_dir=cache_dir, **shapes)
    return CompiledAnchorDETR(
        runner, backend=backend, precision=precision, device=device, min_shape=min_shape, max_shape=max_shape
    )


def _choose_backend(backend: str, device: torch.device) -> str:
    from .backends.tensorrt import tensorrt_status

    trt_ok, trt_reason = tensorrt_status()
    if backend == "auto":
        if device.type == "cuda" and trt_ok:
            choice, why = "tensorrt", "Torch-TensorRT imports and the GPU is supported"
        elif device.type == "cuda":
            choice, why = "inductor", f"TensorRT is not usable ({trt_reason})"
        else:
            choice, why = "eager", "no CUDA device: TensorRT and Inductor need a GPU"
        logger.info("backend 'auto' chose %r: %s", choice, why)
        return choice
    if backend == "tensorrt" and not trt_ok:
        fallback = "inductor" if device.type == "cuda" else "eager"
        raise BackendUnavailableError(
            f"backend='tensorrt' cannot run here: {trt_reason}. Use backend={fallback!r}"
        )
    if backend in ("tensorrt", "inductor") and device.type != "cuda":
        raise BackendUnavailableError(
            f"backend={backend!r} needs a CUDA device; on the CPU use backend='eager'"
        )
    return backend


def _use_cache_dir(cache_dir: Path) -> None:
    # Inductor and Triton read these at compile time; an explicit user setting wins.
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir / "triton"))
