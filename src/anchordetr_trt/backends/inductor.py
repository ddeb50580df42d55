"""The "inductor" backend: one compile of the model for the whole shape range, kept on disk, and CUDA
graphs for the shapes that recur.

Compiled once, inside ``compile()`` (``build``). Dynamo traces the model with batch, height / 32 and width / 32
symbolic: inputs reach the compiled function as views [B, 3, H/32, 32, W/32, 32], so height and
width are known multiples of 32 and every size in the backbone is an exact expression of them
(nothing to guard on). The model is first rewritten without the ops whose tracing guards on batch 1
(``inductor_rewrites``), which would cost a second graph. Any padded shape in the spec's range then
runs without compiling; the custom ops' Triton kernels take sizes at run time, and the few variants
their block sizes make (by feature-map height or width; rcda_aggregate's query block also by batch and GPU)
are compiled in ``compile()`` (``warm.warm_kernels``).

Kept on disk. The trace goes through Dynamo's precompile (``torch.compile(...).aot_compile``): the
compiled function, its guards and Inductor's code are saved in the spec's ``cache_dir``
(``precompiled/``), and a second process loads them instead of tracing and compiling again (Inductor's
own caches alone leave Dynamo's trace to redo; docs/design.md). The file's name is a hash of everything
the function depends on: the code a trace reaches, torch, triton, Python, the GPU and its index, torch's
global settings that Dynamo guards (thread count, cuBLAS TF32 and reduced-precision flags, autocast),
Inductor's settings, the model's configuration, the precision and the range. The weights are not in it:
the function takes them from the model at each call, with what ``compile()`` computed of them
(``PrecomputedQueries``). Each uncaptured call runs the first function whose guards accept its inputs;
if none does, the range is compiled again when the global settings have changed since, else a function
is compiled for the shape alone, with a warning (past ``MAX_FUNCTIONS``, the model runs uncompiled). A
captured shape replays its CUDA graph whatever the settings.

CUDA graphs where they pay. Batch 1 is launch bound (some 260 kernels), so a shape's second call
captures a CUDA graph of the compiled function and later calls replay it; a shape seen once runs the
compiled function directly, so that a stream of one-off shapes costs no captures. The graphs share
one memory pool and one static input buffer sized for the largest shape, and at most ``max_graphs``
are kept (least recently used first out): the memory held is bounded by the largest shape's
activations plus ``max_graphs`` graphs' small static outputs and executables, whatever the stream.
Sharing them, calls take turns: from several threads, one at a time; on several CUDA streams, a
replay waits on the GPU for the previous one to finish with the static inputs and the pool. A shape
whose capture fails (out of memory, say) runs uncaptured from then on, with one warning.
"""

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.fx.experimental._config as fx_config
from torch import Tensor, nn

from ..cache import source_digest, write_whole
from ..environment import installed_version
from ..spec import SIZE_MULTIPLE, CompileSpec, Shape
from .inductor_rewrites import precompute_queries, rewrite_for_inductor, rewrite_heads
from .warm import warm_kernels

logger = logging.getLogger(__name__)

PADDED = True
MAX_GRAPHS = 32
MAX_FUNCTIONS = 8  # compiled functions of one runner: one for the range; more say that settings change
# cuDNN's autotuning times every algorithm of every convolution at each new shape (seconds per shape);
# its heuristics choose at once, and autotuning gained nothing on the backbone (docs/performance.md).
CUDNN_BENCHMARK = False
# Inductor's settings for the range's compile. combo_kernels (off by default in torch 2.11) fuses
# independent small kernels, such as the decoder's weight concatenations and the attention's glue,
# into shared launches: at 800x800 on an H100 a batch-1 call takes 262 launches instead of 310 and
# 1.76 ms instead of 1.85, outputs unchanged (docs/transformer_performance.md). Not taken:
# coordinate-descent tuning and programmatic dependent launch (no gain beyond the noise).
INDUCTOR_OPTIONS = {"combo_kernels": True}
# The package's op namespaces are this one and those it prefixes ("anchordetr_cudnn", ...).
OP_NAMESPACE = "anchordetr"


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
        images = fold(images)
        out = self.model(images, mask.reshape(images.shape[0], *images.shape[2:]))
        return {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}


def fold(images: Tensor) -> Tensor:
    """``unfold``'s images [B, 3, H/32, 32, W/32, 32] as the model takes them: [B, 3, H, W], a view
    (the stem's ``four_channels`` makes the layout cuDNN reads)."""
    batch, channels, rows, _, columns, _ = images.shape
    height, width = rows * SIZE_MULTIPLE, columns * SIZE_MULTIPLE
    return images.reshape(batch, channels, height, width)


def unfold(images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """images [B, 3, H, W], mask [B, H, W] (H, W multiples of 32) as the compiled function's views."""
    batch, channels, height, width = images.shape
    rows, columns = height // SIZE_MULTIPLE, width // SIZE_MULTIPLE
    return (
        images.contiguous().view(batch, channels, rows, SIZE_MULTIPLE, columns, SIZE_MULTIPLE),
        mask.contiguous().view(batch, rows, SIZE_MULTIPLE, columns, SIZE_MULTIPLE),
    )


@dataclasses.dataclass
class _GraphPool:
    """What a runner's captured graphs share: static inputs sized for the range's largest shape, a
    memory pool, the streams of the warm-up and of the capture (on the model's GPU, whichever GPU is
    current), and ``idle``, recorded once a replay's outputs are copied out: the next replay, on any
    stream, waits for it before it writes the static inputs and runs in the pool."""

    images: Tensor
    mask: Tensor
    handle: tuple
    warmup_stream: torch.cuda.Stream
    capture_stream: torch.cuda.Stream
    idle: torch.cuda.Event

    @classmethod
    def for_range(cls, spec: CompileSpec) -> "_GraphPool":
        batch, height, width = spec.padded_range[2]
        return cls(
            torch.empty(batch * 3 * height * width, dtype=spec.dtype, device=spec.device),
            torch.empty(batch * height * width, dtype=torch.bool, device=spec.device),
            torch.cuda.graph_pool_handle(),
            torch.cuda.Stream(spec.device),
            torch.cuda.Stream(spec.device),
            torch.cuda.Event(),
        )


class _CapturedGraph:
    """``fn(images [B, 3, H, W], mask [B, H, W])`` of one ``shape``, captured in a CUDA graph on
    ``pool``'s static inputs; ``replay`` copies inputs in and the outputs out."""

    def __init__(self, fn, shape: Shape, pool: _GraphPool):
        batch, height, width = shape
        self.pool = pool
        self.images = pool.images[: batch * 3 * height * width].view(batch, 3, height, width)
        self.mask = pool.mask[: batch * height * width].view(batch, height, width)
        current = torch.cuda.current_stream(self.images.device)
        # Lazy initialization (cuDNN plans, cuBLAS workspaces) happens outside the capture, on one stream
        # for every capture: cuBLAS keeps a workspace per stream until the process ends.
        pool.warmup_stream.wait_stream(current)
        with torch.cuda.stream(pool.warmup_stream):
            fn(self.images, self.mask)
        current.wait_stream(pool.warmup_stream)
        self.graph = torch.cuda.CUDAGraph()
        # An explicit capture stream: torch's default one lives on the GPU current at a process's first
        # capture, which need not be this model's.
        with (
            torch.cuda.device(self.images.device),
            torch.cuda.graph(self.graph, pool=pool.handle, stream=pool.capture_stream),
        ):
            self.outputs = fn(self.images, self.mask)

    def replay(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        stream = torch.cuda.current_stream(self.images.device)
        stream.wait_event(self.pool.idle)  # a replay on another stream may still read the static inputs
        self.images.copy_(images)
        self.mask.copy_(mask)
        self.graph.replay()
        outputs = {key: value.clone() for key, value in self.outputs.items()}
        self.pool.idle.record(stream)
        return outputs


class InductorRunner(nn.Module):
    """The compiled model for every padded shape of ``spec``'s range: ``forward(images [B, 3, H, W],
    mask [B, H, W])`` with H and W multiples of 32, in the spec's dtype and device.

    ``compiler`` is Dynamo's backend: Inductor unless given (tests pass one that returns the graph as
    it is, as a ``SerializableCallable``, the kind of result a precompile needs)."""

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
        self.compiler = compiler
        self.unfolded = _Unfolded(model)
        self.compiles = 0  # functions compiled in this process: one for the whole range, none if loaded
        self.loaded = False  # whether the function came from spec.cache_dir
        self.build_seconds: dict[str, float] = {}  # build()'s phases, in order: seconds each
        # Compiled functions, tried in order: one, unless inputs fail its guards (a warning says so).
        self.functions: list[Callable] = []
        self._range_states: set[str] = set()  # global settings the range was compiled or loaded under
        self._range_function: Callable | None = None  # the latest of them
        self.graphs: collections.OrderedDict[Shape, _CapturedGraph] = collections.OrderedDict()
        self.seen: set[Shape] = set()
        self.uncapturable: set[Shape] = set()  # shapes whose capture failed: they run uncaptured
        self._graph_pool: _GraphPool | None = None  # made at the first capture
        # One call at a time: the captured graphs share their static inputs, and a capture may not
        # overlap another thread's call.
        self._lock = threading.Lock()

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        shape = (images.shape[0], images.shape[2], images.shape[3])
        with self._lock:
            graph = self.graphs.get(shape)
            if graph is not None:
                self.graphs.move_to_end(shape)
                return graph.replay(images, mask)
            if shape not in self.seen or self.max_graphs == 0 or shape in self.uncapturable:
                self.seen.add(shape)
                return self._call_padded(images, mask)
            graph = self._capture(shape)
            if graph is None:
                return self._call_padded(images, mask)
            return graph.replay(images, mask)

    def _call_padded(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        images, mask = unfold(images, mask)
        with (
            torch.no_grad(),
            torch.backends.cudnn.flags(enabled=True, benchmark=CUDNN_BENCHMARK, deterministic=False),
        ):
            return self._function_for(images, mask)(self.unfolded, images, mask)

    def _function_for(self, images: Tensor, mask: Tensor) -> Callable:
        """The first compiled function whose guards accept ``images`` and ``mask`` (unfolded), compiling
        one if none does: the range's function if none was compiled under the global settings of now
        (thread count, cuBLAS TF32 and reduced-precision flags, autocast: Dynamo guards them), else one
        for this shape alone. Past ``MAX_FUNCTIONS``, the model runs uncompiled for such inputs."""
        for function in self.functions:
            if function.guard_check(self.unfolded, images, mask):
                return function
        if len(self.functions) < MAX_FUNCTIONS and _global_state() not in self._range_states:
            function = self.compile_range()
            if function.guard_check(self.unfolded, images, mask):
                return function
        reason = _rejection(self._range_function, self.unfolded, images, mask)
        if len(self.functions) < MAX_FUNCTIONS:
            logger.warning(
                "inductor: the compiled range's guards reject inputs %s (%s); compiling a function for "
                "this shape alone (one more compile, as long as the first)",
                tuple(images.shape),
                reason,
            )
            return self._compile(images, mask, symbolic=False)
        logger.warning(
            "inductor: %d compiled functions and none accepts inputs %s (%s); running the model "
            "uncompiled for them (keep torch's global settings as they were at compile(), or compile again)",
            len(self.functions),
            tuple(images.shape),
            reason,
        )
        return _uncompiled

    def compile_range(self) -> Callable:
        """Trace and compile the range's function at the range's largest batch and the optimization
        shape's height and width, and save it in ``spec.cache_dir``.

        Not traced at batch 1: Inductor then guards ``batch == 1`` while it lowers the graph, which
        breaks the one-graph range (torch 2.11); traced at the largest batch, the same graph serves
        batch 1 too (docs/design.md)."""
        from ..export import example_inputs

        (_, height, width), largest = self.spec.padded_range[1], self.spec.padded_range[2][0]
        images, mask = unfold(*example_inputs((largest, height, width), self.spec.device, self.spec.dtype))
        state = _global_state()  # what the function's guards will compare, read before tracing
        function = self._range_function = self._compile(images, mask, symbolic=True)
        self._range_states.add(state)
        self._save(function, state)
        return function

    def _compile(self, images: Tensor, mask: Tensor, symbolic: bool) -> Callable:
        """Trace and compile the model on ``images`` and ``mask`` (unfolded): symbolic over the range,
        or for their shape alone."""
        self.compiles += 1
        if self.compiler is None:
            register_fallbacks()
        if symbolic:
            images, mask = images.view(images.shape), mask.view(mask.shape)  # marked for the trace only
            _mark_dynamic(images, mask, self.spec)
        with torch._dynamo.config.patch(enable_aot_compile=True):  # off by default in torch 2.11
            compiled = torch.compile(
                self.unfolded.forward,
                backend=self.compiler or "inductor",
                fullgraph=True,
                dynamic=False,
                options={"guard_filter_fn": _saved_guards, **({} if self.compiler else INDUCTOR_OPTIONS)},
            )
        with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
            function = compiled.aot_compile(((images, mask), {}))
        self.functions.append(function)
        return function

    def _saved_path(self, state: str) -> Path | None:
        """Where the range's function compiled under global settings ``state`` is saved, if anywhere."""
        if self.spec.cache_dir is None:
            return None
        key = _precompile_key(self.model, self.spec, self.compiler, state)
        return self.spec.cache_dir / "precompiled" / f"inductor-{key}.bin"

    def load(self) -> bool:
        """Load the range's function from ``spec.cache_dir`` if a process saved it there; True if loaded."""
        state = _global_state()
        path = self._saved_path(state)
        if path is None or not path.is_file():
            return False
        start = time.perf_counter()
        try:
            with path.open("rb") as file:
                function = torch.compiler.load_compiled_function(
                    file, f_globals=_Unfolded.forward.__globals__
                )
        except Exception as error:  # truncated, or written by other code: compiling again is the remedy
            logger.warning(
                "inductor: cannot load %s (%s: %s); compiling instead", path, type(error).__name__, error
            )
            return False
        self.functions.append(function)
        self._range_function = function
        self._range_states.add(state)  # the file's name says it was compiled under them
        self.loaded = True
        logger.info(
            "inductor: loaded the compiled range from %s in %.1f s", path, time.perf_counter() - start
        )
        return True

    def _save(self, function: Callable, state: str) -> None:
        path = self._saved_path(state)
        if path is None:
            return
        try:  # whole or absent: another process may be loading it
            write_whole(path, lambda partial: function.save_compiled_function(str(partial)))
        except Exception as error:  # the function still runs in this process; the next one compiles again
            logger.warning(
                "inductor: cannot save the compiled range to %s (%s: %s)", path, type(error).__name__, error
            )

    def _capture(self, shape: Shape) -> _CapturedGraph | None:
        """``shape``'s CUDA graph, kept in place of the least recently used one once it is captured; None,
        with a warning, if the capture fails (say, out of memory): the shape then runs uncaptured."""
        start = time.perf_counter()
        try:
            if self._graph_pool is None:
                self._graph_pool = _GraphPool.for_range(self.spec)
            graph = _CapturedGraph(self._call_padded, shape, self._graph_pool)
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            self.uncapturable.add(shape)
            logger.warning(
                "inductor: cannot capture a CUDA graph for %s (%s: %s); running that shape uncaptured",
                shape,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
            return None
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        self.graphs[shape] = graph
        logger.info("inductor: captured a CUDA graph for %s in %.2f s", shape, time.perf_counter() - start)
        return graph


def _uncompiled(unfolded: nn.Module, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
    return unfolded(images, mask)


def _rejection(function, *args) -> str:
    """Why ``function``'s guards reject ``args``: the message its call raises before it runs anything."""
    try:
        function(*args)
    except RuntimeError as error:
        return str(error)
    return "no guard failed"


def _global_state() -> str:
    """The global settings Dynamo's global-state guard compares (grad mode here: no_grad, as at every
    call), serialized."""
    with torch.no_grad():
        return torch._C._dynamo.guards.GlobalStateGuard().__getstate__()


def _saved_guards(guards: list) -> list[bool]:
    """Dynamo's guard filter for a saved function: its default (no guards on globals, or of the kinds it
    cannot save), and none on functions' default arguments, which torch 2.11 saves but cannot load
    (DefaultsSource). Those defaults are this package's code, which the file name's hash covers."""
    from torch._dynamo.guards import CheckFunctionManager

    unsaved = CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES
    return [
        not (guard.is_global or guard.guard_type in unsaved or "defaults__" in guard.name) for guard in guards
    ]


def _precompile_key(model: nn.Module, spec: CompileSpec, compiler: Callable | None, state: str) -> str:
    """A hash of everything a saved function depends on, weights excepted (they are its inputs), under
    global settings ``state``."""
    device = spec.device
    if device.type == "cuda" and device.index is None:  # "cuda" is the current GPU, which tensor guards name
        device = torch.device("cuda", torch.cuda.current_device())
    parts = {
        "source": source_digest(),
        "torch": torch.__version__,
        "triton": installed_version("triton"),
        "python": list(sys.version_info[:2]),  # the function's bytecode is saved
        # The device index too: tensor guards check it, so a function of cuda:0 rejects cuda:1's inputs.
        "gpu": [str(device), torch.cuda.get_device_name(device), *torch.cuda.get_device_capability(device)]
        if device.type == "cuda"
        else device.type,
        "global_state": state,
        "config": dataclasses.asdict(model.config),
        "precision": spec.precision,
        "range": spec.padded_range,
        "compiler": "inductor" if compiler is None else getattr(compiler, "__qualname__", repr(compiler)),
        # Inductor's settings (torch._inductor.config) shape the code it generates.
        "inductor_config": repr(sorted(torch._inductor.config.save_config_portable().items()))
        if compiler is None
        else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def register_fallbacks() -> None:
    """Register every op of the package's namespaces with Inductor as a fallback (a kernel the
    compiled code calls), with the layout constraint Inductor's implicit fallback would give it (its
    tag, else torch's default for custom ops at this call). Ops Inductor lowers or decomposes already
    are left alone; a second call registers only the ops defined since.

    Inductor makes an implicit fallback of an op it has no lowering for at the op's first node, and
    torch 2.11 first formats a log message of that node's inputs (``operator_str``, built even when
    the log is off). Their IR prints every node upstream as a tree, which grows exponentially with the
    residual connections before it: an op first met deep in the decoder kept a compile of the model
    in that formatting for minutes. Registered here, no op takes that path."""
    from torch._inductor import lowering
    from torch._library.utils import get_layout_constraint_tag

    for op in package_ops():
        if op not in lowering.lowerings and op not in lowering.decompositions:
            tag = get_layout_constraint_tag(op, with_default=True)
            lowering.make_fallback(op, layout_constraint=lowering.tag_to_layout_constraint(tag), warn=False)


def package_ops() -> list[torch._ops.OpOverload]:
    """Every overload of the ops defined so far in the package's namespaces."""
    ops = []
    for schema in torch._C._jit_get_all_schemas():
        namespace, _, name = schema.name.partition("::")
        if is_package_namespace(namespace):
            packet = getattr(getattr(torch.ops, namespace), name)
            ops.append(getattr(packet, schema.overload_name or "default"))
    return ops


def is_package_namespace(namespace: str) -> bool:
    """Whether ops of ``namespace`` are the package's: ``anchordetr`` and ``anchordetr_*``."""
    return namespace == OP_NAMESPACE or namespace.startswith(OP_NAMESPACE + "_")


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


@contextlib.contextmanager
def _phase(runner: InductorRunner, name: str) -> Iterator[None]:
    """Time the block as ``runner.build_seconds[name]`` (synchronized: the GPU's work counts)."""
    start = time.perf_counter()
    yield
    if runner.spec.device.type == "cuda":
        torch.cuda.synchronize(runner.spec.device)
    runner.build_seconds[name] = time.perf_counter() - start


def prepare(model: nn.Module, spec: CompileSpec, *, fused_ops: bool = True) -> nn.Module:
    """``model`` (an AnchorDETR whose frozen batch norms are folded) as the backend runs it, in place:
    rewritten for Inductor (``inductor_rewrites``), on ``spec``'s device and channels_last, in its
    precision, in eval mode without gradients, the decoder's queries precomputed. ``fused_ops=False``
    keeps the reference ops (tests trace those on the CPU, where the fused ones would run their
    kernels in Triton's interpreter)."""
    rewrite_for_inductor(model)
    model = model.to(device=spec.device, memory_format=torch.channels_last).set_precision(spec.dtype)
    model = rewrite_heads(model.eval().requires_grad_(False).set_fused_ops(fused_ops), spec.dtype)
    return precompute_queries(model)


def build(model: nn.Module, spec: CompileSpec) -> InductorRunner:
    """Compile ``model`` (an AnchorDETR whose frozen batch norms are folded) for ``spec``'s range, or
    load the function a process saved in ``spec.cache_dir``; compile the custom kernels' variants of
    the range; then capture the optimization shape's CUDA graph."""
    model = prepare(model, spec)
    runner = InductorRunner(model, spec)
    start = time.perf_counter()
    from ..export import example_inputs

    opt, largest = spec.padded_range[1], spec.padded_range[2][0]
    with _phase(runner, "load"):
        loaded = runner.load()
    if not loaded:
        with _phase(runner, "trace_and_compile"):
            runner.compile_range()
        # The first run tunes Inductor's kernels, at the shape of the trace as measured (a loaded
        # function finds their tuning in the cache).
        with _phase(runner, "first_call"):
            runner(*example_inputs((largest, *opt[1:]), spec.device, spec.dtype))
    with _phase(runner, "warm_kernels"):
        warm_kernels(model, spec)
    with _phase(runner, "capture"):
        for _ in range(2):  # the optimization shape seen twice: its CUDA graph is captured
            runner(*example_inputs(opt, spec.device, spec.dtype))
    logger.info(
        "inductor: %s for %s..%s in %.1f s (%s)",
        "loaded" if runner.loaded else "compiled",
        *spec.padded_range[::2],
        time.perf_counter() - start,
        ", ".join(f"{name} {seconds:.1f} s" for name, seconds in runner.build_seconds.items()),
    )
    return runner
