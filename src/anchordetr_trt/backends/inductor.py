"""The "inductor" backend: one ``torch.compile`` of the model for the whole shape range, and CUDA
graphs for the shapes that recur.

Compiled once, inside ``compile()`` (``build``). Dynamo traces the model with batch, height / 32 and width / 32
symbolic: inputs reach the compiled function as views [B, 3, H/32, 32, W/32, 32], so height and
width are known multiples of 32 and every size in the backbone is an exact expression of them
(nothing to guard on). The model is first rewritten without the ops whose tracing guards on batch 1
(``inductor_rewrites``), which would cost a second graph. Any padded shape in the spec's range then
runs without compiling; the custom ops' Triton kernels do not specialize on sizes either.

CUDA graphs where they pay. Batch 1 is launch bound (some 600 kernels), so a shape's second call
captures a CUDA graph of the compiled function and later calls replay it; a shape seen once runs the
compiled function directly, so that a stream of one-off shapes costs no captures. The graphs share
one memory pool and one static input buffer sized for the largest shape, and at most ``max_graphs``
are kept (least recently used first out): the memory held is bounded by the largest shape's
activations plus ``max_graphs`` graphs' small static outputs and executables, whatever the stream.
"""

import collections
import logging
import time
from collections.abc import Callable

import torch
import torch.fx.experimental._config as fx_config
from torch import Tensor, nn

from ..spec import SIZE_MULTIPLE, CompileSpec, Shape
from .inductor_rewrites import rewrite_for_inductor

logger = logging.getLogger(__name__)

PADDED = True
MAX_GRAPHS = 32
# cuDNN's autotuning times every algorithm of every convolution at each new shape (seconds per shape);
# its heuristics choose at once. Measured choice: see the README's speed section.
CUDNN_BENCHMARK = False


def status(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, "needs a CUDA GPU" + ("" if device.type == "cuda" else f" (device is {device})")
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed: pip install triton"
    return True, "torch.compile with the Triton ops and CUDA graphs, one compile for the shape range"


class _Unfolded(nn.Module):
    """``model`` on images [B, 3, h, 32, w, 32] and mask [B, h, 32, w, 32]: the 32s tell the tracer
    that height and width are multiples of 32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        batch, channels, rows, _, columns, _ = images.shape
        height, width = rows * SIZE_MULTIPLE, columns * SIZE_MULTIPLE
        images = images.reshape(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
        out = self.model(images, mask.reshape(batch, height, width))
        return {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}


def unfold(images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """images [B, 3, H, W], mask [B, H, W] (H, W multiples of 32) as the compiled function's views."""
    batch, channels, height, width = images.shape
    rows, columns = height // SIZE_MULTIPLE, width // SIZE_MULTIPLE
    return (
        images.contiguous().view(batch, channels, rows, SIZE_MULTIPLE, columns, SIZE_MULTIPLE),
        mask.contiguous().view(batch, rows, SIZE_MULTIPLE, columns, SIZE_MULTIPLE),
    )


class _CapturedGraph:
    """``fn(images [B, 3, H, W], mask [B, H, W])`` on static inputs of one shape, captured in a CUDA
    graph; ``replay`` copies inputs in and the outputs out (the next replay of any graph in the pool
    may overwrite them)."""

    def __init__(self, fn, images: Tensor, mask: Tensor, pool: tuple, warmup_stream: torch.cuda.Stream):
        self.images, self.mask = images, mask
        # Lazy initialization (cuDNN plans, cuBLAS workspaces) happens outside the capture, on one stream
        # for every capture: cuBLAS keeps a workspace per stream until the process ends.
        warmup_stream.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(warmup_stream):
            fn(images, mask)
        torch.cuda.current_stream(images.device).wait_stream(warmup_stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = fn(images, mask)

    def replay(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        self.images.copy_(images)
        self.mask.copy_(mask)
        self.graph.replay()
        return {key: value.clone() for key, value in self.outputs.items()}


class InductorRunner(nn.Module):
    """The compiled model for every padded shape of ``spec``'s range: ``forward(images [B, 3, H, W],
    mask [B, H, W])`` with H and W multiples of 32, in the spec's dtype and device."""

    def __init__(
        self,
        model: nn.Module,
        spec: CompileSpec,
        max_graphs: int = MAX_GRAPHS,
        compiler: Callable | None = None,
    ):
        super().__init__()
        self.model = model
        self.spec = spec
        self.max_graphs = max_graphs
        self.compiler = compiler or _compile_fx  # tests pass a compiler that only counts graphs
        self.compiles = 0  # Dynamo graphs compiled: one for the whole range
        self.compiled = torch.compile(_Unfolded(model), backend=self._compile, fullgraph=True, dynamic=False)
        self.graphs: collections.OrderedDict[Shape, _CapturedGraph] = collections.OrderedDict()
        self.seen: set[Shape] = set()
        self._capture_state: tuple | None = None  # made at the first capture

    def _compile(self, graph_module: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.compiles += 1
        if self.compiles > 1:
            logger.warning("inductor: compiling graph %d for the range (expected one)", self.compiles)
        return self.compiler(graph_module, example_inputs)

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        shape = (images.shape[0], images.shape[2], images.shape[3])
        graph = self.graphs.get(shape)
        if graph is not None:
            self.graphs.move_to_end(shape)
            return graph.replay(images, mask)
        if shape not in self.seen or self.max_graphs == 0:
            self.seen.add(shape)
            return self._call_padded(images, mask)
        return self._capture(shape).replay(images, mask)

    def _call_padded(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        images, mask = unfold(images, mask)
        _mark_dynamic(images, mask, self.spec)  # read only when Dynamo traces
        with (
            torch.no_grad(),
            fx_config.patch(backed_size_oblivious=True),
            torch.backends.cudnn.flags(enabled=True, benchmark=CUDNN_BENCHMARK, deterministic=False),
        ):
            return self.compiled(images, mask)

    def _capture(self, shape: Shape) -> _CapturedGraph:
        start = time.perf_counter()
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        if self._capture_state is None:
            (batch, height, width), spec = self.spec.padded_range[2], self.spec
            self._capture_state = (
                torch.empty(batch * 3 * height * width, dtype=spec.dtype, device=spec.device),
                torch.empty(batch * height * width, dtype=torch.bool, device=spec.device),
                torch.cuda.graph_pool_handle(),
                torch.cuda.Stream(spec.device),
            )
        static_images, static_mask, pool, warmup_stream = self._capture_state
        batch, height, width = shape
        images = static_images[: batch * 3 * height * width].view(batch, 3, height, width)
        mask = static_mask[: batch * height * width].view(batch, height, width)
        graph = self.graphs[shape] = _CapturedGraph(self._call_padded, images, mask, pool, warmup_stream)
        logger.info("inductor: captured a CUDA graph for %s in %.2f s", shape, time.perf_counter() - start)
        return graph


def _compile_fx(graph_module: torch.fx.GraphModule, example_inputs: list) -> Callable:
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(graph_module, example_inputs)


def _mark_dynamic(images: Tensor, mask: Tensor, spec: CompileSpec) -> None:
    """Mark the batch and block dimensions of ``unfold``'s views symbolic over ``spec``'s padded range."""
    low, _, high = spec.padded_range
    bounds = [
        (low[0], high[0]),
        *((lo // SIZE_MULTIPLE, hi // SIZE_MULTIPLE) for lo, hi in zip(low[1:], high[1:], strict=True)),
    ]
    for (lo, hi), image_dim, mask_dim in zip(bounds, (0, 2, 4), (0, 1, 3), strict=True):
        if lo < hi:
            torch._dynamo.mark_dynamic(images, image_dim, min=lo, max=hi)
            torch._dynamo.mark_dynamic(mask, mask_dim, min=lo, max=hi)


def build(model: nn.Module, spec: CompileSpec) -> InductorRunner:
    """Compile ``model`` (an AnchorDETR whose frozen batch norms are folded) for ``spec``'s range:
    one trace at the range's largest batch and the optimization shape's height and width, then the
    optimization shape's CUDA graph.

    Not traced at batch 1: Inductor then guards ``batch == 1`` while it lowers the graph, which breaks
    the one-graph range (measured on the H100, torch 2.11); traced at batch 8, the same graph served
    batches 1 to 8 over 1771 random shapes."""
    rewrite_for_inductor(model)
    model = model.to(device=spec.device, dtype=spec.dtype, memory_format=torch.channels_last)
    model = model.eval().requires_grad_(False).set_fused_ops(True)
    runner = InductorRunner(model, spec)
    start = time.perf_counter()
    from ..export import example_inputs

    opt, largest = spec.padded_range[1], spec.padded_range[2][0]
    runner(*example_inputs((largest, *opt[1:]), spec.device, spec.dtype))  # the one trace
    for _ in range(2):  # the optimization shape seen twice: its CUDA graph is captured
        runner(*example_inputs(opt, spec.device, spec.dtype))
    logger.info(
        "inductor: compiled for %s..%s in %.1f s", *spec.padded_range[::2], time.perf_counter() - start
    )
    return runner
