"""torch.compile (Inductor) backend: FP16, the Triton ops kept as opaque kernels, one CUDA graph per
shape bucket.

Shapes are bucketed so that a stream of varied images compiles a bounded number of graphs: the batch
rounds up to a power of two, height and width up to the next multiple of ``size_step`` (the
optimization shape and the maximum are buckets of their own, so they run unpadded). Padding adds
masked pixels and blank images whose outputs are dropped. Each bucket is compiled once, then captured
in a CUDA graph; a call copies its inputs into the graph's static buffers and replays it, which costs
a few microseconds of CPU instead of one launch per kernel.
"""

import bisect
import logging
import time

import torch
from torch import Tensor, nn

from ..export import Shape, example_inputs
from .cudnn_fusion import fuse_conv_epilogues

logger = logging.getLogger(__name__)


def size_buckets(low: int, opt: int, high: int, step: int) -> list[int]:
    """Sorted sizes that inputs in [low, high] are padded up to: multiples of ``step``, ``opt`` and ``high``."""
    multiples = range(-(-low // step) * step, high, step)
    return sorted({*multiples, opt, high})


def batch_buckets(low: int, opt: int, high: int) -> list[int]:
    powers = [2**i for i in range(high.bit_length()) if low <= 2**i < high]
    return sorted({*powers, opt, high})


class _CapturedGraph:
    """``fn`` on static input buffers of one shape, captured in a CUDA graph."""

    def __init__(self, fn, images: Tensor, mask: Tensor, pool: tuple):
        self.images, self.mask = images, mask
        side = torch.cuda.Stream(images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):  # compile, autotune and pick cuDNN algorithms outside the capture
            for _ in range(2):
                fn(images, mask)
        torch.cuda.current_stream(images.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = fn(images, mask)

    def __call__(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        batch, _, height, width = images.shape
        if images.shape != self.images.shape:  # pad: clear what the input does not cover
            self.images.zero_()
            self.mask.fill_(True)
            self.mask[batch:] = False  # blank filler images, unpadded; their outputs are dropped
        self.images[:batch, :, :height, :width].copy_(images)
        self.mask[:batch, :height, :width].copy_(mask)
        self.graph.replay()
        # The next replay overwrites the outputs: hand out copies.
        return {key: value[:batch].to(torch.float32, copy=True) for key, value in self.outputs.items()}


class BucketedCompiledModel(nn.Module):
    """A torch.compile'd model run through one captured CUDA graph per shape bucket."""

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
        self.compiled = torch.compile(model, dynamic=False, fullgraph=True)
        self.graphs: dict[Shape, _CapturedGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def bucket(self, shape: Shape) -> Shape:
        return tuple(
            sizes[bisect.bisect_left(sizes, s)] for sizes, s in zip(self.buckets, shape, strict=True)
        )

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        shape = self.bucket((images.shape[0], images.shape[2], images.shape[3]))
        graph = self.graphs.get(shape)
        if graph is None:
            graph = self.graphs[shape] = self._capture(shape, images.dtype)
        return graph(images, mask)

    def _capture(self, shape: Shape, dtype: torch.dtype) -> _CapturedGraph:
        start = time.perf_counter()
        images, mask = example_inputs(shape, self.model_device, dtype)
        images = images.contiguous(memory_format=torch.channels_last)
        limit = self.max_graphs + 8  # every bucket may compile once; never fall back to eager
        with (
            torch.no_grad(),
            torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=limit),
            torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False),
        ):
            graph = _CapturedGraph(self.compiled, images, mask, self.pool)
        logger.info("inductor: compiled and captured %s in %.1f s", shape, time.perf_counter() - start)
        return graph

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device


def compile_inductor(
    model: nn.Module,
    *,
    dtype: torch.dtype,
    device: torch.device,
    min_shape: Shape,
    opt_shape: Shape,
    max_shape: Shape,
) -> BucketedCompiledModel:
    """Compile ``model`` (an AnchorDETR whose frozen batch norms are folded) and capture the opt shape."""
    fuse_conv_epilogues(model.backbone.body)
    model = (
        model.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval().requires_grad_(False)
    )
    compiled = BucketedCompiledModel(model, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape)
    compiled(*example_inputs(opt_shape, device, dtype))
    return compiled
