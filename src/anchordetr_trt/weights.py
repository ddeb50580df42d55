"""Model weights without a download: deterministic random weights, and the one rule "the checkpoint if
given, else random weights" of the tools that run without a checkpoint."""

import torch

from .checkpoint import Checkpoint, load_model
from .config import DEFAULT_VARIANT, variant_config
from .errors import check_seed
from .model import AnchorDETR, build_model


def random_model(variant: str = DEFAULT_VARIANT, seed: int = 0) -> AnchorDETR:
    """An AnchorDETR ``variant`` with PyTorch's default initialization under ``torch.manual_seed(seed)``:
    the same weights on every machine, and no download. It is untrained: its detections are noise,
    nearly the same for every query and image."""
    config = variant_config(variant)
    seed = check_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config)


def load_or_random(ckpt: Checkpoint | None, *, variant: str | None = None, seed: int = 0) -> AnchorDETR:
    """``load_model(ckpt, variant=variant)``, or for ``ckpt`` None ``random_model`` of ``variant``
    (default ``DEFAULT_VARIANT``) and ``seed``."""
    if ckpt is None:
        return random_model(variant or DEFAULT_VARIANT, seed)
    return load_model(ckpt, variant=variant)
