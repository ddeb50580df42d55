"""The `make gpu` onnx stage: ``export_onnx`` on this machine's torch (2.11 on the GPU machine; CI
covers 2.14) and onnxruntime parity of each file with the eager model, written to OUT/onnx.json.

r50-dc5 (deterministic random weights) over (1,320,320)..(8,1344,1344) in fp32 and fp16. The fp32
file runs in onnxruntime's CPU provider against eager fp32 (reference ops, TF32 off) at three shapes
that differ in batch, aspect and padding (targets: logits within 1e-4, boxes within 1e-5); the fp16
file against eager fp16 (reference ops) on the GPU, reported. Exits 1 when a target is missed or a
step fails; the JSON is written after each file, so a cut-off run keeps what it measured.

    python -m scripts.gpu_onnx --out DIR [--variant r50-dc5] [--precisions fp32 fp16]
"""

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import anchordetr_trt as at
from anchordetr_trt.environment import environment, installed_version
from anchordetr_trt.export import example_inputs
from anchordetr_trt.weights import random_model

RANGE = {"min_shape": (1, 320, 320), "opt_shape": (1, 800, 800), "max_shape": (8, 1344, 1344)}
# (batch, height, width) and each image's unpadded (height, width).
CASES = {
    "1x320x320": ((1, 320, 320), [(320, 320)]),
    "3x416x640": ((3, 416, 640), [(416, 640), (300, 640), (416, 500)]),
    "2x800x544": ((2, 800, 544), [(800, 544), (613, 401)]),
}
TARGETS = {"fp32": {"pred_logits": 1e-4, "pred_boxes": 1e-5}}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def case_inputs(shape, sizes):
    images, _ = example_inputs(shape)
    mask = torch.ones(shape, dtype=torch.bool)
    for index, (height, width) in enumerate(sizes):
        mask[index, :height, :width] = False
    return images.masked_fill(mask[:, None], 0.0), mask


def check_file(variant: str, precision: str, folder: Path, device: torch.device) -> dict:
    import onnxruntime as ort

    path = folder / f"{variant}-{precision}.onnx"
    start = time.perf_counter()
    at.export_onnx(random_model(variant), path, precision=precision, **RANGE)
    row = {
        "export_s": round(time.perf_counter() - start, 1),
        "size_mb": round(path.stat().st_size / 1e6, 1),
        "files_written": sorted(p.name for p in folder.iterdir() if p.name.startswith(path.name)),
        "reference": f"eager {precision} (reference ops) on {device}",
        "cases": {},
    }
    dtype = DTYPES[precision]
    model = random_model(variant).to(device).set_precision(dtype).set_fused_ops(False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for name, (shape, sizes) in CASES.items():
        images, mask = case_inputs(shape, sizes)
        with torch.no_grad():
            expected = model(images.to(device, dtype), mask.to(device))
        got = session.run(None, {"images": images.to(dtype).numpy(), "mask": mask.numpy()})
        diffs = {
            key: (torch.from_numpy(value) - expected[key].float().cpu()).abs().max().item()
            for key, value in zip(("pred_logits", "pred_boxes"), got, strict=True)
        }
        row["cases"][name] = {
            "max_abs_diff": diffs,
            "finite": all(bool(torch.isfinite(torch.from_numpy(v)).all()) for v in got),
        }
    targets = TARGETS.get(precision)
    row["targets"] = targets
    row["ok"] = all(case["finite"] for case in row["cases"].values()) and (
        targets is None
        or all(case["max_abs_diff"][k] <= t for case in row["cases"].values() for k, t in targets.items())
    )
    path.unlink()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--variant", default="r50-dc5")
    parser.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=["fp32", "fp16"])
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    report = {
        "tool": "anchordetr-trt scripts/gpu_onnx.py",
        "environment": environment()
        | {
            name: installed_version(name) for name in ("onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu")
        },
        "variant": args.variant,
        "range": RANGE,
        "files": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        for precision in args.precisions:
            if precision == "fp16" and device.type != "cuda":
                continue  # eager fp16 is for GPUs; CI's tests cover the CPU
            try:
                row = check_file(args.variant, precision, Path(folder), device)
            except Exception as error:
                row = {
                    "ok": False,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                }
            ok &= row["ok"]
            report["files"][precision] = row
            (args.out / "onnx.json").write_text(json.dumps(report, indent=1))
            print(
                f"{args.variant} {precision}: {json.dumps({k: v for k, v in row.items() if k != 'traceback'})}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
