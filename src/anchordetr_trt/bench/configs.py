"""What the benchmark measures: a backend at one precision, batch size and input size.

Baselines: ``eager-fp32``, the official-style model (plain PyTorch ops, unfolded batch norm, FP32,
eager) and ``torch-compile``, ``torch.compile(mode="reduce-overhead")`` of that same model called under
FP16 autocast with channels_last weights and inputs. Package backends (``eager``, ``inductor``,
``tensorrt``) come from ``compile(...)``.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..spec import Shape, covering_range, default_precision

BASELINES = ("eager-fp32", "torch-compile")
PACKAGE_BACKENDS = ("eager", "inductor", "tensorrt")
BACKEND_LABELS = {
    "eager-fp32": "official-style eager fp32",
    "torch-compile": "torch.compile reduce-overhead (fp16 autocast)",
}
_BASELINE_PRECISION = {"eager-fp32": "fp32", "torch-compile": "fp16"}
# Batch sizes measured by default: on a GPU up to 32 (the throughput of large batches); on the CPU, a
# smoke run of the harness, small ones.
DEFAULT_BATCHES = {"cuda": (1, 8, 32), "cpu": (1, 8)}


@dataclass(frozen=True)
class BenchConfig:
    """One measurement: a backend at one precision, batch size and input size."""

    backend: str  # a baseline ("eager-fp32", "torch-compile") or a compile() backend
    batch: int
    height: int
    width: int
    precision: str = "fp16"  # package backends only: the baselines have fixed precisions

    @property
    def shape(self) -> Shape:
        return (self.batch, self.height, self.width)

    @property
    def label(self) -> str:
        return BACKEND_LABELS.get(self.backend, f"anchordetr_trt {self.backend} {self.precision}")


def default_configs(
    device: torch.device,
    *,
    sizes: Sequence[tuple[int, int]] = ((800, 800),),
    batches: Sequence[int] | None = None,
    backends: Sequence[str] | None = None,
    precision: str | None = None,
) -> list[BenchConfig]:
    """Every (backend, size, batch) combination. Default backends: on a GPU both baselines, inductor and
    tensorrt (reported as skipped where it cannot run); on the CPU the eager baseline and eager.
    Default precision of the package backends: ``compile``'s default on ``device``; default batches:
    ``DEFAULT_BATCHES`` of the device's type."""
    on_gpu = device.type == "cuda"
    batches = batches or DEFAULT_BATCHES["cuda" if on_gpu else "cpu"]
    backends = backends or (
        ("eager-fp32", "torch-compile", "inductor", "tensorrt") if on_gpu else ("eager-fp32", "eager")
    )
    precision = precision or default_precision(device)
    for backend in backends:
        if backend not in BASELINES + PACKAGE_BACKENDS:
            raise ValueError(
                f"unknown benchmark backend {backend!r}: choose from {', '.join(BASELINES + PACKAGE_BACKENDS)}"
            )
    return [
        BenchConfig(backend, batch, height, width, _BASELINE_PRECISION.get(backend, precision))
        for backend in backends
        for height, width in sizes
        for batch in batches
    ]


def shape_range(group: Sequence[BenchConfig]) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) shapes that one compiled module needs to serve every config of ``group``: the
    elementwise minimum and maximum, tuned for the first config's shape."""
    low, high = covering_range([config.shape for config in group])
    return low, group[0].shape, high
