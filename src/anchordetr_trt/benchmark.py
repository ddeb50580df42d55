"""Latency and throughput of ``compile``'s backends against two baselines measured in the same process.

Baselines: ``eager-fp32``, the official-style model (plain PyTorch ops, unfolded batch norm, FP32,
eager) and ``torch-compile``, ``torch.compile(mode="reduce-overhead")`` of that same model called under
FP16 autocast with channels_last weights and inputs. Package backends (``eager``, ``inductor``,
``tensorrt``) come from ``compile(...)``. On a GPU every call is timed with CUDA events after warm-up;
on the CPU (a smoke run of the harness only) with ``time.perf_counter``.
"""

import copy
import gc
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import Checkpoint, load_model
from .compiled import compile
from .config import variant_name
from .devices import resolve_device
from .environment import environment
from .errors import BackendUnavailableError
from .export import Shape, example_inputs
from .weights import random_model

logger = logging.getLogger(__name__)

BASELINES = ("eager-fp32", "torch-compile")
PACKAGE_BACKENDS = ("eager", "inductor", "tensorrt")
BACKEND_LABELS = {
    "eager-fp32": "official-style eager fp32",
    "torch-compile": "torch.compile reduce-overhead (fp16 autocast)",
}
_BASELINE_PRECISION = {"eager-fp32": "fp32", "torch-compile": "fp16"}
# Issue 5's bars, for R50-DC5 at 800x800 in FP16 on an H100.
TARGETS = {
    "variant": "r50-dc5",
    "size": (800, 800),
    "batch1_latency_ms": 3.0,
    "batch8_throughput_img_s": 1200.0,
}


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
    batches: Sequence[int] = (1, 8),
    backends: Sequence[str] | None = None,
    precision: str | None = None,
) -> list[BenchConfig]:
    """Every (backend, size, batch) combination. Default backends: on a GPU both baselines, inductor and
    tensorrt (reported as skipped where it cannot run); on the CPU the eager baseline and eager."""
    on_gpu = device.type == "cuda"
    backends = backends or (
        ("eager-fp32", "torch-compile", "inductor", "tensorrt") if on_gpu else ("eager-fp32", "eager")
    )
    precision = precision or ("fp16" if on_gpu else "fp32")
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
    log: Callable[[str], None] = print,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Measure ``configs`` and return a JSON-ready report (see ``save_benchmark``); ``on_progress``
    gets the report so far after each backend (e.g. to save partial results under a time limit).

    Per config: latency (median, p90, p99, mean, min in ms over ``iters`` synchronized calls after
    ``warmup``), throughput (img/s over ``iters`` back-to-back calls), the first call's time (which
    includes any lazy compilation), peak memory, and speedups against both baselines at the same shape.
    Per backend: the compile time and, with ``startup``, a second process's time to its first output
    with the same ``cache_dir`` (set as Inductor's and Triton's cache for this process). With
    ``profile``, the top kernels (CPU: operators) of each package backend over a few calls at its
    largest shape; ``fastest`` names the package backend with the best throughput at the largest shape.
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
    if cache_dir is not None:  # set, not defaulted: the first process and the second must share it
        cache_dir = Path(cache_dir).resolve()
        cache_warm = cache_dir.is_dir() and any(cache_dir.iterdir())
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    template = random_model(variant or "r50-dc5", seed) if ckpt is None else load_model(ckpt, variant=variant)
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

    groups: dict[tuple[str, str], list[BenchConfig]] = {}
    for config in configs:
        groups.setdefault((config.backend, config.precision), []).append(config)
    for (backend, precision), group in groups.items():
        group = sorted(group, key=lambda c: (c.batch * c.height * c.width, c.shape))
        info = report["backends"][f"{backend} {precision}"] = {"backend": backend, "precision": precision}
        log(f"== {group[0].label}")
        report["results"] += _measure_backend(
            group, template, device, cache_dir, warmup, iters, profile, info, log
        )
        _summarize(report)
        if on_progress is not None:  # before the second-process probe, which takes a while
            on_progress(report)
        if (
            startup
            and info["status"] == "ok"
            and backend in ("inductor", "tensorrt")
            and device.type == "cuda"
        ):
            info["second_process"] = _second_process(group, variant, ckpt, seed, device, cache_dir, log)
        _release(device)
        _summarize(report)
        if on_progress is not None:
            on_progress(report)
    report["complete"] = True
    return report


def _summarize(report: dict) -> None:
    """(Re)compute the speedups, the fastest backend and the target checks from the results so far."""
    _add_speedups(report["results"])
    report["fastest"] = _fastest(report["results"])
    report["targets"] = _targets(report["results"], report["settings"]["variant"])


def _measure_backend(
    group: list[BenchConfig],
    template: nn.Module,
    device: torch.device,
    cache_dir: Path | None,
    warmup: int,
    iters: int,
    profile: bool,
    info: dict,
    log: Callable[[str], None],
) -> list[dict]:
    """Build one backend for every shape of ``group`` and measure each config; failures are recorded."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        start = time.perf_counter()
        runner, dtype, memory_format = _build(group, template, device, cache_dir)
        _synchronize(device)
        info["compile_s"] = time.perf_counter() - start
    except (BackendUnavailableError, ImportError) as err:
        info |= {"status": "skipped", "reason": str(err)}
        log(f"   skipped: {err}")
        return [_row(config, status="skipped", reason=str(err)) for config in group]
    except Exception as err:  # one backend failing to build must not lose the others' numbers
        logger.exception("building %s failed", group[0].label)
        info |= {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
        return [_row(config, status="failed", reason=info["reason"]) for config in group]
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
                _synchronize(device)
                first_call_s = time.perf_counter() - start
                latencies = _latencies_ms(call, device, warmup, iters)
                throughput = config.batch * iters / _seconds_back_to_back(call, device, iters)
            except Exception as err:
                logger.exception("measuring %s failed", config)
                rows.append(_row(config, status="failed", reason=f"{type(err).__name__}: {err}"))
                continue
            row = _row(config, status="ok", first_call_s=first_call_s, latency_ms=_stats(latencies))
            row["throughput_img_s"] = throughput
            if device.type == "cuda":
                row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(row)
            log(
                f"   batch {config.batch} {config.height}x{config.width}: median {row['latency_ms']['median']:.2f} ms, "
                f"p99 {row['latency_ms']['p99']:.2f} ms, {throughput:.1f} img/s (first call {first_call_s:.1f} s)"
            )
        if profile and group[0].backend in PACKAGE_BACKENDS and rows and rows[-1]["status"] == "ok":
            try:
                info["profile"] = _profile(call, device, calls=min(5, iters))
            except Exception as err:  # the numbers above stand without the profile
                logger.exception("profiling %s failed", group[0].label)
                info["profile_error"] = f"{type(err).__name__}: {err}"
    return rows


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
    shapes = [config.shape for config in group]
    low = tuple(min(s[i] for s in shapes) for i in range(3))
    high = tuple(max(s[i] for s in shapes) for i in range(3))
    compiled = compile(
        model, backend=backend, precision=precision, device=device,
        min_shape=low, opt_shape=shapes[0], max_shape=high, cache_dir=cache_dir,
    )  # fmt: skip
    return compiled, compiled.dtype, torch.contiguous_format


def _latencies_ms(call: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds per call, each started on an idle device and synchronized."""
    for _ in range(warmup):
        call()
    _synchronize(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            call()
            times.append(1000 * (time.perf_counter() - start_s))
    return times


def _seconds_back_to_back(call: Callable[[], object], device: torch.device, iters: int) -> float:
    """Seconds for ``iters`` calls queued without synchronizing in between (throughput)."""
    _synchronize(device)
    if device.type != "cuda":
        start_s = time.perf_counter()
        for _ in range(iters):
            call()
        return time.perf_counter() - start_s
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


def _stats(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms, dtype=np.float64)
    median, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "median": median,
        "p90": p90,
        "p99": p99,
        "mean": values.mean(),
        "min": values.min(),
        "n": len(values),
    }


def _profile(call: Callable[[], object], device: torch.device, calls: int = 5, top: int = 20) -> dict:
    """Where the time goes: the ``top`` CUDA kernels by total time over ``calls`` calls (CPU: operators)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with profiler(activities=activities) as prof:
        for _ in range(calls):
            call()
        _synchronize(device)
    events = prof.key_averages()
    if on_gpu:
        rows = [
            (e.key, e.count, e.self_device_time_total) for e in events if e.device_type == DeviceType.CUDA
        ]
    else:
        rows = [(e.key, e.count, e.self_cpu_time_total) for e in events]
    total_us = sum(us for _, _, us in rows) or 1.0
    rows.sort(key=lambda row: -row[2])
    kernels = [
        {
            "name": name,
            "calls": count,
            "total_ms": us / 1000,
            "per_call_us": us / count,
            "percent": 100 * us / total_us,
        }
        for name, count, us in rows[:top]
    ]
    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    kind = "CUDA kernels" if on_gpu else "CPU operators"
    if not rows:
        kind += " (none recorded: this profiler build may not trace kernels inside CUDA graph replays)"
    return {
        "kind": kind,
        "calls": calls,
        "total_ms_per_call": total_us / 1000 / calls,
        "top": kernels,
        "table": events.table(sort_by=sort_by, row_limit=top, max_name_column_width=80),
    }


def _second_process(
    group: list[BenchConfig],
    variant: str,
    ckpt: Checkpoint | None,
    seed: int,
    device: torch.device,
    cache_dir: Path | None,
    log: Callable[[str], None],
) -> dict:
    """Time a fresh process that compiles the same backend with the same cache and runs it once."""
    shapes = [config.shape for config in group]
    spec = {
        "backend": group[0].backend,
        "precision": group[0].precision,
        "variant": variant,
        "ckpt": str(ckpt) if isinstance(ckpt, str | os.PathLike) else None,
        "seed": seed,
        "device": str(device),
        "min_shape": [min(s[i] for s in shapes) for i in range(3)],
        "opt_shape": list(shapes[0]),
        "max_shape": [max(s[i] for s in shapes) for i in range(3)],
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
    }
    code = "import sys; from anchordetr_trt.benchmark import _startup_probe; _startup_probe(sys.argv[1])"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"   second process failed: {tail}")
        return {"status": "failed", "reason": tail, "wall_s": wall_s}
    timings = json.loads(proc.stdout.strip().splitlines()[-1])
    log(
        f"   second process (cache {'on' if cache_dir else 'default'}): compile {timings['compile_s']:.1f} s + first "
        f"call {timings['first_call_s']:.2f} s; {wall_s:.1f} s from launch to exit"
    )
    return {"status": "ok", "wall_s": wall_s, **timings}


def _startup_probe(spec_json: str) -> None:
    """Run in the second process: build, compile and call once; print the timings as one JSON line."""
    started = time.perf_counter()
    spec = json.loads(spec_json)
    if spec["ckpt"] is None:
        model = random_model(spec["variant"], spec["seed"])
    else:
        model = load_model(spec["ckpt"], variant=spec["variant"])
    built = time.perf_counter()
    device = torch.device(spec["device"])
    compiled = compile(
        model, backend=spec["backend"], precision=spec["precision"], device=device,
        min_shape=tuple(spec["min_shape"]), opt_shape=tuple(spec["opt_shape"]), max_shape=tuple(spec["max_shape"]),
        cache_dir=spec["cache_dir"],
    )  # fmt: skip
    _synchronize(device)
    compiled_at = time.perf_counter()
    compiled(*example_inputs(tuple(spec["opt_shape"]), device, compiled.dtype))
    _synchronize(device)
    done = time.perf_counter()
    timings = {
        "build_s": built - started,
        "compile_s": compiled_at - built,
        "first_call_s": done - compiled_at,
    }
    print(json.dumps(timings))


def _row(config: BenchConfig, *, status: str, **fields) -> dict:
    return {**asdict(config), "label": config.label, "status": status, **fields}


def _add_speedups(results: list[dict]) -> None:
    """Ratios against each baseline at the same (batch, height, width): > 1 means faster."""
    ok = [r for r in results if r["status"] == "ok"]
    for row in ok:
        row["speedup"] = {}
        for baseline in BASELINES:
            base = next(
                (
                    b
                    for b in ok
                    if b["backend"] == baseline and (b["batch"], b["height"], b["width"]) == _shape(row)
                ),
                None,
            )
            if base is not None:
                row["speedup"][baseline] = {
                    "latency": base["latency_ms"]["median"] / row["latency_ms"]["median"],
                    "throughput": row["throughput_img_s"] / base["throughput_img_s"],
                }


def _fastest(results: list[dict]) -> dict | None:
    """The package backend (else baseline) with the highest throughput at the largest measured shape."""
    ok = [r for r in results if r["status"] == "ok"]
    ok = [r for r in ok if r["backend"] in PACKAGE_BACKENDS] or ok
    if not ok:
        return None
    largest = max((r["batch"] * r["height"] * r["width"], _shape(r)) for r in ok)[1]
    best = max((r for r in ok if _shape(r) == largest), key=lambda r: r["throughput_img_s"])
    return {
        "backend": best["backend"],
        "precision": best["precision"],
        "label": best["label"],
        "shape": list(largest),
    }


def _targets(results: list[dict], variant: str) -> dict:
    """Issue 5's bars, checked for the package's backends where the measured config is the one they name."""
    checks = []
    if variant == TARGETS["variant"]:
        for row in results:
            if (
                row["status"] != "ok"
                or row["backend"] in BASELINES
                or (row["height"], row["width"]) != TARGETS["size"]
            ):
                continue
            if row["batch"] == 1:
                value, bar = row["latency_ms"]["median"], TARGETS["batch1_latency_ms"]
                checks.append({"label": row["label"], "metric": "batch-1 median latency (ms)", "value": value,
                               "target": bar, "met": value <= bar})  # fmt: skip
            if row["batch"] == 8:
                value, bar = row["throughput_img_s"], TARGETS["batch8_throughput_img_s"]
                checks.append({"label": row["label"], "metric": "batch-8 throughput (img/s)", "value": value,
                               "target": bar, "met": value >= bar})  # fmt: skip
    return {**TARGETS, "size": list(TARGETS["size"]), "checks": checks}


def _shape(row: dict) -> tuple[int, int, int]:
    return (row["batch"], row["height"], row["width"])


def _torch_flags() -> dict:
    # The baselines run with PyTorch's defaults; these decide whether FP32 convolutions use TF32.
    return {
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    # Drop compiled graphs and cached blocks so the next backend's peak memory is its own.
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def format_table(report: dict) -> str:
    """A plain-text table of the results, one line per config."""
    header = ("backend", "batch", "size", "median ms", "p90 ms", "p99 ms", "img/s", "x eager32", "x t.compile",
              "first call s", "peak MiB")  # fmt: skip
    lines = [header]
    for row in report["results"]:
        size = f"{row['height']}x{row['width']}"
        if row["status"] != "ok":
            lines.append((row["label"], str(row["batch"]), size, f"{row['status']}: {row['reason']}"))
            continue
        lat, speed = row["latency_ms"], row.get("speedup", {})
        lines.append((
            row["label"], str(row["batch"]), size, f"{lat['median']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
            f"{row['throughput_img_s']:.1f}",
            *(f"{speed[b]['throughput']:.2f}" if b in speed else "-" for b in BASELINES),
            f"{row['first_call_s']:.1f}", f"{row['peak_memory_mib']:.0f}" if "peak_memory_mib" in row else "-",
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines if len(line) == len(header)) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=False))
        )
        for line in lines
    )


def save_benchmark(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``bench.json``, ``bench.png`` and, when profiled, ``profile.json`` / ``profile.txt`` (the
    fastest backend's top kernels) under ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "bench.json", out_dir / "bench.png"]
    written[0].write_text(json.dumps(report, indent=1, default=str))
    plot_benchmark(report, written[1])
    fastest = report.get("fastest")
    key = f"{fastest['backend']} {fastest['precision']}" if fastest else None
    profile = report["backends"].get(key, {}).get("profile") if key else None
    if profile is not None:
        summary = {"backend": fastest["label"], **{k: v for k, v in profile.items() if k != "table"}}
        (out_dir / "profile.json").write_text(json.dumps(summary, indent=1))
        (out_dir / "profile.txt").write_text(
            f"{fastest['label']}: {profile['kind']}, {profile['calls']} calls\n\n{profile['table']}\n"
        )
        written += [out_dir / "profile.json", out_dir / "profile.txt"]
    return written


def plot_benchmark(report: dict, path: str | os.PathLike) -> None:
    """Median latency (whisker to p99) and throughput per backend and shape as a PNG (log scale where the
    values span more than a factor of 10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["results"] if r["status"] == "ok"]
    shapes = sorted({_shape(r) for r in ok}, key=lambda s: (s[1] * s[2], s))
    labels = list(dict.fromkeys(r["label"] for r in ok))
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        rows = {_shape(r): r for r in ok if r["label"] == label}
        xs = [j + (i - (len(labels) - 1) / 2) * width for j, s in enumerate(shapes) if s in rows]
        mine = [rows[s] for s in shapes if s in rows]
        median = [r["latency_ms"]["median"] for r in mine]
        p99 = [r["latency_ms"]["p99"] - r["latency_ms"]["median"] for r in mine]
        ax_lat.bar(xs, median, width, yerr=[[0] * len(mine), p99], capsize=3, label=label)
        bars = ax_thr.bar(xs, [r["throughput_img_s"] for r in mine], width, label=label)
        for bar, row in zip(bars, mine, strict=True):
            ratio = row.get("speedup", {}).get("eager-fp32", {}).get("throughput")
            if ratio is not None and row["backend"] != "eager-fp32":
                ax_thr.annotate(f"x{ratio:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8)  # fmt: skip
    ticks = [f"batch {b}\n{h}x{w}" for b, h, w in shapes]
    latencies = [r["latency_ms"]["median"] for r in ok]
    throughputs = [r["throughput_img_s"] for r in ok]
    for ax, title, values in (
        (ax_lat, "median latency, ms (whisker: p99)", latencies),
        (ax_thr, "throughput, images/s (x: vs eager fp32)", throughputs),
    ):
        ax.set_xticks(range(len(shapes)), ticks)
        if values and max(values) > 10 * min(values):  # log only where the bars span orders of magnitude
            ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(axis="y", which="both", alpha=0.3)
    ax_lat.legend(fontsize=8)
    env, settings = report["environment"], report["settings"]
    fig.suptitle(
        f"AnchorDETR {settings['variant']} on {env.get('gpu') or 'CPU (smoke run, not a benchmark)'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
