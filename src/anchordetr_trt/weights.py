"""Deterministic random weights: a model to try the tools and measure speed with, without a download."""

import torch

from .config import variant_config
from .errors import check_seed
from .model import AnchorDETR, build_model


def random_model(variant: str = "r50-dc5", seed: int = 0) -> AnchorDETR:
    """An AnchorDETR ``variant`` with PyTorch's default initialization under ``torch.manual_seed(seed)``:
    the same weights on every machine, and no download. It is untrained: its detections are noise,
    nearly the same for every query and image."""
    config = variant_config(variant)
    seed = check_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config)
