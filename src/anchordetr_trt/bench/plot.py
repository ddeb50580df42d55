"""The benchmark's PNG: matplotlib (the ``plot`` extra), imported only when a plot is drawn."""

import os

from matplotlib.figure import Figure

from .report import row_shape


def plot_benchmark(report: dict, path: str | os.PathLike) -> None:
    """Median latency (whisker to p99) and throughput per backend and shape as a PNG (log scale where the
    values span more than a factor of 10)."""
    ok = [r for r in report["results"] if r["status"] == "ok"]
    shapes = sorted({row_shape(r) for r in ok}, key=lambda s: (s[1] * s[2], s))
    labels = list(dict.fromkeys(r["label"] for r in ok))
    fig = Figure(figsize=(13, 5))  # no pyplot: no global backend or figure registry to manage
    ax_lat, ax_thr = fig.subplots(1, 2)
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        rows = {row_shape(r): r for r in ok if r["label"] == label}
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
