"""The table of ``results/README.md``: one row per figure of each GPU's result set, with the commit and
the command that produced it.

A result set is a folder of files named by configuration (``bench.json``, ``stream.json``, ...), as
``scripts/gpu.sh`` writes them, with ``runs.tsv``: one line per stage (stage, commit, the files it
wrote, the command). Figures are read from the files; a file that no line of ``runs.tsv`` names is
listed with an unknown commit.

    python -m scripts.results_table results/h100 results/h200 --write results/README.md
    python -m scripts.results_table OUT   # the table of one `make gpu` run, printed
"""

import argparse
import csv
import json
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

Row = tuple[str, str]  # (metric, value)
RUNS = "runs.tsv"
RUNS_FIELDS = ("stage", "commit", "files", "command")

HEADER = """# Results

The measurements kept per GPU, each file named by what it measures: `h100/` (H100 80GB HBM3) and
`h200/` (H200: the H100's chip with faster memory; its figures are not the H100's), on torch 2.11,
triton 3.6 and Python 3.12 on the GPU machine. Each file was made at the commit given, by a stage of
`make gpu` (`scripts/gpu.sh`) or by the command `runs.tsv` gives for it (stage "-"); the commits
differ between files, and an A/B file compares two. How the figures are measured and what they mean:
docs/performance.md and docs/accuracy.md. Older measurements are in git history.

This file is written by `python -m scripts.results_table results/h100 results/h200 --write
results/README.md`.
"""


def read_runs(folder: Path) -> dict[str, dict]:
    """File name -> its line of ``runs.tsv`` (the last line that names it)."""
    path = folder / RUNS
    if not path.is_file():
        return {}
    by_file = {}
    with path.open(newline="") as handle:
        for line in csv.DictReader(handle, delimiter="\t"):
            for name in (line.get("files") or "").split():
                by_file[name] = line
    return by_file


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def bench_rows(path: Path) -> Iterator[Row]:
    report = _json(path)
    for row in report["results"]:
        if row["status"] == "ok":
            yield (
                f"{row['label']}, {row['height']}x{row['width']}, batch {row['batch']}",
                f"{row['latency_ms']['median']:.2f} ms median, {row['throughput_img_s']:.1f} img/s",
            )
    for name, peak in report.get("flops", {}).get("peak_tflops", {}).items():
        yield f"measured peak {name}", f"{peak['tflops']:.1f} TFLOP/s"


def parts_rows(path: Path) -> Iterator[Row]:
    for rate in _json(path).get("flops", {}).get("rows", []):
        for part, figures in rate.get("parts", {}).items():
            yield (
                f"{rate['label']}, {rate['height']}x{rate['width']}, batch {rate['batch']}: {part}",
                f"{figures['ms']:.2f} ms, {figures['tflops']:.0f} TFLOP/s "
                f"({figures['percent_of_peak']:.0f}% of peak)",
            )


def stream_rows(path: Path) -> Iterator[Row]:
    stream = _json(path)
    yield "cold stream: compile() to the last output, empty cache", f"{stream['cold_s']:.1f} s"
    yield "cold stream: steady throughput", f"{stream['steady_img_per_s']:.0f} img/s"
    yield "cold stream: second process, warm cache", f"{stream['warm_second_process_s']:.1f} s"
    calls = stream["random_shape_calls"]
    yield (
        f"random shapes: compiles / kernel variants / cache files after the first of {calls:,} calls",
        f"{stream['compiles_after_first']} / {stream.get('kernel_variants_compiled_after_first', '-')} / "
        f"{stream['cache_files_written_after_first']}",
    )
    yield (
        "random shapes: GPU memory reserved, largest growth over call 100",
        f"{stream['memory_growth_max_pct']:+.1f}%",
    )
    yield "eager fp32: first pass over the stream / second", f"{stream['eager_first_over_second_pass']:.2f}"
    for batch, figures in stream["latency_800"].items():
        yield (
            f"800x800 in the stream's range, {batch.replace('_', ' ')}",
            f"{figures['median_ms']:.2f} ms, {figures['img_per_s']:.0f} img/s",
        )


def warm_rows(path: Path) -> Iterator[Row]:
    report = _json(path)
    one, threads = (report["settings"][name]["seconds"] for name in ("1 worker", "default"))
    yield (
        f"compile()'s custom-kernel warm-up, cold ({report['variants']} variants): 1 worker / threads, "
        f"median of {len(one)} / {len(threads)}",
        f"{statistics.median(one):.1f} s / {statistics.median(threads):.1f} s",
    )


def accuracy_rows(path: Path) -> Iterator[Row]:
    report = _json(path)
    yield (
        f"trained {report['variant']}: AP / AP50, eager fp32",
        f"{report['ap_fp32']:.2f} / {report['ap50_fp32']:.2f}",
    )
    for name, result in report.items():
        if isinstance(result, dict) and "delta_ap" in result:
            yield (
                f"trained {report['variant']}: {name.replace('_', ' ')} against eager fp32",
                f"dAP {result['delta_ap']:+.3f}, matched {100 * result['matched_rate']:.1f}%",
            )


def train_rows(path: Path) -> Iterator[Row]:
    train = _json(path)
    yield (
        f"training {train['variant']} on the synthetic set",
        f"{train['steps']} steps in {train['train_minutes']:.1f} min, val AP {100 * train['val']['AP']:.2f}",
    )


def check_rows(path: Path) -> Iterator[Row]:
    results = _json(path)["results"]
    counts = {status: sum(r["status"] == status for r in results) for status in ("pass", "fail", "skip")}
    yield (
        "anchordetr-trt check",
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped",
    )


def bench_ops_rows(path: Path) -> Iterator[Row]:
    results = _json(path)["results"]
    for op in dict.fromkeys(r["op"] for r in results):
        speedups = [r["speedup"] for r in results if r["op"] == op]
        yield f"fused op {op} against its PyTorch subgraph", f"{min(speedups):.1f}x to {max(speedups):.1f}x"


def parity_rows(path: Path) -> Iterator[Row]:
    report = _json(path)
    agreement = report["agreement"]
    yield (
        f"parity {' against '.join(report['names'])}, {report['num_images']} images",
        f"{agreement['matched']} of {agreement['compared']} detections matched, "
        f"logits within {report['numeric']['pred_logits']['max_abs_diff']:.2g}",
    )


def tests_rows(path: Path, label: str = "GPU tests") -> Iterator[Row]:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    failed = int(suite.get("failures")) + int(suite.get("errors"))
    yield label, f"{tests - skipped - failed} passed, {failed} failed, {skipped} skipped"


AB_FILE = re.compile(r"ab_(\w+)_(old|new)\.json")  # ab_<change>_<tree>.json, `STAGES=ab make gpu`


def ab_rows(path: Path) -> Iterator[Row]:
    """An A/B of the transformer (scripts/ab_transformer.py) named by its file, ab_<change>_<tree>.json:
    one file per code tree, tagged old or new."""
    report = _json(path)
    commit = f" ({report['commit']})" if report.get("commit") else ""
    tree = f"A/B {AB_FILE.fullmatch(path.name).group(1)}, {report['tag']} tree{commit}"
    for batch, figures in report.get("whole_model", {}).items():
        runs = figures["runs"]
        yield (
            f"{tree}: whole model, 800x800, batch {batch.removeprefix('b')}",
            " / ".join(f"{run['median_ms']:.2f} ms, {run['img_s']:.0f} img/s" for run in runs),
        )
    for batch, parts in report.get("parts", {}).items():
        yield (
            f"{tree}: encoder + decoder, 800x800, batch {batch.removeprefix('b')}",
            " + ".join(f"{min(parts[p]['ms']):.2f}" for p in ("encoder", "decoder")) + " ms",
        )


READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    "bench.json": bench_rows,
    "bench_parts.json": parts_rows,
    "stream.json": stream_rows,
    "train.json": train_rows,
    "accuracy.json": accuracy_rows,
    "check.json": check_rows,
    "bench_ops.json": bench_ops_rows,
    "parity.json": parity_rows,
    "warm_kernels.json": warm_rows,
    "gpu_tests.xml": tests_rows,
    "gpu_tests_ops.xml": lambda path: tests_rows(path, "GPU tests of the ops and their plugins"),
    "gpu_tests_parts.xml": lambda path: tests_rows(
        path, "GPU test of the parts' timing (run apart from the suite)"
    ),
}


def reader(name: str) -> Callable[[Path], Iterator[Row]] | None:
    """The reader of a result file named ``name``, if this table knows its kind: a name it knows, an
    A/B file, or a known name with labels after it (``accuracy_four_configs.json``: an earlier run kept
    beside the current one)."""
    if AB_FILE.fullmatch(name):
        return ab_rows
    stem, dot, suffix = name.partition(".")
    while stem:
        if found := READERS.get(stem + dot + suffix):
            return found
        stem = stem.rpartition("_")[0]
    return None


def table(folders: list[Path]) -> str:
    """The markdown table of every figure of ``folders`` (one result set each), then each file."""
    lines = ["| metric | value | GPU | commit | command |", "| --- | --- | --- | --- | --- |"]
    files = ["| GPU | file | commit | command |", "| --- | --- | --- | --- |"]
    for folder in folders:
        gpu, runs = folder.name.upper(), read_runs(folder)
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != RUNS):
            run = runs.get(path.name, {"stage": "-", "commit": "?", "command": "?"})
            command = f"`{run['command']}`".replace("|", "\\|")  # a pipe would end the table's cell
            stage = command if run["stage"] == "-" else f"`STAGES={run['stage']} make gpu`"
            files.append(f"| {gpu} | `{path.name}` | {run['commit']} | {command} |")
            if read := reader(path.name):
                for metric, value in read(path):
                    lines.append(f"| {metric} | {value} | {gpu} | {run['commit']} | {stage} |")
    return "\n".join([*lines, "", "Each file, with the command its stage ran:", "", *files]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="result sets, one folder per GPU")
    parser.add_argument(
        "--write", type=Path, help="write the README (header and table) here instead of printing"
    )
    args = parser.parse_args(argv)
    missing = [str(folder) for folder in args.folders if not folder.is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)}")
    text = table(args.folders)
    if args.write:
        args.write.write_text(f"{HEADER}\n{text}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
