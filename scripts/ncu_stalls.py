"""Where a kernel's warps wait, from Nsight Compute's source page: the warp-stall samples of each
loop (the instructions between a backward branch and its target) and of the code outside loops, and
their stall reasons. Reads the SASS page as ``STAGES=ncu-rcda make gpu`` exports it
(``ncu --import R.ncu-rep --csv --page source --print-source sass``), plain or gzipped;
docs/transformer_performance.md quotes its output for ``rcda_aggregate``:

    python -m scripts.ncu_stalls results/h100/ncu_rcda_decoder_sass.csv.gz [--out stalls.json]
"""

import argparse
import csv
import gzip
import json
import re
from collections import Counter
from pathlib import Path

SAMPLES = "Warp Stall Sampling (All Samples)"
OUTSIDE = "outside loops"


def read_rows(path: Path) -> list[dict]:
    """The per-instruction rows of a source-page CSV, plain or gzipped (its first line names the kernel)."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"Address"')), None)
    if start is None:
        raise SystemExit(f'{path}: no "Address" header: not an ncu source page exported with --csv')
    rows = list(csv.DictReader(lines[start:]))
    if not rows:
        raise SystemExit(f"{path}: no instructions under the header: export the page of a profiled kernel")
    return rows


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:  # "" or "-" for instructions without samples
        return 0.0


def loops(rows: list[dict]) -> list[tuple[int, int]]:
    """(first, last) address of each loop: a branch to an earlier address, in the order they end."""
    found = []
    for row in rows:
        target = re.search(r"\bBRA(?:\.\w+)*\s+[^;]*?(0x[0-9a-f]+)", row["Source"])
        address = int(row["Address"], 16)
        if target and int(target.group(1), 16) < address:
            found.append((int(target.group(1), 16), address))
    return found


def summarize(rows: list[dict]) -> dict:
    """{"samples": total, "regions": {name: {"share", "samples", "instructions", "stalls": {reason:
    share}}}}: a region is a loop ("loop 1" the first to end) or the code outside loops, before and
    after them; an instruction in nested loops counts for the innermost. "instructions" counts the
    region's SASS instructions; stall shares are of the region's samples, largest first."""
    reasons = [name for name in rows[0] if name.startswith("stall_") and "(Not Issued)" not in name]
    spans = loops(rows)
    regions: dict[str, Counter] = {}
    for row in rows:
        address = int(row["Address"], 16)
        inside = [(last - first, i) for i, (first, last) in enumerate(spans) if first <= address <= last]
        name = f"loop {min(inside)[1] + 1}" if inside else OUTSIDE
        region = regions.setdefault(name, Counter())
        region["samples"] += _number(row[SAMPLES])
        region["instructions"] += 1
        for reason in reasons:
            region[reason] += _number(row[reason])
    total = sum(region["samples"] for region in regions.values())
    summary = {}
    for name, region in regions.items():
        count = region["samples"] or 1.0
        stalls = {
            reason.removeprefix("stall_"): region[reason] / count for reason in reasons if region[reason]
        }
        summary[name] = {
            "share": region["samples"] / total if total else 0.0,
            "samples": region["samples"],
            "instructions": region["instructions"],
            "stalls": dict(sorted(stalls.items(), key=lambda item: -item[1])),
        }
    return {"samples": total, "regions": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sass_csv", type=Path)
    parser.add_argument("--out", type=Path, help="also write the summary there as JSON")
    args = parser.parse_args()
    summary = summarize(read_rows(args.sass_csv))
    for name, region in summary["regions"].items():
        top = ", ".join(f"{reason} {share:.0%}" for reason, share in list(region["stalls"].items())[:5])
        print(f"{name:14s} {region['share']:4.0%} of {summary['samples']:.0f} samples  ({top})")
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
