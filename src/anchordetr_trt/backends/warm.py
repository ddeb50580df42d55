"""The custom ops' Triton kernels compiled inside ``compile()``, for every size of the range.

A kernel's block sizes make a few variants (``custom_ops.fused.kernel_variant``), each compiled by
Triton at its first launch (about a second each). Launching each variant once here moves that cost into ``compile()``, so that no
image of a new size compiles anything. Shared by the backends that launch the kernels from PyTorch
(inductor, eager on CUDA); the tensorrt backend compiles its kernels into the engine.
"""

import concurrent.futures
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from ..spec import SIZE_MULTIPLE, CompileSpec

logger = logging.getLogger(__name__)


def feature_sizes(spec: CompileSpec, stride: int) -> list[tuple[int, int]]:
    """(height, width) feature maps, after the backbone's ``stride``, that together take every height
    and every width of ``spec``'s padded range: the two lists side by side, the shorter one held at its
    last size."""
    (_, low_h, low_w), _, (_, high_h, high_w) = spec.padded_range
    heights = [size // stride for size in range(low_h, high_h + 1, SIZE_MULTIPLE)]
    widths = [size // stride for size in range(low_w, high_w + 1, SIZE_MULTIPLE)]
    count = max(len(heights), len(widths))
    return [(heights[min(i, len(heights) - 1)], widths[min(i, len(widths) - 1)]) for i in range(count)]


def variant_sizes(spec: CompileSpec, stride: int, num_pos_feats: int) -> list[tuple[int, int]]:
    """One (height, width) feature map per kernel variant (``kernel_variant``) that ``spec``'s range
    reaches, with ``num_pos_feats`` position features, after the backbone's ``stride``."""
    from anchordetr_trt.custom_ops.fused import kernel_variant

    sizes = feature_sizes(spec, stride)
    return list({kernel_variant(*size, num_pos_feats): size for size in sizes}.values())


def warm_kernels(model: nn.Module, spec: CompileSpec, workers: int | None = None) -> None:
    """Run ``model``'s transformer eagerly on batch-1 zero features, once per kernel variant that the
    heights and widths of ``spec``'s range reach (``variant_sizes``), and compile rcda_aggregate's
    kernel for both of its query blocks at each of those widths (``rcda_aggregate.warm``) and
    self_attention's for both of its (``self_attention.warm``). A variant depends on a feature map's
    height and width alone, never on the number of rows (``custom_ops._common.row_tile``), except
    those two ops' query blocks, which depend on the batch, the map and the GPU too; the backbone
    (cuDNN) is not run. Variants already compiled, or in Triton's cache, cost a lookup. Nothing to do
    off CUDA (no Triton kernel runs there).

    The builds run on ``workers`` threads (default: one per CPU this process may use, at most one per
    task; 1: in the calling thread, one after another), in the stages of ``warm_stages``: Triton
    compiles partly outside the GIL (LLVM, ptxas), so independent builds overlap."""
    if spec.device.type != "cuda":
        return
    start = time.perf_counter()
    # The GPU resolved here: a worker thread's current GPU is GPU 0, whatever the caller's is.
    device = torch.device(
        "cuda", torch.cuda.current_device() if spec.device.index is None else spec.device.index
    )
    stages, sizes = warm_stages(model, spec)
    run_stages(stages, device, workers)
    logger.info(
        "compile: the custom ops' kernels warmed for %d feature sizes (%s..%s) in %.1f s",
        len(sizes),
        sizes[0],
        sizes[-1],
        time.perf_counter() - start,
    )


def warm_stages(
    model: nn.Module, spec: CompileSpec
) -> tuple[list[list[Callable[[], None]]], list[tuple[int, int]]]:
    """(``warm_kernels``' tasks in stages, the variant sizes they cover). No two tasks of a stage build
    or first launch the same kernel variant: Triton makes a kernel's per-device table of builds at
    its first launch, and loads a build at the build's first launch, and a thread meeting either
    half made by another fails or loses the other's work. So: first the transformer at the first
    size alone (every kernel's first launch; the builds every size shares: the norms, the key means,
    the bias transposes); then side by side rcda_aggregate's builds, one task per width class
    (``rcda_aggregate.width_blocks``), and self_attention's; then the transformer at the other sizes,
    one after another in one task (each adds a mask2posemb build, which sizes may share)."""
    from anchordetr_trt.custom_ops import rcda_aggregate, self_attention

    config = model.config
    head_dim = config.hidden_dim // config.num_heads
    sizes = variant_sizes(spec, config.stride, config.hidden_dim)
    widths = {rcda_aggregate.width_blocks(width): width for _, width in sizes}.values()
    builds = [
        functools.partial(rcda_aggregate.warm, width, config.num_heads, head_dim, spec.dtype, spec.device)
        for width in widths
    ]
    builds.append(functools.partial(self_attention.warm, config.num_heads, head_dim, spec.dtype, spec.device))
    stages = [[functools.partial(_run_transformer, model, spec, sizes[:1])], builds]
    if len(sizes) > 1:
        stages.append([functools.partial(_run_transformer, model, spec, sizes[1:])])
    return stages, sizes


def run_stages(
    stages: list[list[Callable[[], None]]], device: torch.device, workers: int | None = None
) -> None:
    """Run each stage's tasks on ``workers`` threads (default: one per CPU this process may use, at
    most one per task; 1: in this thread), a stage after the previous one has ended, each task without
    gradients and with ``device`` current (both are per thread). A task that raises stops the run:
    once the stage's running tasks have ended, the exception of the first such task in the stage's
    order is raised here, and no later stage starts. An interrupt cancels the tasks not started."""
    if workers is None:
        workers = min(_usable_cpus(), max(len(stage) for stage in stages))
    if workers <= 1:
        for stage in stages:
            for task in stage:
                _in_context(task, device)
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="warm_kernels")
    try:
        for stage in stages:
            futures = [pool.submit(_in_context, task, device) for task in stage]
            _, pending = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in pending:
                future.cancel()  # those not started yet
            concurrent.futures.wait(futures)
            for future in futures:
                if not future.cancelled() and future.exception() is not None:
                    raise future.exception()
    finally:
        pool.shutdown(cancel_futures=True)


def _usable_cpus() -> int:
    # The CPUs this process may run on (a container's or taskset's share), where the OS tells.
    if hasattr(os, "sched_getaffinity"):  # not on macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _in_context(task: Callable[[], None], device: torch.device) -> None:
    context = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with context, torch.no_grad():
        task()


def _run_transformer(model: nn.Module, spec: CompileSpec, sizes: list[tuple[int, int]]) -> None:
    """The transformer on a batch-1 map of each of ``sizes`` (height, width) in turn, in zeros (not
    random values: the user's random number generators stay as they were), unmasked."""
    stride = model.config.stride
    for height, width in sizes:
        features = torch.zeros(
            1, model.backbone.num_channels, height, width, device=spec.device, dtype=spec.dtype
        )
        mask = torch.zeros(1, height * stride, width * stride, dtype=torch.bool, device=spec.device)
        model.transformer.decode(model.encode(features.contiguous(memory_format=torch.channels_last), mask))
