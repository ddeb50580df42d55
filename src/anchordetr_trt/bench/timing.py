"""How one call is timed and profiled: on a GPU with CUDA events after warm-up, on the CPU (a smoke
run of the harness only) with ``time.perf_counter``."""

import time
from collections.abc import Callable

import numpy as np
import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latencies_ms(call: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds per call, each started on an idle device and synchronized."""
    for _ in range(warmup):
        call()
    synchronize(device)
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


def seconds_back_to_back(call: Callable[[], object], device: torch.device, iters: int) -> float:
    """Seconds for ``iters`` calls queued without synchronizing in between (throughput)."""
    synchronize(device)
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


def stats(latencies_ms: list[float]) -> dict[str, float]:
    """Median, p90, p99, mean, min and count of ``latencies_ms``, as plain Python numbers (numpy's
    would reach bench.json as strings, through comparisons such as ``met``)."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    median, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "median": float(median),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "n": len(values),
    }


def profile(call: Callable[[], object], device: torch.device, calls: int = 5, top: int = 20) -> dict:
    """Where the time goes: the ``top`` CUDA kernels by total time over ``calls`` calls (CPU: operators)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with profiler(activities=activities) as prof:
        for _ in range(calls):
            call()
        synchronize(device)
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
