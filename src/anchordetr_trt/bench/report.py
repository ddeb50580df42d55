"""The benchmark's report: speedups against the baselines, the fastest backend, the FLOP rates, the
check of the benchmark's targets (``targets``), a plain-text table, and the files (``bench.json``,
``bench.png``, ``profile.json/.txt``)."""

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..outputs import write_results
from .configs import BASELINES, PACKAGE_BACKENDS
from .targets import check_targets

PLOT_NEEDS_MATPLOTLIB = "bench.png not drawn: it needs matplotlib, pip install 'anchordetr_trt[plot]'"


def row_shape(row: dict) -> tuple[int, int, int]:
    """A result row's (batch, height, width)."""
    return (row["batch"], row["height"], row["width"])


def summarize(report: dict) -> None:
    """(Re)compute the speedups, the fastest backend, the FLOP rates and the target checks
    (``targets.check_targets``) from the results so far."""
    add_speedups(report["results"])
    report["fastest"] = fastest(report["results"])
    if "flops" in report:
        report["flops"]["rows"] = flop_rates(report["results"], report["flops"])
    report["targets"] = check_targets(
        report["results"], report["settings"]["variant"], report["environment"]["gpu"]
    )


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


def flop_rates(results: list[dict], flops: dict) -> list[dict]:
    """Per measured row: the achieved TFLOP/s (FLOPs per image x img/s) and its percentage of the
    peak its precision is held to; per part where the row's parts were timed (``parts_ms``): each
    part's time, share of the parts' time, TFLOP/s and percentage of the peak."""
    per_image = {(e["batch"], e["height"], e["width"]): e["gflops"] for e in flops["per_image"]}
    rates = []
    for row in results:
        gflops = per_image.get(row_shape(row))
        if row["status"] != "ok" or gflops is None:
            continue
        peak_name = flops["peak_for"].get(row["precision"])
        peak = flops["peak_tflops"].get(peak_name, {}).get("tflops")
        entry = {
            "label": row["label"], "backend": row["backend"], "precision": row["precision"],
            "batch": row["batch"], "height": row["height"], "width": row["width"],
            "gflops_per_image": gflops["total"], "peak": peak_name,
            **_rate(gflops["total"] * row["throughput_img_s"], 1000.0, peak),
        }  # fmt: skip
        if "parts_ms" in row:
            total_ms = sum(row["parts_ms"].values())
            entry["parts_timed"] = row["parts_timed"]
            entry["parts"] = {
                name: {"ms": ms, "percent_of_time": 100 * ms / total_ms, **_rate(gflops[name] * row["batch"], ms, peak)}
                for name, ms in row["parts_ms"].items()
            }  # fmt: skip
        rates.append(entry)
    return rates


def _rate(gflop: float, ms: float, peak: float | None) -> dict:
    tflops = gflop / ms  # GFLOP per ms is TFLOP/s
    return {"tflops": tflops, "percent_of_peak": 100 * tflops / peak if peak else None}


def format_table(report: dict) -> str:
    """A plain-text table of the results, one line per config."""
    header = ("backend", "batch", "size", "median ms", "p90 ms", "p99 ms", "img/s", "x eager32", "x t.compile",
              "TFLOP/s", "% peak", "first call s", "peak MiB")  # fmt: skip
    rates = {_rate_key(r): r for r in report.get("flops", {}).get("rows", [])}
    lines = [header]
    for row in report["results"]:
        size = f"{row['height']}x{row['width']}"
        if row["status"] != "ok":
            lines.append((row["label"], str(row["batch"]), size, f"{row['status']}: {row['reason']}"))
            continue
        lat, speed, rate = row["latency_ms"], row.get("speedup", {}), rates.get(_rate_key(row), {})
        lines.append((
            row["label"], str(row["batch"]), size, f"{lat['median']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
            f"{row['throughput_img_s']:.1f}",
            *(f"{speed[b]['throughput']:.2f}" if b in speed else "-" for b in BASELINES),
            _tflops(rate.get("tflops")), _number(rate.get("percent_of_peak"), ".0f"),
            f"{row['first_call_s']:.1f}", _number(row.get("peak_memory_mib"), ".0f"),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines if len(line) == len(header)) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=False))
        )
        for line in lines
    )


def format_flops(report: dict) -> list[str]:
    """Plain-text lines of the flops section: GFLOPs per image by part at each measured size, the
    measured peaks, and each row's parts where they were timed."""
    flops = report.get("flops")
    if not flops:
        return []
    lines, sizes = [], set()
    for entry in flops["per_image"]:  # sorted by shape: the smallest batch of each size
        if (entry["height"], entry["width"]) not in sizes:
            sizes.add((entry["height"], entry["width"]))
            parts = ", ".join(f"{name} {gflops:.1f}" for name, gflops in entry["gflops"].items())
            lines.append(
                f"GFLOPs per image at {entry['height']}x{entry['width']} (batch {entry['batch']}): {parts}"
            )
    lines += [
        f"measured peak {name}: {_tflops(peak['tflops'])} TFLOP/s ({peak['how']})"
        for name, peak in flops["peak_tflops"].items()
    ]
    for rate in flops.get("rows", []):
        if "parts" in rate:
            parts = ", ".join(
                f"{name} {p['ms']:.2f} ms {_tflops(p['tflops'])} TFLOP/s ({_number(p['percent_of_peak'], '.0f')}% of peak)"
                for name, p in rate["parts"].items()
            )
            lines.append(
                f"{rate['label']} batch {rate['batch']} {rate['height']}x{rate['width']} parts: {parts}"
            )
    return lines


def _rate_key(row: dict) -> tuple:
    return (row["backend"], row["precision"], row["batch"], row["height"], row["width"])


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _tflops(value: float | None) -> str:
    return _number(value, ".1f" if value is not None and value >= 10 else ".3g")


def save_benchmark(
    report: dict, out_dir: str | os.PathLike, log: Callable[[str], None] | None = print
) -> list[Path]:
    """Write ``bench.json``, ``bench.png`` (with matplotlib, the ``plot`` extra; without it ``log``
    gets one line saying so, unless None) and, when profiled, ``profile.json`` / ``profile.txt`` (the
    fastest backend's top kernels) under ``out_dir``; returns the paths written. They are result
    files (``outputs.write_results``): each new, or written by an earlier call and unchanged since."""
    out_dir = Path(out_dir)
    contents = {out_dir / "bench.json": json.dumps(report, indent=1, default=_json_value).encode()}
    try:
        from .plot import plot_benchmark
    except ImportError as err:
        if not (err.name or "").startswith("matplotlib"):
            raise
        if log is not None:
            log(PLOT_NEEDS_MATPLOTLIB)
    else:
        png = io.BytesIO()
        plot_benchmark(report, png)
        contents[out_dir / "bench.png"] = png.getvalue()
    best = report.get("fastest")
    key = f"{best['backend']} {best['precision']}" if best else None
    profile = report["backends"].get(key, {}).get("profile") if key else None
    if profile is not None:
        summary = {"backend": best["label"], **{k: v for k, v in profile.items() if k != "table"}}
        contents[out_dir / "profile.json"] = json.dumps(summary, indent=1).encode()
        table = f"{best['label']}: {profile['kind']}, {profile['calls']} calls\n\n{profile['table']}\n"
        contents[out_dir / "profile.txt"] = table.encode()
    return write_results(contents, "save_benchmark: out_dir")


def _json_value(value: object) -> object:
    # Numpy scalars as numbers and booleans, paths as strings; anything else is a bug to see, not a
    # string to write (a numpy bool once reached bench.json as "True").
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"bench.json cannot hold {type(value).__name__}: {value!r}")
