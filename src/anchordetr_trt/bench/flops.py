"""The model's FLOPs per image, by part, and the FLOP rate of the device on a large matmul: the two
sides of the achieved TFLOP/s in the benchmark's report.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward on the meta device
(no memory, no arithmetic: a count takes about a second at any size). A multiply-add is 2 FLOPs. The
count covers the convolutions, matrix products and attention, the work of the tensor cores;
elementwise ops, norms, softmax and the mean of the keys are not counted (they are bound by memory,
and under 1% of the FLOPs at 800x800).

The count runs the reference ops (``set_fused_ops(False)``), the same math as the fused custom ops
and the definition their kernels are tested against, in ops that FlopCounterMode knows. The custom
ops are opaque to it: on the fused path ``rcda_aggregate`` (the column and row scores and the
aggregation, four batched matmuls in the reference) would count as nothing; the position terms and
scale it adds to its queries are elementwise, not counted. Formulas registered for the custom ops
would be a second statement of each kernel's arithmetic, to keep in step with the kernels by hand.

Some of the decoder's work is the same whatever the batch, and counted once a forward: its queries
(``Transformer.decoder_queries``, about 3.5 GFLOP) and the first layer's self-attention on them
(about 1.3 GFLOP). The inductor backend computes the queries once, in ``compile()``: its decoder
rates count work it does not repeat, most at batch 1 (about an eighth of the decoder's FLOPs there).
"""

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ..config import AnchorDETRConfig
from ..model import AnchorDETR, build_model
from ..spec import PRECISIONS, Shape
from . import timing
from .parts import PARTS, split_forward

COUNTED = (
    "torch.utils.flop_counter.FlopCounterMode over one forward (meta device, reference ops); "
    "multiply-add = 2 FLOPs; convolutions, matmuls and attention only; at each row's shape as given "
    "(padded backends compute on sizes rounded up to 32, so their rates count the useful FLOPs)"
)
# Matmul size of the peak measurement: large enough to saturate a GPU's tensor cores; on the CPU
# (a smoke run of the harness) small enough to take a fraction of a second.
PEAK_MATMUL_SIZE = {"cuda": 8192, "cpu": 512}


def count_flops(model: AnchorDETR, images: Tensor, mask: Tensor | None) -> dict[str, int]:
    """FLOPs of one forward of ``model`` on ``images`` [B, 3, H, W] and ``mask`` [B, H, W], by part
    (``parts.PARTS``), on whatever op path and device the model has."""
    counts = {}
    with torch.no_grad():
        for part in split_forward(model, images, mask):
            with FlopCounterMode(display=False) as counter:
                part.call(*part.args)
            counts[part.name] = counter.get_total_flops()
    return counts


def flops_per_image(config: AnchorDETRConfig, shape: Shape) -> dict[str, float]:
    """FLOPs per image of a model of ``config`` on a batch of ``shape`` (batch, height, width): by
    part, and ``total``. The queries and the first decoder layer's self-attention are computed once
    per batch, so a larger batch costs a little less per image."""
    with torch.device("meta"):
        model = build_model(config).set_fused_ops(False)
        batch, height, width = shape
        images = torch.empty(batch, 3, height, width)
        mask = torch.zeros(batch, height, width, dtype=torch.bool)
    per_image = {name: flops / batch for name, flops in count_flops(model, images, mask).items()}
    return per_image | {"total": sum(per_image.values())}


def peak_precision(precision: str, device: torch.device) -> str:
    """Which measured peak a row at ``precision`` is held to: its own, except fp32 on a GPU where
    cuDNN may use TF32 (PyTorch's default, as the fp32 baseline runs): its convolutions, most of its
    FLOPs, then run on the TF32 tensor cores, so it is held to the TF32 peak."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return precision


def peak_tflops(
    device: torch.device, precision: str, *, size: int | None = None, warmup: int = 5, iters: int = 20
) -> dict:
    """The FLOP rate of ``device`` on ``torch.mm`` of two ``size`` x ``size`` matrices at ``precision``
    (fp16, bf16, tf32, or fp32 as this process runs fp32 matmuls), over ``iters`` calls back to back:
    ``tflops`` and ``how`` it was measured."""
    size = size or PEAK_MATMUL_SIZE[device.type]
    matmul_precision = torch.get_float32_matmul_precision()
    dtype = torch.float32 if precision == "tf32" else PRECISIONS[precision]
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    try:
        if precision == "tf32":
            torch.set_float32_matmul_precision("high")
        for _ in range(warmup):
            torch.mm(a, b)
        seconds = timing.seconds_back_to_back(lambda: torch.mm(a, b), device, iters)
        used = torch.get_float32_matmul_precision()
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
    setting = f", float32_matmul_precision {used!r}" if dtype == torch.float32 else ""
    return {
        "tflops": 2 * size**3 * iters / seconds / 1e12,
        "how": f"torch.mm of two {size}x{size} {precision} matrices{setting}, {iters} calls back to back "
        f"after {warmup}, {'CUDA events' if device.type == 'cuda' else 'time.perf_counter'}",
    }


def flops_report(
    config: AnchorDETRConfig, shapes: list[Shape], precisions: list[str], device: torch.device
) -> dict:
    """The ``flops`` section of bench.json before any row is measured: what is counted, the parts, GFLOPs
    per image at each shape, and which peak each precision is held to. The run adds the peaks it
    measures (``peak_tflops``) and ``report.summarize`` the rows' achieved rates."""
    peak_for = {precision: peak_precision(precision, device) for precision in sorted(set(precisions))}
    return {
        "counted": COUNTED,
        "parts": PARTS,
        "per_image": [
            {
                "batch": batch,
                "height": height,
                "width": width,
                "gflops": {
                    name: flops / 1e9
                    for name, flops in flops_per_image(config, (batch, height, width)).items()
                },
            }
            for batch, height, width in sorted(set(shapes))
        ],
        "peak_for": peak_for,
        "peak_tflops": {},
    }
