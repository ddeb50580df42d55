"""Latency and throughput of ``compile``'s backends against two baselines measured in the same process
(see ``configs`` for what each backend is, ``timing`` for how a call is timed)."""

import copy
import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..cache import use_compile_cache
from ..checkpoint import Checkpoint
from ..compiled import compile
from ..config import variant_name
from ..devices import resolve_device
from ..environment import environment
from ..errors import BackendUnavailableError
from ..export import example_inputs
from ..model import AnchorDETR
from ..spec import padded_shape
from ..weights import load_or_random
from . import timing
from .configs import PACKAGE_BACKENDS, BenchConfig, shape_range
from .flops import flops_report, peak_tflops
from .parts import PART_CALLS, time_parts
from .report import summarize
from .startup import second_process

logger = logging.getLogger(__name__)


def run_benchmark(
    configs: Sequence[BenchConfig],
    *,
    variant: str | None = None,
    ckpt: Checkpoint | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    warmup: int = 10,
    iters: int = 100,
    cache_dir: str | os.PathLike | None = None,
    profile: bool = True,
    startup: bool = True,
    parts: bool = False,
    log: Callable[[str], None] = print,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Measure ``configs`` and return a JSON-ready report (see ``report.save_benchmark``); ``on_progress``
    gets the report so far after each backend (e.g. to save partial results under a time limit).

    Per config: latency (median, p90, p99, mean, min in ms over ``iters`` synchronized calls after
    ``warmup``), throughput (img/s over ``iters`` back-to-back calls), the first call's time (which
    includes any lazy compilation), peak memory, and speedups against both baselines at the same shape.
    Per backend: the compile time and, with ``startup``, a second process's time to its first output
    with the same ``cache_dir`` (set as Inductor's and Triton's cache for this process). With
    ``profile``, the top kernels (CPU: operators) of each package backend over a few calls at its
    largest shape; ``fastest`` names the package backend with the best throughput at the largest shape.
    ``flops``: the model's FLOPs per image by part at each shape, the device's peak FLOP rate measured
    here (a large matmul, after the first backend of each precision is measured), and each row's
    achieved rate (``flops.flops_report``, ``report.flop_rates``); with ``parts``,
    each part timed on its own at each shape (``parts.time_parts``) where the backend runs the model's
    modules (eager-fp32, eager, inductor).
    Weights: ``ckpt`` (its variant unless ``variant`` is given) or deterministic random ones of ``variant``
    (default r50-dc5; speed does not depend on the values).
    """
    device = resolve_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "device='cuda' was asked for but no CUDA GPU is visible: use device='cpu'"
        )
    if warmup < 0 or iters < 1:
        raise ValueError(f"need warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    cache_warm = None
    if cache_dir is not None:  # for the baselines too, and for the second process, which shares it
        cache_dir = Path(cache_dir).resolve()
        cache_warm = cache_dir.is_dir() and any(cache_dir.iterdir())
        cache_dir = use_compile_cache(cache_dir)
    template = load_or_random(ckpt, variant=variant, seed=seed)
    variant = variant_name(template.config)
    if ckpt is None:
        weights = f"deterministic random (seed {seed})"
    else:
        weights = f"checkpoint {ckpt}" if isinstance(ckpt, str | os.PathLike) else "checkpoint (in memory)"
    settings = {
        "variant": variant,
        "weights": weights,
        "device": str(device),
        "timer": "cuda events"
        if device.type == "cuda"
        else "time.perf_counter (CPU smoke run, not a benchmark)",
        "warmup": warmup,
        "iters": iters,
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
        "cache_warm_at_start": cache_warm,  # a warm cache makes the first process's compile times short too
    }
    report = {
        "complete": False,  # until every backend is measured: partial reports go to on_progress
        "environment": environment() | _torch_flags(),
        "settings": settings,
        "results": [],
        "backends": {},
    }
    report["flops"] = flops_report(
        template.config,
        [config.shape for config in configs],
        [config.precision for config in configs],
        device,
    )

    groups: dict[tuple[str, str], list[BenchConfig]] = {}
    for config in configs:
        groups.setdefault((config.backend, config.precision), []).append(config)
    for (backend, precision), group in groups.items():
        group = sorted(group, key=lambda c: (c.batch * c.height * c.width, c.shape))
        info = report["backends"][f"{backend} {precision}"] = {"backend": backend, "precision": precision}
        log(f"== {group[0].label}")
        report["results"] += _measure_backend(
            group, template, device, cache_dir, warmup, iters, profile, parts, info, log
        )
        peak = report["flops"]["peak_for"][precision]
        if info["status"] == "ok" and peak not in report["flops"]["peak_tflops"]:  # where a row needs it
            report["flops"]["peak_tflops"][peak] = peak_tflops(device, peak)
            log(f"   measured peak {peak}: {report['flops']['peak_tflops'][peak]['tflops']:.1f} TFLOP/s")
        summarize(report)
        if on_progress is not None:  # before the second-process probe, which takes a while
            on_progress(report)
        if (
            startup
            and info["status"] == "ok"
            and backend in ("inductor", "tensorrt")
            and device.type == "cuda"
        ):
            info["second_process"] = second_process(group, variant, ckpt, seed, device, cache_dir, log)
        _release(device)
        summarize(report)
        if on_progress is not None:
            on_progress(report)
    report["complete"] = True
    return report


def _measure_backend(
    group: list[BenchConfig],
    template: nn.Module,
    device: torch.device,
    cache_dir: Path | None,
    warmup: int,
    iters: int,
    profile: bool,
    parts: bool,
    info: dict,
    log: Callable[[str], None],
) -> list[dict]:
    """Build one backend for every shape of ``group`` and measure each config; failures are recorded."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        start = time.perf_counter()
        runner, dtype, memory_format = _build(group, template, device, cache_dir)
        timing.synchronize(device)
        info["compile_s"] = time.perf_counter() - start
    except (BackendUnavailableError, ImportError) as err:
        info |= {"status": "skipped", "reason": str(err)}
        log(f"   skipped: {err}")
        return [row(config, status="skipped", reason=str(err)) for config in group]
    except Exception as err:  # one backend failing to build must not lose the others' numbers
        logger.exception("building %s failed", group[0].label)
        info |= {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
        return [row(config, status="failed", reason=info["reason"]) for config in group]
    info["status"] = "ok"
    rows = []
    with torch.no_grad():
        for config in group:
            images, mask = example_inputs(config.shape, device, dtype)
            images = images.contiguous(memory_format=memory_format)
            call = lambda images=images, mask=mask: runner(images, mask)
            try:
                start = time.perf_counter()
                call()
                timing.synchronize(device)
                first_call_s = time.perf_counter() - start
                latencies = timing.latencies_ms(call, device, warmup, iters)
                throughput = config.batch * iters / timing.seconds_back_to_back(call, device, iters)
            except Exception as err:
                logger.exception("measuring %s failed", config)
                rows.append(row(config, status="failed", reason=f"{type(err).__name__}: {err}"))
                continue
            measured = row(config, status="ok", first_call_s=first_call_s, latency_ms=timing.stats(latencies))
            measured["throughput_img_s"] = throughput
            if device.type == "cuda":
                measured["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(measured)
            log(
                f"   batch {config.batch} {config.height}x{config.width}: median {measured['latency_ms']['median']:.2f} ms, "
                f"p99 {measured['latency_ms']['p99']:.2f} ms, {throughput:.1f} img/s (first call {first_call_s:.1f} s)"
            )
        if profile and group[0].backend in PACKAGE_BACKENDS and rows and rows[-1]["status"] == "ok":
            try:
                info["profile"] = timing.profile(call, device, calls=min(5, iters))
            except Exception as err:  # the numbers above stand without the profile
                logger.exception("profiling %s failed", group[0].label)
                info["profile_error"] = f"{type(err).__name__}: {err}"
        if parts:  # after the rows and the profile, so that their times and memory are the backend's own
            _time_parts(group, rows, runner, device, warmup, min(iters, PART_CALLS), info, log)
    return rows


def _time_parts(
    group: list[BenchConfig],
    rows: list[dict],
    runner: Callable,
    device: torch.device,
    warmup: int,
    iters: int,
    info: dict,
    log: Callable[[str], None],
) -> None:
    """Each part's time at each measured row's shape (``parts.time_parts``), as ``parts_ms``."""
    found = _part_model(group[0].backend, runner)
    if isinstance(found, str):
        info["parts"] = found
        log(f"   parts: {found}")
        return
    model, compiled = found
    info["parts"] = "torch.compile of each part, CUDA graphs on a GPU" if compiled else "eager"
    dtype = next(model.parameters()).dtype
    for config, measured in zip(group, rows, strict=True):
        if measured["status"] != "ok":
            continue
        images, mask = example_inputs(padded_shape(config.shape) if compiled else config.shape, device, dtype)
        try:
            times = time_parts(
                model, images, mask,
                compiled=compiled, warmup=warmup, iters=iters,
            )  # fmt: skip
        except Exception as err:  # the row's numbers stand without its parts
            logger.exception("timing the parts of %s failed", config)
            measured["parts_error"] = f"{type(err).__name__}: {err}"
            continue
        measured |= {"parts_ms": times, "parts_timed": info["parts"]}
        log(
            f"   parts at batch {config.batch} {config.height}x{config.width}: "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in times.items())
        )


def _part_model(backend: str, runner: Callable) -> tuple[AnchorDETR, bool] | str:
    """(model, compiled) for timing the parts of ``backend`` as ``runner`` runs it, on contiguous
    images as every backend passes them, or why they are not timed. The inductor backend's prepared
    model is timed compiled part by part (its stem lays the images out)."""
    model = {
        "eager-fp32": runner,
        "eager": getattr(runner, "runner", None),
        "inductor": getattr(getattr(runner, "runner", None), "model", None),
    }.get(backend)
    if not isinstance(model, AnchorDETR):
        return f"not timed: {backend} runs the model as one compiled whole"
    return model, backend == "inductor"


def _build(
    group: list[BenchConfig], template: nn.Module, device: torch.device, cache_dir: Path | None
) -> tuple[Callable[[Tensor, Tensor], dict], torch.dtype, torch.memory_format]:
    """(runner, input dtype, input memory format) of the group's backend, covering all its shapes."""
    backend, precision = group[0].backend, group[0].precision
    model = copy.deepcopy(template).eval()
    if backend == "eager-fp32":
        model = model.set_fused_ops(False).to(device=device, dtype=torch.float32)
        return model, torch.float32, torch.contiguous_format
    if backend == "torch-compile":
        if device.type != "cuda":
            raise BackendUnavailableError(
                "the torch.compile baseline (fp16 autocast, CUDA graphs) needs a CUDA GPU"
            )
        model = model.set_fused_ops(False).to(device=device, memory_format=torch.channels_last)
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)

        def run(images: Tensor, mask: Tensor) -> dict:
            torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast("cuda", torch.float16):
                return compiled(images, mask)

        return run, torch.float32, torch.channels_last
    min_shape, opt_shape, max_shape = shape_range(group)
    compiled = compile(
        model, backend=backend, precision=precision, device=device,
        min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, cache_dir=cache_dir,
    )  # fmt: skip
    return compiled, compiled.dtype, torch.contiguous_format


def row(config: BenchConfig, *, status: str, **fields) -> dict:
    """A result row of bench.json: the config, its label, ``status`` and the measured ``fields``."""
    return {**asdict(config), "label": config.label, "status": status, **fields}


def _torch_flags() -> dict:
    # The baselines run with PyTorch's defaults; these decide whether FP32 convolutions use TF32.
    return {
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def _release(device: torch.device) -> None:
    # Drop compiled graphs and cached blocks so the next backend's peak memory is its own.
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
