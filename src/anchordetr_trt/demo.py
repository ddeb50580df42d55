"""The demo behind ``make demo``: detect on generated images with the best backend available here.

Without a checkpoint the model has deterministic random weights (same seed, same weights), so the
whole pipeline runs offline; such a model detects nothing meaningful, and the report says so.
"""

import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .backends import backend_status
from .checkpoint import Checkpoint
from .compiled import compile
from .config import variant_name
from .detect import detect
from .devices import resolve_device
from .draw import draw_detections
from .environment import environment
from .eval import COCO_CLASSES, make_synthetic_coco
from .images import load_image
from .outputs import check_results, write_results
from .transforms import resized_size
from .weights import load_or_random

MIN_SIZE, MAX_SIZE = 320, 512  # small inputs keep the demo at about a minute on two CPU cores


def run_demo(
    out_dir: str | os.PathLike,
    *,
    ckpt: Checkpoint | None = None,
    variant: str | None = None,
    num_images: int = 4,
    seed: int = 0,
    top_k: int = 5,
    device: str | torch.device | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Generate ``num_images`` images, detect with ``compile(backend="auto")`` and write under ``out_dir``:
    ``inputs/`` (the images), ``annotated/*.png``, ``detections.json``, ``report.json`` and ``report.md``
    (result files: see ``outputs.write_results``; the paths in them are relative to ``out_dir``).
    Returns the report. ``ckpt`` None means deterministic random weights of ``variant`` (default r50-dc5)."""
    out_dir = Path(out_dir)
    names = ("detections.json", "report.json", "report.md")
    check_results([out_dir / name for name in names], "run_demo: out_dir", root=out_dir)
    device = resolve_device(device)
    if ckpt is None:
        weights = (
            f"deterministic random weights (seed {seed}): an untrained model, its detections are meaningless"
        )
    else:
        weights = f"checkpoint {ckpt}" if isinstance(ckpt, str | os.PathLike) else "checkpoint (in memory)"
    log(f"weights: {weights}")

    ann_file, image_dir = make_synthetic_coco(
        out_dir / "inputs", num_images=num_images, seed=seed, min_size=160, max_size=320
    )
    # The images this call wrote, as its annotation file lists them (not whatever the folder holds).
    paths = [image_dir / image["file_name"] for image in json.loads(ann_file.read_text())["images"]]
    images = [load_image(p) for p in paths]

    start = time.perf_counter()
    model = load_or_random(ckpt, variant=variant, seed=seed)
    build_s = time.perf_counter() - start
    status = backend_status(device)
    # One shape for the whole batch, so that a compiled backend builds a single engine or graph.
    # Not below MIN_SIZE: an image whose long side hits MAX_SIZE first has a shorter short side, and the
    # compiled module pads such images up to min_shape.
    height = max(MIN_SIZE, *(resized_size(im.height, im.width, MIN_SIZE, MAX_SIZE)[0] for im in images))
    width = max(MIN_SIZE, *(resized_size(im.height, im.width, MIN_SIZE, MAX_SIZE)[1] for im in images))
    shape = (len(images), height, width)
    start = time.perf_counter()
    compiled = compile(
        model,
        backend="auto",
        min_shape=(len(images), MIN_SIZE, MIN_SIZE),  # one batch size: one graph to compile
        opt_shape=shape,
        max_shape=shape,
        device=device,
    )
    compile_s = time.perf_counter() - start
    log(f"backend: {compiled.backend} {compiled.precision} on {device} ({status[compiled.backend][1]})")

    def run() -> list[list[dict]]:
        return detect(
            compiled, images, COCO_CLASSES, threshold=0.0, top_k=top_k, batch_size=len(images),
            min_size=MIN_SIZE, max_size=MAX_SIZE,
        )  # fmt: skip

    start = time.perf_counter()
    found = run()
    first_s, steady_s = time.perf_counter() - start, None
    if device.type == "cuda":  # the first run included lazy compilation and CUDA warm-up
        start = time.perf_counter()
        found = run()
        steady_s = time.perf_counter() - start
    run_s = first_s if steady_s is None else steady_s

    records, files = [], {}
    for path, image, dets in zip(paths, images, found, strict=True):
        annotated, png = Path("annotated") / f"{path.stem}.png", io.BytesIO()
        draw_detections(image, dets).save(png, format="PNG")
        files[out_dir / annotated] = png.getvalue()
        records.append(
            {"image": path.relative_to(out_dir).as_posix(), "annotated": annotated.as_posix(),
             "height": image.height, "width": image.width, "detections": dets}
        )  # fmt: skip
    report = {
        "weights": weights,
        "random_weights": ckpt is None,
        "variant": variant_name(model.config),
        "device": str(device),
        "backend": compiled.backend,
        "precision": compiled.precision,
        "backends": {name: {"available": ok, "reason": why} for name, (ok, why) in status.items()},
        "input_shape": list(shape),
        "top_k": top_k,
        # steady_run: a second run, on a GPU only (None on the CPU, where nothing is warmed lazily).
        "timing_s": {"build": build_s, "compile": compile_s, "first_run": first_s, "steady_run": steady_s},
        "ms_per_image": 1000 * run_s / len(images),
        "environment": environment(),
        "images": records,
    }
    files[out_dir / "detections.json"] = json.dumps(records, indent=1).encode()
    files[out_dir / "report.json"] = json.dumps(report, indent=1).encode()
    files[out_dir / "report.md"] = _markdown(report).encode()
    write_results(files, "run_demo: out_dir", root=out_dir)
    log(_table(records))
    log(f"{len(images)} images in one batch padded to {shape[1]}x{shape[2]} (HxW): {_timing(report)}")
    if ckpt is None:
        log(
            "NOTE: random weights detect nothing meaningful; pass CKPT=path/to/checkpoint.pth for real detections"
        )
    return report


def _timing(report: dict) -> str:
    """Build, compile and run times; a steady run only where one was measured (on a GPU)."""
    timing, per_image = report["timing_s"], f"{report['ms_per_image']:.0f} ms/image"
    runs = (
        f"run {timing['first_run']:.2f} s ({per_image})"
        if timing["steady_run"] is None
        else f"first run {timing['first_run']:.2f} s, steady run {timing['steady_run']:.2f} s ({per_image})"
    )
    return f"build {timing['build']:.2f} s, compile {timing['compile']:.2f} s, {runs}"


def _size(record: dict) -> str:
    return f"{record['height']}x{record['width']}"


def _table(records: list[dict]) -> str:
    rows = [("image", "size (HxW)", "top detections (name score)")]
    for record in records:
        tops = ", ".join(f"{d['name']} {d['score']:.2f}" for d in record["detections"][:3]) or "-"
        rows.append((Path(record["image"]).name, _size(record), tops))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


def _markdown(report: dict) -> str:
    lines = [
        "# anchordetr_trt demo",
        "",
        f"- Weights: {report['weights']}",
        f"- Model: AnchorDETR {report['variant']}; backend `{report['backend']}` {report['precision']} on "
        f"{report['device']}",
        f"- Input: {len(report['images'])} generated images in one batch padded to "
        f"{report['input_shape'][1]}x{report['input_shape'][2]} (HxW); top {report['top_k']} detections per image",
        f"- Time: {_timing(report)}",
        "",
        "| backend | runs here | why |",
        "|---|---|---|",
        *(
            f"| {name} | {'yes' if b['available'] else 'no'} | {b['reason']} |"
            for name, b in report["backends"].items()
        ),
        "",
        "| image | size (HxW) | detections (name score) |",
        "|---|---|---|",
    ]
    for record in report["images"]:
        dets = ", ".join(f"{d['name']} {d['score']:.2f}" for d in record["detections"]) or "-"
        name = Path(record["annotated"]).name
        lines.append(f"| [{name}](annotated/{name}) | {_size(record)} | {dets} |")
    if report["random_weights"]:
        lines += [
            "",
            "**Random weights detect nothing meaningful.** Run `make demo CKPT=path/to/checkpoint.pth`.",
        ]
    return "\n".join(lines) + "\n"
