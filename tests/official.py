"""Official-implementation fixtures (see fixtures/README.md) and the weights they were made with."""

import json
import math
import zlib
from pathlib import Path

import torch
from torch import Tensor

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_variants() -> list[str]:
    """Variants with a committed official fixture, e.g. ['r50-dc5', 'r50-c5']."""
    return sorted(
        p.name.removeprefix("official_").removesuffix("_seed0.pt")
        for p in FIXTURES.glob("official_*_seed0.pt")
    )


def load_fixture(variant: str) -> dict:
    return torch.load(FIXTURES / f"official_{variant}_seed0.pt", weights_only=False)


def fixture_state_dict(variant: str, seed: int = 0) -> dict[str, Tensor]:
    """The deterministic weights the fixture of ``variant`` was computed with."""
    keys = json.loads((FIXTURES / f"official_{variant.split('-')[0]}.keys.json").read_text())["keys"]
    return {name: seeded_tensor(name, shape, seed) for name, shape in keys}


def seeded_tensor(name: str, shape: list[int], seed: int) -> Tensor:
    """A tensor that depends only on (name, shape, seed), plausible for the parameter it stands for."""
    generator = torch.Generator().manual_seed((zlib.crc32(name.encode()) * 1000003 + seed) % (2**62))
    shape = tuple(shape)
    if name.endswith("running_var"):
        return 1.0 + 0.1 * torch.rand(shape, generator=generator)
    if name.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=generator)
    if name.endswith("position.weight"):  # anchor points inside the image
        return 0.05 + 0.9 * torch.rand(shape, generator=generator)
    if len(shape) == 1 and name.endswith("weight"):  # norm scales
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
    return 0.02 * torch.randn(shape, generator=generator)  # biases
