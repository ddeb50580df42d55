"""``anchordetr-trt``: info, detect, eval, bench, compile and demo from the command line.

Errors in the user's input end the command with one line on stderr and exit code 2 (``--debug``
shows the traceback instead).
"""

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import load_model
from .config import VARIANTS
from .devices import resolve_device
from .errors import AnchorDETRError, InputError
from .export import Shape

PROG = "anchordetr-trt"
_USER_ERRORS = (AnchorDETRError, OSError, ValueError, FloatingPointError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = _parser().parse_args(argv)
    _configure_logging(args.debug)
    try:
        return args.run(args) or 0
    except _USER_ERRORS as err:
        if args.debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="AnchorDETR checkpoints compiled to fast FP16 inference modules.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    common.add_argument("--device", help="cuda, cuda:N or cpu (default: the GPU if there is one)")

    model = _Parser(add_help=False)
    weights = model.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt", type=Path, help="AnchorDETR checkpoint (.pth), e.g. the released R50-DC5")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="deterministic random weights (untrained: for trying the tool)",
    )
    _model_options(model)

    info = commands.add_parser(
        "info", parents=[common], help="versions, GPU, and which backends can run here"
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_info)

    detect = commands.add_parser(
        "detect", parents=[common, model], help="detect objects in images: JSON detections and annotated PNGs"
    )
    detect.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    detect.add_argument(
        "--out", type=Path, default=Path("out/detect"), help="output folder (default out/detect)"
    )
    detect.add_argument("--threshold", type=float, default=0.5, help="minimum score to keep (default 0.5)")
    detect.add_argument("--top-k", type=int, default=100, help="at most this many detections per image")
    detect.add_argument("--batch-size", type=int, default=1, help="images per model call (default 1)")
    _size_options(detect)
    detect.add_argument(
        "--no-draw", action="store_true", help="write detections.json only, no annotated images"
    )
    detect.set_defaults(run=_detect)

    evaluate = commands.add_parser(
        "eval", parents=[common, model], help="COCO bbox mAP on an annotation file"
    )
    evaluate.add_argument("--ann-file", type=Path, required=True, help="COCO instances JSON")
    evaluate.add_argument(
        "--image-dir", type=Path, required=True, help="folder of the annotation file's images"
    )
    evaluate.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    evaluate.add_argument("--max-images", type=int, help="evaluate only the first N images")
    _size_options(evaluate)
    evaluate.add_argument("--out", type=Path, help="also write the results to this JSON file")
    evaluate.set_defaults(run=_eval)

    bench = commands.add_parser(
        "bench", parents=[common], help="latency and throughput against eager fp32 and plain torch.compile"
    )
    bench.add_argument(
        "--out", type=Path, default=Path("out/bench"), help="output folder (default out/bench)"
    )
    bench.add_argument(
        "--ckpt", type=Path, help="checkpoint (default: random weights; speed does not depend on them)"
    )
    bench.add_argument("--variant", choices=list(VARIANTS), help="model variant (default r50-dc5)")
    bench.add_argument(
        "--size", type=_size, action="append", help="input HxW or S for SxS, repeatable (default 800)"
    )
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    bench.add_argument(
        "--backends", nargs="+", choices=["eager-fp32", "torch-compile", "eager", "inductor", "tensorrt"],
        help="what to measure (default on a GPU: eager-fp32 torch-compile inductor tensorrt)",
    )  # fmt: skip
    bench.add_argument("--precision", choices=["fp16", "bf16", "fp32"], help="package backends' precision")
    bench.add_argument("--warmup", type=int, default=10, help="untimed calls per config (default 10)")
    bench.add_argument("--iters", type=int, default=100, help="timed calls per config (default 100)")
    bench.add_argument(
        "--cache-dir", type=Path,
        help="compile cache to use as is (default: OUT/compile_cache, emptied first so compile times are cold)",
    )  # fmt: skip
    bench.add_argument("--no-profile", action="store_true", help="skip the torch.profiler kernel summary")
    bench.add_argument(
        "--no-startup", action="store_true", help="skip timing a second process on the warm cache"
    )
    bench.set_defaults(run=_bench)

    compile_ = commands.add_parser(
        "compile", parents=[common, model],
        help="compile ahead: warm an Inductor cache or save a TensorRT engine in a folder for later processes",
    )  # fmt: skip
    compile_.add_argument(
        "--out", type=Path, required=True, help="folder for the compiled artifacts (the cache dir)"
    )
    compile_.add_argument("--min-shape", type=_shape, default=(1, 320, 320), help="B,H,W (default 1,320,320)")
    compile_.add_argument("--opt-shape", type=_shape, default=(1, 800, 800), help="B,H,W (default 1,800,800)")
    compile_.add_argument(
        "--max-shape", type=_shape, default=(8, 1344, 1344), help="B,H,W (default 8,1344,1344)"
    )
    compile_.add_argument(
        "--warm",
        type=_shape,
        action="append",
        default=[],
        help="also compile for this B,H,W now (repeatable)",
    )
    compile_.set_defaults(run=_compile)

    demo = commands.add_parser(
        "demo", parents=[common], help="detect on generated images with the best backend here (no download)"
    )
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    demo.add_argument("--ckpt", type=Path, help="checkpoint (default: deterministic random weights)")
    demo.add_argument(
        "--variant", choices=list(VARIANTS), help="model variant (default: the checkpoint's, or r50-dc5)"
    )
    demo.add_argument("--num-images", type=int, default=4, help="generated images (default 4)")
    demo.add_argument("--top-k", type=int, default=5, help="detections drawn per image (default 5)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the images and random weights (default 0)")
    demo.set_defaults(run=_demo)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        help="model variant (needed when the checkpoint has no args; default r50-dc5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    parser.add_argument("--backend", choices=["auto", "tensorrt", "inductor", "eager"], default="auto",
                        help="auto: tensorrt, else inductor on a GPU, else eager (default auto)")  # fmt: skip
    parser.add_argument(
        "--precision", choices=["fp16", "bf16", "fp32"], help="default fp16 on a GPU, fp32 on the CPU"
    )
    parser.add_argument("--cache-dir", type=Path, help="compile cache folder (see the compile command)")


def _size_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-size", type=int, default=800, help="resize the short side to this (default 800)"
    )
    parser.add_argument("--max-size", type=int, default=1333, help="cap on the long side (default 1333)")


def _shape(text: str) -> Shape:
    try:
        batch, height, width = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,W such as 1,800,800, got {text!r}") from None
    return (batch, height, width)


def _size(text: str) -> tuple[int, int]:
    try:
        sides = [int(v) for v in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 32:
        raise argparse.ArgumentTypeError(
            f"expected HxW or S (at least 32), such as 800 or 800x1216, got {text!r}"
        )
    return (sides[0], sides[-1])


def _configure_logging(debug: bool) -> None:
    logger = logging.getLogger("anchordetr_trt")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (main() may run many times in one process)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _device(args: argparse.Namespace) -> torch.device:
    return resolve_device(args.device or None)


def _compiled_model(args: argparse.Namespace, *, batch: int, min_size: int = 800, max_size: int = 1333):
    """The command's model compiled for batches of up to ``batch`` images resized to [min_size, max_size]."""
    from .compiled import compile
    from .demo import random_model

    device = _device(args)
    if args.ckpt is not None:
        model = load_model(args.ckpt, variant=args.variant)
    else:
        print(
            f"using deterministic random weights (seed {args.seed}): the model is untrained and its detections "
            "are meaningless; pass --ckpt for real ones",
            file=sys.stderr,
        )
        model = random_model(args.variant or "r50-dc5", args.seed)
    side = min(320, min_size)
    return compile(
        model, backend=args.backend, precision=args.precision, device=device, cache_dir=args.cache_dir,
        min_shape=(1, side, side), opt_shape=(1, max(side, min_size), max(side, min_size)),
        max_shape=(max(8, batch), max(1344, max_size), max(1344, max_size)),
    )  # fmt: skip


def _info(args: argparse.Namespace) -> int:
    from .backends import backend_status, choose_backend
    from .environment import environment

    device = _device(args)
    env, status = environment(), backend_status(device)
    auto = choose_backend("auto", device)[0]
    if args.json:
        backends = {name: {"available": ok, "reason": why} for name, (ok, why) in status.items()}
        print(
            json.dumps(
                {**env, "device": str(device), "backends": backends, "auto": auto}, indent=1
            )
        )
        return 0
    gpu = (
        f"{env['gpu']} (compute {env['gpu_capability']}, {env['gpu_memory_gib']} GiB)"
        if env["gpu"]
        else "none (CPU only)"
    )
    lines = [
        f"anchordetr_trt {env['anchordetr_trt']}  python {env['python']}  {env['platform']}",
        f"torch          {env['torch']} (CUDA {env['cuda'] or 'none'}, cuDNN {env['cudnn'] or 'none'})",
        f"triton         {env['triton'] or 'not installed'}",
        f"torch_tensorrt {env['torch_tensorrt'] or 'not installed'}",
        f"tensorrt       {env['tensorrt'] or 'not installed'}",
        f"GPU            {gpu}",
        f"backends on {device}:",
        *(f"  {name:<9} {'yes' if ok else 'no ':<4} {why}" for name, (ok, why) in status.items()),
        f"backend='auto' picks: {auto}",
    ]
    print("\n".join(lines))
    return 0


def _detect(args: argparse.Namespace) -> int:
    from .detect import detect, find_images, load_image
    from .draw import draw_detections
    from .eval import COCO_CLASSES

    if not 0.0 <= args.threshold <= 1.0 or args.top_k < 1 or args.batch_size < 1:
        raise InputError("--threshold must lie in [0, 1]; --top-k and --batch-size must be >= 1")
    paths = find_images(args.images)
    images = [load_image(p) for p in paths]  # every input is checked before the model is built
    model = _compiled_model(args, batch=args.batch_size, min_size=args.min_size, max_size=args.max_size)
    start = time.perf_counter()
    found = detect(
        model, images, COCO_CLASSES, threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
        min_size=args.min_size, max_size=args.max_size,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    records, names = [], set()
    for path, image, dets in zip(paths, images, found, strict=True):
        record = {"image": str(path), "height": image.height, "width": image.width, "detections": dets}
        if not args.no_draw:
            name = _unique(path.stem, names)
            record["annotated"] = str(args.out / "annotated" / f"{name}.png")
            (args.out / "annotated").mkdir(exist_ok=True)
            draw_detections(image, dets).save(record["annotated"])
        records.append(record)
        best = ", ".join(f"{d['name']} {d['score']:.2f}" for d in dets[:3]) or "-"
        print(f"{path.name}: {len(dets)} detections  {best}")
    (args.out / "detections.json").write_text(json.dumps(records, indent=1))
    print(
        f"{len(images)} images in {seconds:.2f} s with {model.backend} {model.precision} on {model.device}; "
        f"wrote {args.out / 'detections.json'}"
        + ("" if args.no_draw else f" and {args.out / 'annotated'}/*.png")
    )
    return 0


def _unique(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        name, n = f"{stem}_{n}", n + 1
    taken.add(name)
    return name


def _eval(args: argparse.Namespace) -> int:
    from .eval import evaluate_coco

    for path in (args.ann_file, args.image_dir):
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
    if args.batch_size < 1 or (args.max_images is not None and args.max_images < 1):
        raise InputError("--batch-size and --max-images must be >= 1")
    model = _compiled_model(args, batch=args.batch_size, min_size=args.min_size, max_size=args.max_size)
    result = evaluate_coco(
        model, args.ann_file, args.image_dir, batch_size=args.batch_size, max_images=args.max_images,
        min_size=args.min_size, max_size=args.max_size, progress=sys.stderr.isatty(),
    )  # fmt: skip
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
    stats = "  ".join(f"{n} {result[n]:.3f}" if result.get(n) is not None else f"{n} n/a" for n in names)
    print(f"{result['num_images']} images, {model.backend} {model.precision}: {stats}")
    print(f"{result['timing']['images_per_s']:.1f} images/s end to end")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .benchmark import default_configs, format_table, run_benchmark, save_benchmark
    from .errors import BackendUnavailableError

    if args.device is None and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "bench needs a CUDA GPU for real numbers (none is visible); for a CPU smoke run of the harness pass "
            "--device cpu, e.g. --device cpu --variant r50-c5 --size 320 --batch 1 --iters 2"
        )
    device = _device(args)
    if device.type == "cpu":
        print(
            "CPU smoke run: these numbers only exercise the harness; the benchmark needs a GPU",
            file=sys.stderr,
        )
    configs = default_configs(
        device,
        sizes=args.size or [(800, 800)],
        batches=args.batch,
        backends=args.backends,
        precision=args.precision,
    )
    cache_dir = args.cache_dir
    if cache_dir is None:  # our own folder, emptied so that first-call compile times are cold
        cache_dir = args.out / "compile_cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
    report = run_benchmark(
        configs, variant=args.variant, ckpt=args.ckpt, device=device, warmup=args.warmup, iters=args.iters,
        cache_dir=cache_dir, profile=not args.no_profile, startup=not args.no_startup,
        on_progress=lambda partial: save_benchmark(partial, args.out),  # kept if a time limit cuts the run
    )  # fmt: skip
    written = save_benchmark(report, args.out)
    print(format_table(report))
    for check in report["targets"]["checks"]:
        verdict = "meets" if check["met"] else "misses"
        print(
            f"{check['label']}: {check['metric']} {check['value']:.2f} {verdict} the target {check['target']:g}"
        )
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from .compiled import compile
    from .config import variant_name
    from .demo import random_model
    from .environment import environment
    from .export import example_inputs

    device = _device(args)
    if args.backend == "eager" or (args.backend == "auto" and device.type != "cuda"):
        raise InputError(
            "the eager backend has nothing to compile ahead of time: choose --backend inductor or tensorrt on a GPU"
        )
    out = args.out.resolve()
    start = time.perf_counter()
    model = (
        load_model(args.ckpt, variant=args.variant)
        if args.ckpt
        else random_model(args.variant or "r50-dc5", args.seed)
    )
    compiled = compile(
        model, backend=args.backend, precision=args.precision, device=device, cache_dir=out,
        min_shape=args.min_shape, opt_shape=args.opt_shape, max_shape=args.max_shape,
    )  # fmt: skip
    for shape in args.warm:
        compiled(*example_inputs(shape, device, compiled.dtype))
    seconds = time.perf_counter() - start
    manifest = {
        "backend": compiled.backend,
        "precision": compiled.precision,
        "weights": str(args.ckpt) if args.ckpt else f"deterministic random (seed {args.seed})",
        "variant": variant_name(model.config),
        "min_shape": args.min_shape,
        "opt_shape": args.opt_shape,
        "max_shape": args.max_shape,
        "warmed_shapes": args.warm,
        "compile_s": seconds,
        "environment": environment(),
        "reuse": f"anchordetr_trt.compile(ckpt, backend={compiled.backend!r}, precision={compiled.precision!r}, "
        f"min_shape={args.min_shape}, opt_shape={args.opt_shape}, max_shape={args.max_shape}, cache_dir={str(out)!r})",
    }
    (out / "compile.json").write_text(json.dumps(manifest, indent=1))
    print(
        f"compiled {compiled.backend} {compiled.precision} in {seconds:.1f} s into {out}; see {out / 'compile.json'}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.num_images < 1 or args.top_k < 1:
        raise InputError("--num-images and --top-k must be >= 1")
    run_demo(
        args.out, ckpt=args.ckpt, variant=args.variant, num_images=args.num_images, seed=args.seed,
        top_k=args.top_k, device=args.device,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
