"""Loading official AnchorDETR checkpoints with strict, explained validation."""

import argparse
import copy
import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import AnchorDETRConfig, config_from_args, variant_config, variant_name
from .devices import check_device
from .errors import CheckpointError, first_line, listed
from .hub import OFFICIAL_CHECKPOINTS, fetch, is_remote, looks_like_html
from .model import AnchorDETR, build_model

logger = logging.getLogger(__name__)

Checkpoint = str | os.PathLike | Mapping[str, Any]
_MAX_LISTED = 8
_PICKLE_PROTOCOL_OPCODE = b"\x80"


def load_model(
    ckpt: Checkpoint,
    *,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    download_dir: str | os.PathLike | None = None,
) -> AnchorDETR:
    """AnchorDETR in eval mode with the weights of ``ckpt``.

    ``ckpt`` is a path, a released model's name ("R50-C5", "R50-DC5", "R101-C5", "R101-DC5", any
    case; a file of that name wins), an http(s) URL, or an already loaded object: ``{"model":
    state_dict, "args": ...}`` as released, or a bare state dict. Names and URLs are downloaded once
    into ``download_dir`` (default: $ANCHORDETR_CACHE, else ``torch.hub.get_dir()/checkpoints/anchordetr``).
    Backbone and dilation come from the checkpoint's ``args``; without them ``variant`` ("r50-c5",
    "r50-dc5", "r101-c5", "r101-dc5") is required, because C5 and DC5 have the same weights; a released
    model's name implies its variant. Every key and shape is checked before anything is loaded.
    ``device``: "cpu", "cuda" or "cuda:N". The op path follows the device (``AnchorDETR.set_fused_ops``).
    """
    device = check_device(device)
    if variant is not None:
        variant_config(variant)  # an unknown variant stops here, before any download
    if is_remote(ckpt) and not Path(ckpt).exists():  # a file of that name wins
        if variant is None and ckpt.lower() in OFFICIAL_CHECKPOINTS:
            variant = ckpt.lower()
        ckpt = fetch(ckpt, _read, download_dir=download_dir)
    elif isinstance(ckpt, str | os.PathLike):
        ckpt = _read(ckpt)
    state_dict, args = _unpack(ckpt)
    config = resolve_config(state_dict, args, variant)
    model = build_model(config)
    _check_state_dict(model, state_dict, config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def resolve_config(state_dict: Mapping[str, Tensor], args: Any, variant: str | None) -> AnchorDETRConfig:
    """The model config: ``variant`` if given, else the checkpoint's ``args``; checked against the weights.
    With ``variant``, args that cannot tell the variant are passed over (their errors ask for it)."""
    if variant is not None:
        config = variant_config(variant)
        try:
            from_args = config_from_args(args) if args is not None else None
        except CheckpointError as err:
            if err.argument != "variant":
                raise
            from_args = None
        if from_args is not None and from_args != config:
            logger.warning(
                "the variant passed (%s) overrides the checkpoint's training arguments (%s)",
                variant,
                variant_name(from_args),
            )
    elif args is not None:
        config = config_from_args(args)
    else:
        raise CheckpointError(
            "checkpoint has no 'args' to tell C5 from DC5 (their weights are identical): "
            "pass variant='r50-c5', 'r50-dc5', 'r101-c5' or 'r101-dc5'"
        )
    depth = _resnet_depth(state_dict)
    if depth is not None and f"resnet{depth}" != config.backbone:
        raise CheckpointError(
            f"checkpoint weights are a resnet{depth} backbone but the {variant_name(config)} config expects "
            f"{config.backbone}: pass variant='r{depth}-{'dc5' if config.dilation else 'c5'}'"
        )
    return config


def model_from(ckpt: Checkpoint | AnchorDETR, variant: str | None = None) -> AnchorDETR:
    """A copy of ``ckpt`` in eval mode if it is an AnchorDETR (never changed; ``variant``, if given,
    must name its config), else ``load_model(ckpt, variant=variant)``."""
    if not isinstance(ckpt, AnchorDETR):
        return load_model(ckpt, variant=variant)
    if variant is not None and variant_config(variant) != ckpt.config:
        raise CheckpointError(
            f"variant={variant!r} but the model given is {variant_name(ckpt.config)}: a model's own config "
            "decides; leave variant out, or load the checkpoint with it (load_model(ckpt, variant=...))"
        )
    return copy.deepcopy(ckpt).eval()


def _read(path: str | os.PathLike) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        problem = f"{path} is a folder" if path.is_dir() else f"checkpoint file not found: {path}"
        raise CheckpointError(
            f"{problem}: pass a checkpoint file, an http(s) URL, or a released "
            f"model's name ({', '.join(name.upper() for name in OFFICIAL_CHECKPOINTS)})"
        )
    data = path.read_bytes()
    # torch.save writes a zip archive, or with _use_new_zipfile_serialization=False a pickle stream.
    if not zipfile.is_zipfile(io.BytesIO(data)) and not data.startswith(_PICKLE_PROTOCOL_OPCODE):
        if data[:2] == b"PK":
            raise CheckpointError(f"{path} is truncated or corrupt (broken zip archive): download it again")
        if looks_like_html(data[:512]):
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint but a web page (HTML): the link served a page instead "
                "of the file; download it in a browser and pass its path"
            )
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (expected a file written by torch.save)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if pickled:  # torch.save(model): a pickled object, which only unpickling code could rebuild
            raise CheckpointError(
                f"{path} holds a pickled {pickled[1]} object (saved with torch.save(model)?), not weights: it "
                "is not loaded, since unpickling it could run any code; save model.state_dict() instead"
            ) from err
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({first_line(err)}): it is truncated, corrupt, or holds "
            "objects other than tensors and training arguments; download or export it again"
        ) from err


def _unpack(obj: Any) -> tuple[dict[str, Tensor], Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint holds a {type(obj).__name__}, not a dict: expected {{'model': state_dict, 'args': ...}} "
            "or a state dict"
        )
    if "model" in obj and isinstance(obj["model"], Mapping):
        state_dict, args = obj["model"], obj.get("args")
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        state_dict, args = obj, None
    else:
        raise CheckpointError(
            "checkpoint is a dict without a 'model' state dict and is not a state dict itself "
            f"(keys: {listed(list(obj), _MAX_LISTED)}): pass the file saved by the AnchorDETR training script"
        )
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"state dict entries are not tensors: {listed(bad, _MAX_LISTED)}")
    cleaned = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue  # batch-norm counters of the frozen backbone carry nothing
        cleaned[key.removeprefix("module.")] = value
    return cleaned, args


def _resnet_depth(state_dict: Mapping[str, Tensor]) -> int | None:
    blocks = {int(k.split(".")[3]) for k in state_dict if k.startswith("backbone.body.layer3.")}
    return {6: 50, 23: 101}.get(len(blocks)) if blocks else None


def _check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], config: AnchorDETRConfig) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({listed(missing, _MAX_LISTED)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({listed(unexpected, _MAX_LISTED)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches ({listed(wrong_shape, _MAX_LISTED)})")
    if problems:
        raise CheckpointError(
            f"checkpoint does not match AnchorDETR {variant_name(config)} with {config.num_classes} classes: "
            + "; ".join(problems)
            + ". Check the variant (r50/r101, c5/dc5) and that this is an AnchorDETR COCO detector "
            "(91 classes, single feature level, RCDA attention)"
        )
    meta = [k for k, v in state_dict.items() if v.device.type == "meta"]
    if meta:
        raise CheckpointError(
            f"checkpoint has no values (on the meta device) in {listed(meta, _MAX_LISTED)}: it was saved from a "
            "model built without weights; save the state dict of a model that holds them"
        )
    # A tensor of another kind would be cast by load_state_dict: an int8 tensor of a quantized model
    # (without its scale) to logits off by orders of magnitude, a complex one to its real part.
    not_float = [
        f"{k} ({str(state_dict[k].dtype).removeprefix('torch.')})"
        for k, v in expected.items()
        if v.is_floating_point() and not state_dict[k].is_floating_point()
    ]
    if not_float:
        raise CheckpointError(
            f"checkpoint values are not floating point in {listed(not_float, _MAX_LISTED)}, where the model "
            "has float weights: a quantized or converted checkpoint? Pass the float (fp32 or fp16) weights"
        )
    non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise CheckpointError(
            f"checkpoint has NaN or infinite values in {listed(non_finite, _MAX_LISTED)}: it is corrupt"
        )
    negative = [k for k, v in state_dict.items() if k.endswith("running_var") and (v < 0).any()]
    if negative:  # a variance: its square root would be NaN in every output
        raise CheckpointError(
            f"checkpoint has negative batch-norm variances in {listed(negative, _MAX_LISTED)}: it is corrupt"
        )
