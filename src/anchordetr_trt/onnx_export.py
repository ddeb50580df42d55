"""ONNX export of the whole model for TensorRT (trtexec, ``build_engine``), DeepStream or Triton.

One file, opset 18, weights inside: inputs ``images`` [B, 3, H, W] (``precision``'s dtype) and
``mask`` [B, H, W] bool (True = padding), outputs ``pred_logits`` [B, Q, classes] and ``pred_boxes``
[B, Q, 4] in float32, with batch, height and width dynamic over the range (``export.trace_plan``).
H and W must be multiples of 32: callers pad at the bottom and right with masked pixels, as
``CompiledAnchorDETR`` does. The model runs its reference ops (``set_fused_ops(False)``), which lower
to standard ONNX (LayerNormalization, Softmax, MatMul, Where, ...) that TensorRT maps to native
layers; its frozen batch norms are folded into the convolutions; it is cast as
``AnchorDETR.set_precision`` casts it (anchor points and heads stay float32). The conventions are
written into the file's ``metadata_props`` (``METADATA_KEYS``).
"""

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from . import __version__
from .cache import check_replaceable, write_whole
from .checkpoint import Checkpoint, model_from
from .config import variant_name
from .errors import InputError
from .export import example_inputs, trace_plan, tracing
from .fold import fold_frozen_batchnorm
from .model import INPUTS, OUTPUTS, AnchorDETR
from .spec import PRECISIONS, SIZE_MULTIPLE, Shape, padded_shape
from .transforms import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

OPSET = 18
PRODUCER = "anchordetr-trt"  # the file's producer_name: how the CLI knows a file it may replace
CONTENT_DIGEST = "anchordetr_trt_sha256"  # metadata: the file's digest, without this entry
# TensorRT-RTX has no FP16 builder flag (its networks are strongly typed, as the ONNX's dtypes say),
# and bf16 weights would round the boxes' grid (see AnchorDETR.set_precision): two precisions.
ONNX_PRECISIONS = ("fp16", "fp32")
METADATA_KEYS = (
    "variant",
    "precision",
    "padding_multiple",
    "normalization",
    "inputs",
    "outputs",
    "min_shape",
    "opt_shape",
    "max_shape",
)


class _Outputs(nn.Module):
    """The model with its output dict as the (pred_logits, pred_boxes) pair an ONNX graph returns."""

    def __init__(self, model: AnchorDETR):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images, mask)
        return tuple(out[key] for key in OUTPUTS)


def export_onnx(
    ckpt_or_model: Checkpoint | AnchorDETR,
    path: str | os.PathLike,
    *,
    precision: str = "fp16",
    min_shape: Shape = (1, 320, 320),
    opt_shape: Shape = (1, 800, 800),
    max_shape: Shape = (8, 1344, 1344),
    variant: str | None = None,
) -> Path:
    """Write the ONNX file of an AnchorDETR (a checkpoint as ``load_model`` takes it, with
    ``variant`` where it has no training arguments, or a model, which is copied, never changed) to
    ``path`` and return the path.

    ``precision``: "fp16" or "fp32", the dtype of ``images`` and of the network (heads and anchor
    points stay float32; outputs are float32). Shapes are (batch, height, width): the file accepts
    every batch in [min, max] and every height and width that is a multiple of 32 in [min, max]
    rounded up to 32; ``opt_shape`` is recorded for the engine's profile and traced at. The file is
    written whole or not at all; a file already at ``path`` is replaced only if this function wrote it
    (InputError otherwise, before any work).
    """
    if precision not in ONNX_PRECISIONS:
        raise InputError(
            f"precision={precision!r} cannot be exported to ONNX: choose 'fp16' or 'fp32' "
            "(TensorRT takes FP16 from the ONNX's own dtypes)",
            argument="precision",
        )
    dynamic_shapes, example = trace_plan(min_shape, max_shape, opt_shape)
    path = Path(path)
    check_replaceable(path, written_by_us, f"path={str(path)!r}")
    model = model_from(ckpt_or_model, variant)
    model = (
        fold_frozen_batchnorm(model.cpu().eval()).set_precision(PRECISIONS[precision]).set_fused_ops(False)
    )
    images, mask = example_inputs(example, "cpu", PRECISIONS[precision])
    logger.info(
        "onnx: exporting %s %s for %s..%s", variant_name(model.config), precision, min_shape, max_shape
    )
    with tracing(), warnings.catch_warnings():
        # images and mask share their Dims: the exporter says, per axis, that it names them once.
        warnings.filterwarnings("ignore", message="# The axis name: .* will not be used")
        program = torch.onnx.export(
            _Outputs(model).eval(),
            (images, mask),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    program.model.producer_name = PRODUCER
    program.model.producer_version = __version__
    program.model.metadata_props.update(
        metadata(
            variant_name(model.config), precision, (min_shape, opt_shape, max_shape), model.config.num_queries
        )
    )
    # One file, the weights inside (not as external data beside it, which torch 2.11 writes by default),
    # with the digest that tells it from an edited copy (``written_by_us``).
    import onnx_ir as ir  # torch.onnx's dynamo exporter needs it: installed with the onnx extra

    proto = ir.serde.serialize_model(program.model)
    proto.metadata_props.add(key=CONTENT_DIGEST, value=hashlib.sha256(proto.SerializeToString()).hexdigest())
    write_whole(path, lambda partial: partial.write_bytes(proto.SerializeToString()))
    return path


def metadata(
    variant: str, precision: str, shapes: tuple[Shape, Shape, Shape], num_queries: int
) -> dict[str, str]:
    """The ONNX file's metadata_props: the conventions a caller needs to feed it and read its outputs."""
    low, opt, high = (padded_shape(tuple(shape)) for shape in shapes)
    return {
        "variant": variant,
        "precision": precision,
        "padding_multiple": str(SIZE_MULTIPLE),
        "normalization": json.dumps(
            {"color": "RGB", "scale": "x / 255", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        ),
        "inputs": (
            f"images [B, 3, H, W] {precision}, normalized; mask [B, H, W] bool, True = padding; H and W "
            f"multiples of {SIZE_MULTIPLE}, images padded at the bottom and right"
        ),
        "outputs": (
            f"pred_logits [B, {num_queries}, classes] float32 (scores = sigmoid, classes = COCO category "
            f"ids); pred_boxes [B, {num_queries}, 4] float32 (cx, cy, w, h in [0, 1] of the unpadded image)"
        ),
        "min_shape": json.dumps(low),
        "opt_shape": json.dumps(opt),
        "max_shape": json.dumps(high),
    }


def written_by_us(path: Path) -> bool:
    """Whether the ONNX file at ``path`` is as ``export_onnx`` wrote it: its producer_name, and its
    content digest (metadata ``CONTENT_DIGEST``: the sha256 of the model serialized without that entry),
    which an edit saved with onnx.save (keeping the producer_name) no longer matches."""
    model = _read(path)
    if model is None or model.producer_name != PRODUCER:
        return False
    entries = [i for i, prop in enumerate(model.metadata_props) if prop.key == CONTENT_DIGEST]
    if len(entries) != 1:
        return False
    recorded = model.metadata_props[entries[0]].value
    del model.metadata_props[entries[0]]
    return hashlib.sha256(model.SerializeToString()).hexdigest() == recorded


def exported_range(path: Path) -> tuple[Shape, Shape] | None:
    """(min, max) (batch, height, width) the ONNX file at ``path`` was exported for, from its
    metadata_props; None where it has none (not written by export_onnx) or cannot be read."""
    model = _read(path)
    if model is None:
        return None
    props = {p.key: p.value for p in model.metadata_props}
    try:
        return tuple(json.loads(props["min_shape"])), tuple(json.loads(props["max_shape"]))
    except (KeyError, ValueError, TypeError):
        return None


def _read(path: Path):
    """The ONNX ModelProto at ``path`` without its external data, or None: not ONNX, unreadable, or
    the ``onnx`` package is not installed (TensorRT's parser does not need it)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx's decode errors have no common type
        logger.debug("onnx: cannot read %s (%s: %s)", path, type(error).__name__, error)
        return None
