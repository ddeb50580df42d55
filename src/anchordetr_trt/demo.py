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
from .checkpoint import Checkpoint, load_model
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
from .weights import random_model

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
    model = random_model(variant or "r50-dc5", seed) if ckpt is None else load_model(ckpt, variant=variant)
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
    first_s = run_s = time.perf_counter() - start
    if device.type == "cuda":  # the first run included lazy compilation and CUDA warm-up
        start = time.perf_counter()
        found = run()
        run_s = time.perf_counter() - start

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
        "timing_s": {"build": build_s, "compile": compile_s, "first_run": first_s, "run": run_s},
        "ms_per_image": 1000 * run_s / len(images),
        "environment": environment(),
        "images": records,
    }
    files[out_dir / "detections.json"] = json.dumps(records, indent=1).encode()
    files[out_dir / "report.json"] = json.dumps(report, indent=1).encode()
    files[out_dir / "report.md"] = _markdown(report).encode()
    write_results(files, "run_demo: out_dir", root=out_dir)
    log(_table(records))
    log(
        f"{len(images)} images {shape[1]}x{shape[2]} in {run_s:.2f} s ({report['ms_per_image']:.0f} ms/image; "
        f"first run {first_s:.2f} s, compile {compile_s:.2f} s)"
    )
    if ckpt is None:
        log(
            "NOTE: random weights detect nothing meaningful; pass CKPT=path/to/checkpoint.pth for real detections"
        )
    return report


def _table(records: list[dict]) -> str:
    rows = [("image", "size", "top detections (name score)")]
    for record in records:
        tops = ", ".join(f"{d['name']} {d['score']:.2f}" for d in record["detections"][:3]) or "-"
        rows.append((Path(record["image"]).name, f"{record['width']}x{record['height']}", tops))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


def _markdown(report: dict) -> str:
    timing = report["timing_s"]
    lines = [
        "# anchordetr_trt demo",
        "",
        f"- Weights: {report['weights']}",
        f"- Model: AnchorDETR {report['variant']}; backend `{report['backend']}` {report['precision']} on "
        f"{report['device']}",
        f"- Input: {len(report['images'])} generated images in one batch padded to "
        f"{report['input_shape'][1]}x{report['input_shape'][2]}; top {report['top_k']} detections per image",
        f"- Time: build {timing['build']:.2f} s, compile {timing['compile']:.2f} s, first run "
        f"{timing['first_run']:.2f} s, steady run {timing['run']:.2f} s ({report['ms_per_image']:.0f} ms/image)",
        "",
        "| backend | runs here | why |",
        "|---|---|---|",
        *(
            f"| {name} | {'yes' if b['available'] else 'no'} | {b['reason']} |"
            for name, b in report["backends"].items()
        ),
        "",
        "| image | size | detections (name score) |",
        "|---|---|---|",
    ]
    for record in report["images"]:
        dets = ", ".join(f"{d['name']} {d['score']:.2f}" for d in record["detections"]) or "-"
        name = Path(record["annotated"]).name
        lines.append(f"| [{name}](annotated/{name}) | {record['width']}x{record['height']} | {dets} |")
    if report["random_weights"]:
        lines += [
            "",
            "**Random weights detect nothing meaningful.** Run `make demo CKPT=path/to/checkpoint.pth`.",
        ]
    return "\n".join(lines) + "\n"
