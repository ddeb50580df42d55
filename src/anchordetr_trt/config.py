"""Model configuration: a small dataclass and the four released variants."""

import argparse
from dataclasses import dataclass, replace
from typing import Any

from .errors import CheckpointError, InputError

BACKBONES = ("resnet50", "resnet101")
NORM_GROUPS = 32  # GroupNorm groups of the input projection: hidden_dim must be a multiple


@dataclass(frozen=True)
class AnchorDETRConfig:
    """Hyper-parameters of an AnchorDETR (defaults: the paper's R50-DC5 model); checked on creation
    (InputError names the field and the values it takes)."""

    backbone: str = "resnet50"  # "resnet50" or "resnet101"
    dilation: bool = True  # DC5: the last ResNet stage dilated instead of strided
    hidden_dim: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 1024
    num_query_position: int = 300  # anchor points
    num_query_pattern: int = 3  # patterns per anchor point
    num_classes: int = 91  # COCO category ids 0..90

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise InputError(
                f"backbone={self.backbone!r} is not supported: choose one of {', '.join(BACKBONES)}"
            )
        if not isinstance(self.dilation, bool):
            raise InputError(f"dilation must be True (DC5) or False (C5), got {self.dilation!r}")
        minimums = {"num_encoder_layers": 0, "num_decoder_layers": 1}
        for name in ("hidden_dim", "num_heads", "num_encoder_layers", "num_decoder_layers", "dim_feedforward",
                     "num_query_position", "num_query_pattern", "num_classes"):  # fmt: skip
            value, low = getattr(self, name), minimums.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.hidden_dim % NORM_GROUPS or self.hidden_dim % self.num_heads:
            raise InputError(
                f"hidden_dim={self.hidden_dim} must be a multiple of {NORM_GROUPS} (GroupNorm groups) and of "
                f"num_heads={self.num_heads}, e.g. 256 (the released models)"
            )

    @property
    def num_queries(self) -> int:
        return self.num_query_position * self.num_query_pattern

    @property
    def stride(self) -> int:
        return 16 if self.dilation else 32


VARIANTS: dict[str, AnchorDETRConfig] = {
    "r50-c5": AnchorDETRConfig(backbone="resnet50", dilation=False),
    "r50-dc5": AnchorDETRConfig(backbone="resnet50", dilation=True),
    "r101-c5": AnchorDETRConfig(backbone="resnet101", dilation=False),
    "r101-dc5": AnchorDETRConfig(backbone="resnet101", dilation=True),
}
DEFAULT_VARIANT = "r50-dc5"  # the variant of random weights and of the benchmark, unless one is named


def variant_config(variant: str) -> AnchorDETRConfig:
    """The config of ``variant`` ("r50-c5", "r50-dc5", "r101-c5", "r101-dc5"; any case, as release names)."""
    try:
        return VARIANTS[variant.strip().lower()]
    except (KeyError, AttributeError):
        raise CheckpointError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}") from None


def variant_name(config: AnchorDETRConfig) -> str:
    """The variant name of a config, e.g. 'r50-dc5' (a config off the four variants gets 'custom')."""
    base = replace(config, backbone=VARIANTS["r50-c5"].backbone, dilation=False)
    if base != VARIANTS["r50-c5"] or config.backbone not in ("resnet50", "resnet101"):
        return "custom"
    return f"r{config.backbone.removeprefix('resnet')}-{'dc5' if config.dilation else 'c5'}"


# Training-script argument -> config field, for the `args` stored in released checkpoints.
_ARG_FIELDS = {
    "backbone": "backbone",
    "dilation": "dilation",
    "hidden_dim": "hidden_dim",
    "nheads": "num_heads",
    "enc_layers": "num_encoder_layers",
    "dec_layers": "num_decoder_layers",
    "dim_feedforward": "dim_feedforward",
    "num_query_position": "num_query_position",
    "num_query_pattern": "num_query_pattern",
}


def config_from_args(args: Any) -> AnchorDETRConfig:
    """Config from the training arguments saved in an official checkpoint (argparse.Namespace or dict)."""
    if isinstance(args, dict):
        values = dict(args)
    elif isinstance(args, argparse.Namespace):
        values = vars(args)
    else:
        raise CheckpointError(
            f"checkpoint 'args' is a {type(args).__name__}, not the training script's arguments "
            "(argparse.Namespace or dict): pass variant=...",
            argument="variant",
        )
    unsupported = {
        "num_feature_levels": (values.get("num_feature_levels", 1), 1),
        "attention_type": (values.get("attention_type", "RCDA"), "RCDA"),
        "spatial_prior": (values.get("spatial_prior", "learned"), "learned"),
        "masks": (values.get("masks", False), False),
    }
    for name, (got, supported) in unsupported.items():
        if got != supported:
            raise CheckpointError(
                f"checkpoint was trained with {name}={got!r}; anchordetr_trt supports {name}={supported!r} "
                "only (the released single-level RCDA detectors)"
            )
    if "dilation" not in values:  # C5 and DC5 have the same weights: nothing else tells them apart
        raise CheckpointError(
            "checkpoint args have no 'dilation' to tell C5 from DC5: pass variant=...", argument="variant"
        )
    fields = {field: values[arg] for arg, field in _ARG_FIELDS.items() if arg in values}
    fields["dilation"] = _as_bool(fields["dilation"], "dilation")
    try:
        return AnchorDETRConfig(**fields)
    except InputError as error:
        raise CheckpointError(
            f"checkpoint args describe a model anchordetr_trt cannot build ({error}): pass variant=...",
            argument="variant",
        ) from None


def _as_bool(value: Any, name: str) -> bool:
    # The official `--dilation` flag has no type, so a command-line value arrives as a string.
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, bool | int):
        return bool(value)
    raise CheckpointError(
        f"checkpoint args have {name}={value!r}, not a boolean: pass variant=...", argument="variant"
    )
