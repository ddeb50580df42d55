"""``write_report``: a parity report as JSON (every number) and markdown (for people)."""

import json
import os
from pathlib import Path

from anchordetr_trt.errors import InputError, check_path
from anchordetr_trt.outputs import check_results, write_results

from .scoring import STAT_NAMES

_REPORT_KEYS = ("names", "models", "settings", "agreement", "delta", "problems", "num_images", "ann_file")


def write_report(report: dict, out_dir: str | os.PathLike, *, stem: str = "parity") -> tuple[Path, Path]:
    """Write ``report`` (from ``parity_report``) to ``out_dir/<stem>.json`` and ``<stem>.md``; returns both
    paths. They are result files (``outputs.write_results``): InputError, before anything is written,
    if either is there and was not written by an earlier call, or changed since."""
    out_dir = Path(check_path("out_dir", out_dir))
    if not isinstance(stem, str) or not stem or Path(stem).name != stem or stem.startswith("."):
        raise InputError(f"stem must be a plain file name without a suffix, such as 'parity', got {stem!r}")
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    check_results([json_path, md_path], "write_report: out_dir")
    missing = [key for key in _REPORT_KEYS if key not in report] if isinstance(report, dict) else _REPORT_KEYS
    if missing:
        raise InputError(
            f"report lacks {', '.join(map(repr, missing))}: pass the dict that parity_report() returns"
        )
    try:
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise InputError(
            "report has NaN or infinite values, which JSON cannot hold: pass the dict that "
            "parity_report() returns (it writes None where a value is undefined)"
        ) from None
    except TypeError as error:
        raise InputError(
            f"report holds a value JSON cannot hold ({error}): pass the dict that parity_report() returns"
        ) from None
    try:
        markdown = _markdown(report)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as error:
        raise InputError(
            f"report is not laid out as parity_report() returns it ({type(error).__name__}: {error}): pass that dict"
        ) from None
    write_results({json_path: text.encode(), md_path: markdown.encode()}, "write_report: out_dir")
    return json_path, md_path


def _markdown(report: dict) -> str:
    name_a, name_b = report["names"]
    models, settings, agreement = report["models"], report["settings"], report["agreement"]
    stats_a, stats_b = models[name_a]["stats"], models[name_b]["stats"]
    lines = [
        f"# Parity: {name_a} vs {name_b}",
        "",
        f"{report['num_images']} images of `{report['ann_file']}`, resized to min_size={settings['min_size']}, "
        f"max_size={settings['max_size']}; top {settings['top_k']} detections per image.",
        "",
    ]
    if report["problems"]:
        lines += ["**Problems:**", "", *(f"- {problem}" for problem in report["problems"]), ""]
    lines += [f"| COCO bbox | {name_a} | {name_b} | {name_b} - {name_a} |", "|---|---:|---:|---:|"]
    for stat in STAT_NAMES:
        cells = [_cell(stats and stats[stat]) for stats in (stats_a, stats_b)]
        lines.append(f"| {stat} | {cells[0]} | {cells[1]} | {_cell(report['delta'][stat], '+.4f')} |")
    lines += [
        "",
        "## Detection agreement",
        "",
        f"Share of {_compared(settings, name_a)} per image that {name_b}'s top {settings['top_k']} has "
        f"with the same label and IoU > {settings['iou_threshold']}, each of {name_b}'s detections matched "
        f"once: {_shares(agreement, report['num_images'])} {agreement['matched']} of "
        f"{agreement['compared']} detections matched. Largest score change of a matched detection: "
        f"{agreement['max_score_diff']:.3g}.",
        "",
    ]
    if agreement["worst"]:
        lines += ["| image | agreement |", "|---|---:|"]
        lines += [
            f"| {w['file_name']} (id {w['image_id']}) | {w['agreement']:.2f} |" for w in agreement["worst"]
        ]
        lines.append("")
    lines += [
        "## Raw outputs",
        "",
        "| output | max abs diff | mean abs diff | values compared |",
        "|---|---:|---:|---:|",
    ]
    for key, diff in report["numeric"].items():
        lines.append(
            f"| {key} | {_cell(diff['max_abs_diff'], '.3g')} | {_cell(diff['mean_abs_diff'], '.3g')} "
            f"| {diff['values_compared']} |"
        )
    lines += [
        "",
        "| model | NaN/inf values | images with NaN/inf | time in model (s) |",
        "|---|---:|---:|---:|",
    ]
    for name in (name_a, name_b):
        model = models[name]
        lines.append(
            f"| {name} | {model['non_finite_values']} | {len(model['non_finite_images'])} | {model['model_s']:.2f} |"
        )
    if stats_a and stats_b:
        lines += ["", *_per_class_lines(stats_a["per_class_AP"], stats_b["per_class_AP"], name_a, name_b)]
    return "\n".join(lines) + "\n"


def _per_class_lines(ap_a: dict, ap_b: dict, name_a: str, name_b: str, limit: int = 10) -> list[str]:
    changes = sorted(ap_a, key=lambda name: -abs(ap_b[name] - ap_a[name]))[:limit]
    lines = [
        f"## Per-class AP: the {len(changes)} largest changes",
        "",
        f"| class | {name_a} | {name_b} | {name_b} - {name_a} |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {c} | {_cell(ap_a[c])} | {_cell(ap_b[c])} | {_cell(ap_b[c] - ap_a[c], '+.4f')} |" for c in changes
    ]
    return lines


def _cell(value: float | None, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _compared(settings: dict, name: str) -> str:
    """Which of model ``name``'s detections the agreement compares, in words."""
    if settings.get("match_min_score") is not None:
        return f"{name}'s detections scoring at least {settings['match_min_score']}"
    return f"{name}'s top {settings['match_top_k']} detections"


def _shares(agreement: dict, num_images: int) -> str:
    if agreement["mean"] is None:
        return f"no image of {num_images} had a detection to compare;"
    return (
        f"mean {agreement['mean']:.4f}, min {agreement['min']:.4f} over the {agreement['images_compared']} "
        f"of {num_images} images with detections to compare, {agreement['images_below_1']} below 1;"
    )
