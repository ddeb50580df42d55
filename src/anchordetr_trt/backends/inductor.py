"""torch.compile (Inductor) backend: FP16, custom Triton ops kept opaque, CUDA graphs per shape bucket.

Shapes are bucketed so that a stream of varied images compiles a bounded number of graphs: batch
rounds up to a power of two, height and width up to the next multiple of ``size_step`` (the
optimization shape and the maximum are buckets of their own, so they run unpadded). Padding adds
masked pixels and blank images, whose outputs are dropped.
"""

import bisect
import logging
import time

import torch
from torch import Tensor, nn

from ..export import Shape

logger = logging.getLogger(__name__)


def size_buckets(low: int, opt: int, high: int, step: int) -> list[int]:
    """Sorted sizes that inputs in [low, high] are padded up to: multiples of ``step``, ``opt`` and ``high``."""
    multiples = range(-(-low // step) * step, high, step)
    return sorted({*multiples, opt, high})


def batch_buckets(low: int, opt: int, high: int) -> list[int]:
    powers = [2**i for i in range(high.bit_length()) if low <= 2**i < high]
    return sorted({*powers, opt, high})


class BucketedCompiledModel(nn.Module):
    """Calls a torch.compile'd model on inputs padded up to the nearest shape bucket."""

    def __init__(
        self, model: nn.Module, *, min_shape: Shape, opt_shape: Shape, max_shape: Shape, size_step: int = 128
    ):
        super().__init__()
        self.model = model
        self.buckets = (
            batch_buckets(min_shape[0], opt_shape[0], max_shape[0]),
            size_buckets(min_shape[1], opt_shape[1], max_shape[1], size_step),
            size_buckets(min_shape[2], opt_shape[2], max_shape[2], size_step),
        )
        self.max_graphs = len(self.buckets[0]) * len(self.buckets[1]) * len(self.buckets[2])
        options = {"triton.cudagraphs": True, "freezing": True}
        self.compiled = torch.compile(model, dynamic=False, fullgraph=True, options=options)

    def bucket(self, shape: Shape) -> Shape:
        return tuple(
            sizes[bisect.bisect_left(sizes, s)] for sizes, s in zip(self.buckets, shape, strict=True)
        )

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        batch, _, height, width = images.shape
        padded_batch, padded_height, padded_width = self.bucket((batch, height, width))
        if (padded_batch, padded_height, padded_width) != (batch, height, width):
            images, mask = _pad(images, mask, padded_batch, padded_height, padded_width)
        images = images.contiguous(memory_format=torch.channels_last)
        limit = self.max_graphs + 8
        with (
            torch.no_grad(),
            torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=limit),
        ):
            out = self.compiled(images, mask)
        # CUDA-graph outputs are overwritten by the next replay: copy them out.
        return {key: value[:batch].to(torch.float32, copy=True) for key, value in out.items()}


def _pad(images: Tensor, mask: Tensor, batch: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    padded = images.new_zeros((batch, 3, height, width))
    padded_mask = torch.ones((batch, height, width), dtype=torch.bool, device=mask.device)
    padded[: images.shape[0], :, : images.shape[2], : images.shape[3]] = images
    padded_mask[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    padded_mask[mask.shape[0] :] = False  # blank filler images: unpadded, their outputs are dropped
    return padded, padded_mask


def compile_inductor(
    model: nn.Module,
    *,
    dtype: torch.dtype,
    device: torch.device,
    min_shape: Shape,
    opt_shape: Shape,
    max_shape: Shape,
) -> BucketedCompiledModel:
    """Compile ``model`` (an AnchorDETR with frozen norms already folded) and warm up the opt shape."""
    from ..export import example_inputs

    model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    compiled = BucketedCompiledModel(model, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape)
    start = time.perf_counter()
    for _ in range(3):  # first call compiles; the next ones record and replay the CUDA graph
        compiled(*example_inputs(opt_shape, device, dtype))
    torch.cuda.synchronize(device)
    logger.info("inductor: compiled %s in %.1f s", opt_shape, time.perf_counter() - start)
    return compiled
