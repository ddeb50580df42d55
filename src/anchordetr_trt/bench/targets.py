"""The benchmark's targets: speed bars for the default model at 800x800, set on an H100, which the
benchmark checks on its package backends' rows (``bench.json``'s ``targets``). They are the project's
goals for its own work, not a promise about any GPU: a check on another GPU (an H200, the same chip
with faster memory, included) is recorded with ``on_target_gpu`` false, as no verdict.
docs/performance.md says where the figures stand and what limits them."""

from dataclasses import asdict, dataclass

from ..config import DEFAULT_VARIANT
from .configs import BASELINES

VARIANT, SIZE, GPU = DEFAULT_VARIANT, (800, 800), "H100"


@dataclass(frozen=True)
class Bar:
    """At most ``limit`` ms median latency (``metric`` "latency") or at least ``limit`` img/s
    ("throughput"), for a package backend at ``precision`` and ``batch``; ``issue``: the tracker entry
    that set it (``anchordetr-trt bench`` names it)."""

    issue: int
    name: str
    precision: str
    batch: int
    metric: str
    limit: float


BARS = (
    Bar(8, "no regression at 800x800", "fp16", 1, "latency", 2.5),
    Bar(8, "no regression at 800x800", "fp16", 8, "throughput", 950.0),
    Bar(12, "close in on the hardware", "fp16", 1, "latency", 1.8),
    Bar(12, "close in on the hardware", "fp16", 8, "throughput", 1500.0),
)


def check_targets(results: list[dict], variant: str, gpu: str | None) -> dict:
    """Every bar of ``BARS`` checked on the package backends' rows of ``results`` whose configuration
    is the bar's (variant, size, precision, batch). ``on_target_gpu``: whether ``gpu`` (the measuring
    GPU's name, None for none) is the bars'."""
    checks = []
    if variant == VARIANT:
        for row in results:
            if row["status"] != "ok" or row["backend"] in BASELINES or (row["height"], row["width"]) != SIZE:
                continue
            for bar in BARS:
                if (bar.precision, bar.batch) != (row["precision"], row["batch"]):
                    continue
                if bar.metric == "latency":
                    metric, value = f"batch-{bar.batch} median latency (ms)", row["latency_ms"]["median"]
                    met = value <= bar.limit
                else:
                    metric, value = f"batch-{bar.batch} throughput (img/s)", row["throughput_img_s"]
                    met = value >= bar.limit
                checks.append({"issue": bar.issue, "bar": bar.name, "label": row["label"], "metric": metric,
                               "value": value, "target": bar.limit, "met": met})  # fmt: skip
    return {"variant": VARIANT, "size": list(SIZE), "gpu": GPU,
            "on_target_gpu": gpu is not None and GPU in gpu, "bars": [asdict(bar) for bar in BARS],
            "checks": checks}  # fmt: skip
