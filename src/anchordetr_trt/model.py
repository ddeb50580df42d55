"""AnchorDETR: backbone, input projection, transformer; plain tensors in, prediction dict out."""

import math

import torch
from torch import Tensor, nn

from .backbone import Backbone, downsample_mask
from .config import NORM_GROUPS, AnchorDETRConfig
from .devices import check_tensor_device
from .errors import InputError
from .transformer import Encoded, Transformer

INPUTS = ("images", "mask")  # forward's arguments, as the ONNX and the engine name them
OUTPUTS = ("pred_logits", "pred_boxes")  # the keys of every detector's output, compiled or not


class AnchorDETR(nn.Module):
    """Anchor DETR (Wang et al., AAAI 2022) for inference on padded image batches.

    ``forward(images [B, 3, H, W] float, mask [B, H, W] bool or None)`` with mask True on padded
    pixels returns ``pred_logits`` [B, Q, classes] and ``pred_boxes`` [B, Q, 4] (cx, cy, w, h in
    [0, 1] of the unpadded image); ``aux=True`` adds ``aux_outputs``, the same for decoder layers 1..L-1.
    """

    def __init__(self, config: AnchorDETRConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone, config.dilation)
        self.input_proj = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(Backbone.num_channels, config.hidden_dim, kernel_size=1),
                    nn.GroupNorm(NORM_GROUPS, config.hidden_dim),
                )
            ]
        )
        self.transformer = Transformer(config)

    def set_fused_ops(self, enabled: bool | None) -> "AnchorDETR":
        """Choose the op path: the ``torch.ops.anchordetr`` custom ops (True), their plain PyTorch
        reference (False), or, the default of every model however it was made (``build_model``,
        ``load_model``), None: the custom ops for inputs on CUDA and the reference elsewhere. So the
        same weights on the same device run the same code."""
        for module in self.modules():
            if hasattr(module, "fused_ops"):
                module.fused_ops = enabled
        return self

    def set_precision(self, dtype: torch.dtype) -> "AnchorDETR":
        """Cast the model to ``dtype`` except the anchor points and the prediction heads, which stay
        float32: rounded to bfloat16, the boxes alone would lie on a grid of 1/256 of the image, and the
        anchors they are decoded from as well (docs/accuracy.md measures both rules). Images go in
        ``dtype``. Drops the decoder's precomputed queries, if a backend made them."""
        self.transformer.precomputed_queries = None  # computed in the former dtype (precompute_queries)
        kept = {name: getattr(self.transformer, name) for name in ("position", "class_embed", "bbox_embed")}
        for name in kept:  # out of the model while it is cast, so their float32 values are not rounded
            setattr(self.transformer, name, None)
        try:
            self.to(dtype)
        finally:
            for name, module in kept.items():
                setattr(self.transformer, name, module.float())
        return self

    def forward(self, images: Tensor, mask: Tensor | None = None, *, aux: bool = False) -> dict:
        check_inputs(images, mask, weight=self.input_proj[0][0].weight)
        logits, boxes = self.transformer.decode(self.encode(self.backbone(images), mask), aux=aux)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if aux:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        return out

    def encode(self, features: Tensor, mask: Tensor | None) -> Encoded:
        """Input projection and encoder: backbone features [B, 2048, h, w] and the images' mask
        [B, H, W] (or None: no padding) -> the encoder's output, which ``transformer.decode`` reads."""
        if mask is None:
            feature_mask = torch.zeros_like(features[:, 0], dtype=torch.bool)
        else:
            feature_mask = downsample_mask(mask, features.shape[-2:])
        return self.transformer.encode(self.input_proj[0](features), feature_mask)


def check_inputs(images: Tensor, mask: Tensor | None, weight: Tensor | None = None) -> None:
    """Raise InputError for images or masks the model cannot take: the plain model and compiled
    modules alike. Static properties only while tracing (a symbolic size is not compared); a mask on
    the CPU must leave some pixel of each image unpadded. With ``weight``, a parameter of the model,
    the images must also have its dtype and device: the plain model makes no hidden copies."""
    if not isinstance(images, Tensor):
        raise InputError(
            f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}: use preprocess()"
        )
    if (
        weight is None
    ):  # a model on "meta" takes meta inputs (FLOP counts); the others' device is checked below
        check_tensor_device(images, "images")
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(
            f"images must have shape [B, 3, H, W], got {list(images.shape)}: batch CHW images, e.g. with preprocess()"
        )
    if not images.is_floating_point():
        raise InputError(f"images must be a normalized float tensor, got {images.dtype}: use preprocess()")
    sizes = dict(zip(("batch size", "height", "width"), (images.shape[0], *images.shape[2:]), strict=True))
    if all(isinstance(size, int) for size in sizes.values()) and 0 in sizes.values():
        empty = " and ".join(name for name, size in sizes.items() if size == 0)
        raise InputError(
            f"images has {empty} 0 (shape {list(images.shape)}): pass at least one "
            "image of at least 1x1 pixels"
        )
    if weight is not None and images.dtype != weight.dtype:
        raise InputError(
            f"images are {images.dtype} but the model's weights are {weight.dtype}: pass "
            f"images.to({weight.dtype}) or convert the model (model.set_precision({images.dtype})); "
            "compile() does the cast for you"
        )
    if weight is not None and images.device != weight.device:
        raise InputError(
            f"images are on {images.device} but the model is on {weight.device}: pass "
            f"images.to('{weight.device}') or move the model (model.to('{images.device}'))"
        )
    _check_pixels(images)
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise InputError(f"mask must be a bool tensor [B, H, W] (True = padding), got {kind}")
    if mask.dim() != 3:
        raise InputError(f"mask must have shape [B, H, W], got {list(mask.shape)}")
    if mask.device != images.device:
        raise InputError(
            f"mask is on {mask.device} but images are on {images.device}: move both to one device"
        )
    if mask.shape != (images.shape[0], *images.shape[2:]):
        raise InputError(
            f"mask shape {list(mask.shape)} does not match images {list(images.shape)}: expected [B, H, W]"
        )
    if mask.device.type == "cpu" and not _tracing(mask):
        _check_unpadded_pixels(mask)


# Normalized [0, 1] pixels lie in [-2.12, 2.64] (ImageNet's mean and std); past this, pixels are not
# normalized: 0..255 values, most likely. Far enough out for random test images (randn) to pass.
UNNORMALIZED_PIXEL = 10.0


def _check_pixels(images: Tensor) -> None:
    """InputError for NaN or infinite pixels, which would make every output NaN, and for pixels past
    +-UNNORMALIZED_PIXEL, which would give wrong detections; where the images are on the CPU (reading
    GPU images back would stall every call)."""
    if images.device.type != "cpu" or _tracing(images):
        return
    low, high = (value.item() for value in torch.aminmax(images))  # one pass: NaN and inf propagate
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(
            "images have NaN or infinite pixels: fix or drop those images (preprocess refuses them)"
        )
    if max(-low, high) > UNNORMALIZED_PIXEL:
        raise InputError(
            f"images have pixels from {low:.4g} to {high:.4g}, where normalized ones lie in [-2.12, 2.64]: "
            "normalize them as preprocess() does (x / 255, then ImageNet's mean and std)"
        )


def _check_unpadded_pixels(mask: Tensor) -> None:
    """InputError naming the images of ``mask`` [B, H, W] (True = padding) with no unpadded pixel: a
    mask of the inverse convention, most likely. Checked where the mask is on the CPU (as preprocess
    makes it), before any copy: reading a GPU mask back would stall every call."""
    empty = mask.flatten(1).all(dim=1).nonzero().flatten().tolist() if mask.numel() else []
    if empty:
        raise InputError(
            f"mask marks every pixel of image {', '.join(map(str, empty))} as padding (True = padding): "
            "pass mask=None for unpadded images, or ~mask if True marks the valid pixels"
        )


def _tracing(tensor: Tensor) -> bool:
    """Whether ``tensor`` stands for values being traced (torch.compile, torch.export): no values to read."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return True
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(tensor)


def build_model(config: AnchorDETRConfig) -> AnchorDETR:
    """An AnchorDETR with freshly initialized weights, in eval mode."""
    return AnchorDETR(config).eval()
