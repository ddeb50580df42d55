"""The `make gpu` accuracy stage: the trained synthetic-shapes AnchorDETR (``scripts.train_synthetic``)
scored on its val split in eager fp32 (the reference: the PyTorch reference ops, TF32 off), eager
fp16, inductor fp16, eager bf16 and inductor bf16.

Each configuration gets ``evaluate_coco`` (the 12 COCO stats) and a ``parity_report`` against the
reference on the same batches: the matched-detection rate (of the reference's detections with score
>= 0.3, the share the other configuration also has with the same label, IoU >= 0.9 and a score
within 0.02), the largest output differences and the count of NaN/inf values. During the eager fp16
run, forward hooks record each module's largest |output| against fp16's largest finite value, 65504.
Writes OUT/accuracy.json and OUT/accuracy.md after every configuration, so a cut-off run keeps what it
measured. AP figures in the report are COCO points (AP x 100). Exits 1 when a target is missed.

    python -m scripts.gpu_accuracy --out DIR [--ckpt .cache/train/anchordetr_synthetic.pth] [--batch-size 16]
"""

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

import anchordetr_trt as at
from anchordetr_trt.config import variant_name
from anchordetr_trt.eval import evaluate_coco, parity_report
from anchordetr_trt.testing import TOLERANCES
from scripts.train_synthetic import DEFAULT_CKPT, Recipe, git_commit, val_settings

FP16_MAX = 65504.0
REFERENCE = "eager_fp32"
CONFIGS = {  # name -> (backend, precision)
    "eager_fp16": ("eager", "fp16"),
    "inductor_fp16": ("inductor", "fp16"),
    "eager_bf16": ("eager", "bf16"),
    "inductor_bf16": ("inductor", "bf16"),
}
# The fp16 match rule of anchordetr_trt.testing (IoU 0.9, score within 0.02), on detections scoring >= 0.3.
MATCHING = {
    "match_min_score": 0.3,
    "iou_threshold": TOLERANCES["fp16"].iou_threshold,
    "match_max_score_diff": TOLERANCES["fp16"].score_atol,
}
TARGETS = {  # docs/accuracy.md; AP in COCO points
    "ap_fp32": 40.0,
    "ap50_fp32": 70.0,
    "abs_delta_ap": {"eager_fp16": 0.1, "inductor_fp16": 0.1, "eager_bf16": 0.3, "inductor_bf16": 0.3},
    "matched_rate": {"eager_fp16": 0.99, "inductor_fp16": 0.99},
}


@contextmanager
def activation_peaks(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Forward hooks on every submodule of ``model``; yields {module name: largest |output| seen}
    (0-d float32 tensors, kept on the device so that no hook synchronizes)."""
    peaks: dict[str, Tensor] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            for tensor in _tensors(output):
                peak = tensor.detach().abs().amax().float()
                peaks[name] = peak if name not in peaks else torch.maximum(peaks[name], peak)

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    try:
        yield peaks
    finally:
        for handle in handles:
            handle.remove()


def _tensors(value: object) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.numel():
            yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def headroom(peaks: Mapping[str, Tensor], top: int = 15) -> dict:
    """Summary of per-module peaks against FP16_MAX: the largest, the ``top`` modules, and all."""
    values = {name: float(peak) for name, peak in peaks.items()}
    finite = sorted(((v, n) for n, v in values.items() if math.isfinite(v)), reverse=True)
    return {
        "max_abs": finite[0][0] if finite else None,
        "module": finite[0][1] if finite else None,
        "fraction_of_fp16_max": finite[0][0] / FP16_MAX if finite else None,
        "non_finite_modules": sorted(n for n, v in values.items() if not math.isfinite(v)),
        "top": [{"module": name, "max_abs": value} for value, name in finite[:top]],
        "modules": {n: v if math.isfinite(v) else None for n, v in values.items()},  # JSON has no inf/NaN
    }


def _points(value: float | None) -> float | None:
    return None if value is None else 100 * value


def compare(
    reference: Callable,
    model: Callable,
    name: str,
    ann_file: Path,
    image_dir: Path,
    settings: dict,
    reference_stats: dict | None,
) -> dict:
    """``evaluate_coco`` of ``model`` and its ``parity_report`` against ``reference``, summarized."""
    entry: dict = {"problems": []}
    try:
        result = evaluate_coco(model, ann_file, image_dir, **settings)
        entry["stats"] = {
            k: v for k, v in result.items() if k not in ("per_class_AP", "num_images", "timing")
        }
        entry["per_class_AP"], entry["timing"] = result["per_class_AP"], result["timing"]
    except FloatingPointError as error:
        entry["stats"] = None
        entry["problems"].append(str(error).splitlines()[0])
    report = parity_report(
        reference, model, ann_file, image_dir, names=(REFERENCE, name), **MATCHING, **settings
    )
    agreement, numeric = report["agreement"], report["numeric"]
    stats = entry["stats"]
    entry.update(
        ap=_points(stats and stats["AP"]),
        ap50=_points(stats and stats["AP50"]),
        delta_ap=None
        if stats is None or reference_stats is None
        else 100 * (stats["AP"] - reference_stats["AP"]),
        delta={k: _points(v) for k, v in report["delta"].items()},
        matched_rate=agreement["matched"] / agreement["compared"] if agreement["compared"] else None,
        matched=agreement["matched"],
        compared=agreement["compared"],
        max_score_diff=agreement["max_score_diff"],
        max_abs_diff={key: numeric[key]["max_abs_diff"] for key in ("pred_logits", "pred_boxes")},
        mean_abs_diff={key: numeric[key]["mean_abs_diff"] for key in ("pred_logits", "pred_boxes")},
        non_finite=report["models"][name]["non_finite_values"],
        worst_images=agreement["worst"],
    )
    entry["problems"] += report["problems"]
    return entry


def check_targets(report: dict) -> list[str]:
    """One sentence per missed target (empty when all are met): the trained model's AP, and each
    configuration the run was asked for (``report["configs"]``, all of them where it is absent)."""
    missed = []
    for key in ("ap_fp32", "ap50_fp32"):
        if report.get(key) is None or report[key] < TARGETS[key]:
            missed.append(f"{key} {_fmt(report.get(key))} < {TARGETS[key]}")
    for name in report.get("configs", CONFIGS):
        entry = report.get(name)
        if entry is None:
            missed.append(f"{name} was not measured")
            continue
        if entry["non_finite"]:
            missed.append(f"{name} returned {entry['non_finite']} NaN/inf values")
        bound = TARGETS["abs_delta_ap"][name]
        if entry["delta_ap"] is None or abs(entry["delta_ap"]) > bound:
            missed.append(f"{name} |dAP| {_fmt(entry['delta_ap'])} > {bound}")
        rate = TARGETS["matched_rate"].get(name)
        if rate is not None and (entry["matched_rate"] is None or entry["matched_rate"] < rate):
            missed.append(f"{name} matched rate {_fmt(entry['matched_rate'])} < {rate}")
    return missed


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    names = [REFERENCE, *(name for name in CONFIGS if name in report)]
    stats = {REFERENCE: report["reference"]["stats"], **{n: report[n]["stats"] for n in names[1:]}}
    lines = [
        "# Accuracy of the FP16/BF16 backends on a trained AnchorDETR",
        "",
        f"{report['variant']} trained from scratch for {_fmt(report['train_minutes'], '.1f')} min on the synthetic "
        f"shapes set; val split: {report['val']['num_images']} images (`{report['val']['ann_file']}`), "
        f"long side {report['val']['input_size']}. Commit {report['commit']}. AP in COCO points (x100).",
        "",
    ]
    if report["missed_targets"]:
        lines += ["**Missed targets:**", "", *(f"- {m}" for m in report["missed_targets"]), ""]
    else:
        lines += ["All targets met.", ""]
    lines += ["| COCO bbox | " + " | ".join(names) + " |", "|---" + "|---:" * len(names) + "|"]
    for stat in next(s for s in stats.values() if s is not None):
        cells = [_fmt(_points(s and s[stat]), ".2f") for s in stats.values()]
        lines.append(f"| {stat} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Against {REFERENCE}: matched = of its detections with score >= {MATCHING['match_min_score']}, the share "
        f"with a same-label detection at IoU > {MATCHING['iou_threshold']} and score within "
        f"{MATCHING['match_max_score_diff']}.",
        "",
        "| config | dAP | matched | max abs diff logits | max abs diff boxes | max score diff | NaN/inf |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names[1:]:
        e = report[name]
        lines.append(
            f"| {name} | {_fmt(e['delta_ap'], '+.3f')} | {_fmt(e['matched_rate'], '.4f')} ({e['matched']}/{e['compared']}) "
            f"| {_fmt(e['max_abs_diff']['pred_logits'], '.2e')} | {_fmt(e['max_abs_diff']['pred_boxes'], '.2e')} "
            f"| {_fmt(e['max_score_diff'], '.2e')} | {e['non_finite']} |"
        )
    peaks = report.get("fp16_activations")
    if peaks:
        lines += [
            "",
            f"## FP16 headroom (eager fp16, largest |output| per module; fp16 max {FP16_MAX:.0f})",
            "",
            f"Largest: {_fmt(peaks['max_abs'], '.1f')} in `{peaks['module']}` "
            f"({_fmt(peaks['fraction_of_fp16_max'] and 100 * peaks['fraction_of_fp16_max'], '.2f')}% of the fp16 range)."
            + (
                f" Non-finite in: {', '.join(peaks['non_finite_modules'])}."
                if peaks["non_finite_modules"]
                else ""
            ),
            "",
            "| module | max abs | share of 65504 |",
            "|---|---:|---:|",
            *(
                f"| `{t['module']}` | {t['max_abs']:.1f} | {100 * t['max_abs'] / FP16_MAX:.3f}% |"
                for t in peaks["top"]
            ),
        ]
    problems = [f"{name}: {p}" for name in names[1:] for p in report[name]["problems"]]
    if problems:
        lines += ["", "**Problems:**", "", *(f"- {p}" for p in problems)]
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    report["missed_targets"] = check_targets(report)
    (out / "accuracy.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out / "accuracy.md").write_text(markdown(report))


def run(
    reference: nn.Module,
    builders: Mapping[str, Callable[[], Callable]],
    ann_file: Path,
    image_dir: Path,
    settings: dict,
    meta: dict,
    out: Path,
    *,
    hooked: str = "eager_fp16",
    log: Callable = print,
) -> dict:
    """Score ``reference`` and each built configuration; the report is rewritten after each one.
    ``hooked``: the configuration (an eager module, ``.runner`` or itself) whose activations are recorded."""
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_coco(reference, ann_file, image_dir, **settings)
    stats = {k: v for k, v in result.items() if k not in ("per_class_AP", "num_images", "timing")}
    report = {
        **meta,
        "configs": list(builders),
        "ap_fp32": _points(stats["AP"]),
        "ap50_fp32": _points(stats["AP50"]),
        "val": {**meta.get("val", {}), "ann_file": str(ann_file), "num_images": result["num_images"]},
        "matching": MATCHING,
        "reference": {
            "name": REFERENCE,
            "stats": stats,
            "per_class_AP": result["per_class_AP"],
            "timing": result["timing"],
        },
    }
    log(f"{REFERENCE}: AP {report['ap_fp32']:.2f} AP50 {report['ap50_fp32']:.2f}")
    write(report, out)
    for name, build in builders.items():
        start = time.perf_counter()
        model = build()
        build_s = time.perf_counter() - start
        if name == hooked:
            with activation_peaks(getattr(model, "runner", model)) as peaks:
                entry = compare(reference, model, name, ann_file, image_dir, settings, stats)
            report["fp16_activations"] = headroom(peaks)
        else:
            entry = compare(reference, model, name, ann_file, image_dir, settings, stats)
        entry["build_s"] = round(build_s, 1)
        report[name] = entry
        log(
            f"{name}: AP {_fmt(entry['ap'], '.2f')} dAP {_fmt(entry['delta_ap'], '+.3f')} matched "
            f"{_fmt(entry['matched_rate'], '.4f')} non-finite {entry['non_finite']} (built in {build_s:.0f} s)"
        )
        write(report, out)
        del model
    return report


def fp32_reference(ckpt: Path) -> nn.Module:
    """The checkpoint's model on the GPU with plain PyTorch ops in true fp32 (PyTorch lets cuDNN use TF32
    unless told not to): what every configuration is compared with."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return at.load_model(ckpt, device="cuda").set_fused_ops(False)


def trained_recipe(ckpt: Path, data_dir: Path | None) -> tuple[Recipe, Path]:
    """The data recipe and val folder the checkpoint was trained with (its training log beside it), so
    that the val split and input size match; the defaults where there is no log."""
    log = ckpt.with_suffix(".json")
    trained = json.loads(log.read_text()) if log.is_file() else {}
    recipe = Recipe(**trained["recipe"]) if "recipe" in trained else Recipe()
    return recipe, data_dir or Path(trained.get("data_dir", ".cache/train"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where the val split is (default: as trained)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS)
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_accuracy: no CUDA GPU visible: this stage compares GPU backends", file=sys.stderr)
        return 2
    if not args.ckpt.is_file():
        print(
            f"gpu_accuracy: no trained checkpoint at {args.ckpt}: run python -m scripts.train_synthetic first "
            "(the `train` stage of make gpu) or pass --ckpt",
            file=sys.stderr,
        )
        return 2
    wanted = [name for name in args.configs.split(",") if name]
    unknown = sorted(set(wanted) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs {','.join(unknown)} unknown: choose from {','.join(CONFIGS)}")
    recipe, data_dir = trained_recipe(args.ckpt, args.data_dir)
    ann_file, image_dir = recipe.val_split(data_dir)
    ckpt_args = torch.load(args.ckpt, map_location="cpu", weights_only=True)["args"]
    size = recipe.input_size
    short = size * recipe.min_size // recipe.max_size  # the shortest side preprocess can give
    shapes = {"min_shape": (1, short, short), "opt_shape": (args.batch_size, size, size)}
    shapes["max_shape"] = shapes["opt_shape"]

    reference = fp32_reference(args.ckpt)
    builders = {
        name: (
            lambda backend=backend, precision=precision: at.compile(
                args.ckpt, backend=backend, precision=precision, **shapes
            )
        )
        for name, (backend, precision) in CONFIGS.items()
        if name in wanted
    }
    meta = {
        "variant": variant_name(reference.config),
        "train_minutes": ckpt_args.get("train_minutes"),
        "train_steps": ckpt_args.get("steps"),
        "commit": git_commit(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "val": {"input_size": size, "batch_size": args.batch_size},
    }
    start = time.perf_counter()
    report = run(
        reference, builders, ann_file, image_dir, val_settings(recipe, args.batch_size), meta, Path(args.out)
    )
    print(f"accuracy stage took {time.perf_counter() - start:.0f} s")
    print((Path(args.out) / "accuracy.md").read_text())
    return 1 if report["missed_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
