"""The benchmark's report: speedups against the baselines, the fastest backend, the acceptance
targets, a plain-text table, and the files (``bench.json``, ``bench.png``, ``profile.json/.txt``)."""

import json
import os
from collections.abc import Callable
from pathlib import Path

from .configs import BASELINES, PACKAGE_BACKENDS

# Issue 5's bars, for R50-DC5 at 800x800 in FP16 on an H100.
TARGETS = {
    "variant": "r50-dc5",
    "size": (800, 800),
    "batch1_latency_ms": 3.0,
    "batch8_throughput_img_s": 1200.0,
}
PLOT_NEEDS_MATPLOTLIB = "bench.png not drawn: it needs matplotlib, pip install 'anchordetr_trt[plot]'"


def row_shape(row: dict) -> tuple[int, int, int]:
    """A result row's (batch, height, width)."""
    return (row["batch"], row["height"], row["width"])


def summarize(report: dict) -> None:
    """(Re)compute the speedups, the fastest backend and the target checks from the results so far."""
    add_speedups(report["results"])
    report["fastest"] = fastest(report["results"])
    report["targets"] = targets(report["results"], report["settings"]["variant"])


def add_speedups(results: list[dict]) -> None:
    """Ratios against each baseline at the same (batch, height, width): > 1 means faster."""
    ok = [r for r in results if r["status"] == "ok"]
    for row in ok:
        row["speedup"] = {}
        for baseline in BASELINES:
            base = next(
                (b for b in ok if b["backend"] == baseline and row_shape(b) == row_shape(row)),
                None,
            )
            if base is not None:
                row["speedup"][baseline] = {
                    "latency": base["latency_ms"]["median"] / row["latency_ms"]["median"],
                    "throughput": row["throughput_img_s"] / base["throughput_img_s"],
                }


def fastest(results: list[dict]) -> dict | None:
    """The package backend (else baseline) with the highest throughput at the largest measured shape."""
    ok = [r for r in results if r["status"] == "ok"]
    ok = [r for r in ok if r["backend"] in PACKAGE_BACKENDS] or ok
    if not ok:
        return None
    largest = max((r["batch"] * r["height"] * r["width"], row_shape(r)) for r in ok)[1]
    best = max((r for r in ok if row_shape(r) == largest), key=lambda r: r["throughput_img_s"])
    return {
        "backend": best["backend"],
        "precision": best["precision"],
        "label": best["label"],
        "shape": list(largest),
    }


def targets(results: list[dict], variant: str) -> dict:
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


def save_benchmark(
    report: dict, out_dir: str | os.PathLike, log: Callable[[str], None] | None = print
) -> list[Path]:
    """Write ``bench.json``, ``bench.png`` (with matplotlib, the ``plot`` extra; without it ``log``
    gets one line saying so, unless None) and, when profiled, ``profile.json`` / ``profile.txt`` (the
    fastest backend's top kernels) under ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "bench.json"]
    written[0].write_text(json.dumps(report, indent=1, default=str))
    try:
        from .plot import plot_benchmark
    except ImportError as err:
        if not (err.name or "").startswith("matplotlib"):
            raise
        if log is not None:
            log(PLOT_NEEDS_MATPLOTLIB)
    else:
        plot_benchmark(report, out_dir / "bench.png")
        written.append(out_dir / "bench.png")
    best = report.get("fastest")
    key = f"{best['backend']} {best['precision']}" if best else None
    profile = report["backends"].get(key, {}).get("profile") if key else None
    if profile is not None:
        summary = {"backend": best["label"], **{k: v for k, v in profile.items() if k != "table"}}
        (out_dir / "profile.json").write_text(json.dumps(summary, indent=1))
        (out_dir / "profile.txt").write_text(
            f"{best['label']}: {profile['kind']}, {profile['calls']} calls\n\n{profile['table']}\n"
        )
        written += [out_dir / "profile.json", out_dir / "profile.txt"]
    return written
