"""``anchordetr-trt``: info, detect, eval, bench, compile, demo, check and export from the command line.

Errors in the user's input end the command with one line on stderr, in terms of the command's flags,
and exit code 2; any other failure is one line and exit code 1. ``--debug`` shows the traceback instead.
A stdout that stops taking lines (a reader that closed the pipe, a full disk) does not stop the work:
the files are finished, and one line says what happened to stdout (exit code 141 for a closed pipe,
1 otherwise, unless the command failed on its own).
Every flag is checked, and every output location, before any work; torch is imported only by the
commands (``--help`` and ``--version`` stay fast).
"""

import argparse
import json
import logging
import math
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__, export_cmd
from .config import VARIANTS, AnchorDETRConfig
from .errors import AnchorDETRError, InputError

PROG = "anchordetr-trt"
_USER_ERRORS = (AnchorDETRError, OSError, ValueError, FloatingPointError)
DEVICE_HELP = "cpu, cuda or cuda:N (default: the GPU if there is one)"

# The library's argument names -> this command line's flags, to word the library's errors in flags.
_FLAGS = {
    "variant": "--variant",
    "ckpt": "--ckpt",
    "device": "--device",
    "backend": "--backend",
    "precision": "--precision",
    "cache_dir": "--cache-dir",
    "min_shape": "--min-shape",
    "opt_shape": "--opt-shape",
    "max_shape": "--max-shape",
    "min_size": "--min-size",
    "max_size": "--max-size",
    "top_k": "--top-k",
    "threshold": "--threshold",
    "batch_size": "--batch-size",
    "max_images": "--max-images",
    "num_images": "--num-images",
    "seed": "--seed",
    "builder": "--builder",
}
# name='a', name='a' or 'b', name='a', 'b' or 'c', name=3: an argument as the Python API spells it.
_ASSIGNMENT = re.compile(r"\b(\w+)=('[^']*'(?:(?:, | or )'[^']*')*|[^\s,;:)]+)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from .outputs import guarded_stdout, stdout_problem

    args = _parser().parse_args(argv)
    _configure_logging(args.debug)
    _quiet_pillow()
    with guarded_stdout() as stdout:  # a closed pipe or a full disk on stdout does not stop the work
        code = _run(args)
    if stdout.error is None:
        return code
    message, stdout_code = stdout_problem(stdout.error)
    print(
        f"{PROG} {args.command}: {message}{'' if code else '; the command itself finished'}", file=sys.stderr
    )
    return code or stdout_code


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: {_one_line(err, args)}", file=sys.stderr)
        return 2 if isinstance(err, _USER_ERRORS) else 1


def _one_line(err: Exception, args: argparse.Namespace) -> str:
    message = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, _USER_ERRORS):
        return f"error: {type(err).__name__}: {message[:300]} (rerun with --debug for the traceback)"
    return f"error: {in_flags(message, getattr(err, 'argument', None), args)}"


def in_flags(message: str, argument: str | None, args: argparse.Namespace) -> str:
    """``message`` with each ``name=value`` of an argument this command has as a flag written
    ``--flag value``; prefixed with the flag of ``argument`` where the message does not name it."""

    def as_flag(match: re.Match) -> str:
        name, value = match.groups()
        if name not in _FLAGS or not hasattr(args, name):
            return match.group(0)
        return f"{_FLAGS[name]} {value.replace(chr(39), '')}"

    message = _ASSIGNMENT.sub(as_flag, message)
    flag = _FLAGS.get(argument or "")
    if flag and hasattr(args, argument) and flag not in message:
        message = f"{flag}: {message}"
    return message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="AnchorDETR checkpoints compiled to fast FP16 inference modules.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    debug = _Parser(add_help=False)
    # SUPPRESS: the subcommand's default must not undo a --debug given before the subcommand.
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common = _Parser(add_help=False, parents=[debug])
    common.add_argument("--device", type=_device_name, help=DEVICE_HELP)

    weights = _Parser(add_help=False)
    source = weights.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="AnchorDETR checkpoint (.pth), e.g. the released R50-DC5")
    source.add_argument(
        "--random-weights",
        action="store_true",
        help="deterministic random weights (untrained: for trying the tool)",
    )
    _weights_options(weights)
    model = _Parser(add_help=False, parents=[weights])
    _model_options(model)
    # detect and eval read a compile cache; compile writes one, in --out (it refuses --cache-dir).
    cached = _Parser(add_help=False)
    cached.add_argument("--cache-dir", type=Path, help="compile cache folder (see the compile command)")

    info = commands.add_parser(
        "info", parents=[common], help="versions, GPU, and which backends can run here"
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_info)

    detect = commands.add_parser(
        "detect",
        parents=[common, model, cached],
        help="detect objects in images: JSON detections and annotated PNGs",
    )
    detect.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    detect.add_argument(
        "--out", type=Path, default=Path("out/detect"),
        help="output folder (default out/detect): new, empty, or an earlier detect output, which is replaced",
    )  # fmt: skip
    detect.add_argument(
        "--threshold", type=_fraction, default=0.5, help="minimum score to keep (default 0.5)"
    )
    detect.add_argument("--top-k", type=_top_k, default=100, help="at most this many detections per image")
    detect.add_argument("--batch-size", type=_positive, default=1, help="images per model call (default 1)")
    _size_options(detect)
    detect.add_argument(
        "--no-draw", action="store_true", help="write the detections only, no annotated images"
    )
    detect.add_argument(
        "--skip-bad", action="store_true", help="report unreadable image files and go on (default: stop)"
    )
    detect.add_argument("--quiet", action="store_true", help="no progress bar and no line per image")
    detect.set_defaults(run=_detect)

    evaluate = commands.add_parser(
        "eval", parents=[common, model, cached], help="COCO bbox mAP on an annotation file"
    )
    evaluate.add_argument("--ann-file", type=Path, required=True, help="COCO instances JSON")
    evaluate.add_argument(
        "--image-dir", type=Path, required=True, help="folder of the annotation file's images"
    )
    evaluate.add_argument("--batch-size", type=_positive, default=8, help="images per model call (default 8)")
    evaluate.add_argument("--max-images", type=_positive, help="evaluate only the first N images")
    _size_options(evaluate)
    evaluate.add_argument("--out", type=Path, help="also write the results to this JSON file (a new file)")
    evaluate.add_argument(
        "--skip-bad", action="store_true", help="leave out unreadable images and list them (default: stop)"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=_eval)

    bench = commands.add_parser(
        "bench", parents=[common], help="latency and throughput against eager fp32 and plain torch.compile"
    )
    bench.add_argument(
        "--out", type=Path, default=Path("out/bench"),
        help="output folder (default out/bench): new, empty, or an earlier bench output, which is replaced",
    )  # fmt: skip
    bench.add_argument("--ckpt", help="checkpoint (default: random weights; speed does not depend on them)")
    bench.add_argument(
        "--variant", choices=list(VARIANTS), type=str.lower, help="model variant (default r50-dc5)"
    )
    bench.add_argument(
        "--size", type=_size, action="append", help="input HxW or S for SxS, repeatable (default 800)"
    )
    bench.add_argument(
        "--batch", type=_positive, nargs="+", help="batch sizes (default 1 8 32 on a GPU, 1 8 on the CPU)"
    )
    bench.add_argument(
        "--backends", nargs="+", choices=["eager-fp32", "torch-compile", "eager", "inductor", "tensorrt"],
        help="what to measure (default on a GPU: eager-fp32 torch-compile inductor tensorrt)",
    )  # fmt: skip
    bench.add_argument("--precision", choices=["fp16", "bf16", "fp32"], help="package backends' precision")
    bench.add_argument("--warmup", type=_count, default=10, help="untimed calls per config (default 10)")
    bench.add_argument("--iters", type=_positive, default=100, help="timed calls per config (default 100)")
    bench.add_argument(
        "--cache-dir", type=Path,
        help="compile cache to use as is (default: a new temporary one, so that compile times are cold)",
    )  # fmt: skip
    bench.add_argument("--no-profile", action="store_true", help="skip the torch.profiler kernel summary")
    bench.add_argument(
        "--no-startup", action="store_true", help="skip timing a second process on the warm cache"
    )
    bench.add_argument(
        "--parts", action="store_true",
        help="also time the backbone, encoder and decoder on their own, for their TFLOP/s (inductor: a "
        "compile of each part at each shape)",
    )  # fmt: skip
    bench.set_defaults(run=_bench)

    compile_ = commands.add_parser(
        "compile", parents=[common, model],
        help="compile ahead: warm an Inductor cache or save a TensorRT engine in a folder for later processes",
    )  # fmt: skip
    compile_.add_argument(
        "--out", type=Path, required=True,
        help="folder for the compiled artifacts (the cache dir): new, empty, or an earlier compile output",
    )  # fmt: skip
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
    demo.add_argument(
        "--out", type=Path, default=Path("out/demo"),
        help="output folder (default out/demo): new, empty, or an earlier demo output, which is replaced",
    )  # fmt: skip
    demo.add_argument("--ckpt", help="checkpoint (default: deterministic random weights)")
    demo.add_argument(
        "--variant",
        choices=list(VARIANTS),
        type=str.lower,
        help="model variant (default: the checkpoint's, or r50-dc5)",
    )
    demo.add_argument("--num-images", type=_positive, default=4, help="generated images (default 4)")
    demo.add_argument("--top-k", type=_top_k, default=5, help="detections drawn per image (default 5)")
    demo.add_argument(
        "--seed", type=_seed, default=0, help="seed of the images and random weights (default 0)"
    )
    demo.set_defaults(run=_demo)

    check = commands.add_parser(
        "check", parents=[common], help="parity suite on this machine: fused ops, backends, export, TensorRT"
    )
    check.add_argument("--ckpt", help="checkpoint to check (default: seeded random weights)")
    check.add_argument(
        "--variant",
        choices=list(VARIANTS),
        type=str.lower,
        help="model variant (default: the checkpoint's, or r50-dc5)",
    )
    check.add_argument(
        "--backends", nargs="+", choices=["eager", "inductor", "tensorrt"], default=["eager", "inductor", "tensorrt"],
        help="backends to compare with eager fp32 (default: all; those that cannot run here are skipped)",
    )  # fmt: skip
    check.add_argument(
        "--precision", choices=["fp16", "bf16", "fp32"], help="default fp16 on a GPU, fp32 on the CPU"
    )
    check.add_argument(
        "--only", nargs="+", choices=["ops", "backends", "export", "tensorrt"],
        default=["ops", "backends", "export", "tensorrt"], help="run these groups only (default: all)",
    )  # fmt: skip
    check.add_argument(
        "--out", type=Path,
        help="also write check.json into this folder: new, empty, or an earlier check output, which is replaced",
    )  # fmt: skip
    check.set_defaults(run=_check)

    export_cmd.register(commands, parents=[debug, weights], shape=_shape)
    return parser


def _weights_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        type=str.lower,
        help="model variant (needed when the checkpoint has no args; default r50-dc5)",
    )
    parser.add_argument("--seed", type=_seed, default=0, help="seed of --random-weights (default 0)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["auto", "tensorrt", "inductor", "eager"], default="auto",
                        help="auto: tensorrt, else inductor on a GPU, else eager (default auto)")  # fmt: skip
    parser.add_argument(
        "--precision", choices=["fp16", "bf16", "fp32"], help="default fp16 on a GPU, fp32 on the CPU"
    )


def _size_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-size", type=_side, default=800, help="resize the short side to this (default 800)"
    )
    parser.add_argument("--max-size", type=_side, default=1333, help="cap on the long side (default 1333)")


# Flag types: argparse prefixes each message with the flag ("argument --top-k: ...").
_MAX_SEED = 2**64 - 1  # torch.manual_seed's largest
# The benchmark's largest side, twice the detection commands' (4096): larger ones only fail later, on
# memory (a 8192x8192 float32 image alone is 0.8 GB) or, far larger, on an integer overflow in torch.
_LONGEST_BENCH_SIDE = 8192


def _integer(text: str, low: int, what: str, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1, "an integer >= 1")


def _count(text: str) -> int:
    return _integer(text, 0, "an integer >= 0")


def _seed(text: str) -> int:
    return _integer(text, 0, f"an integer in 0..{_MAX_SEED}", _MAX_SEED)


def _top_k(text: str) -> int:
    config = AnchorDETRConfig()  # every variant has its queries and classes
    most = config.num_queries * config.num_classes
    return _integer(text, 1, f"an integer in 1..{most} (queries x classes)", most)


def _side(text: str) -> int:
    return _integer(
        text, 32, f"a side in pixels, an integer in 32..{_LONGEST_RESIZED_SIDE}", _LONGEST_RESIZED_SIDE
    )


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _device_name(text: str) -> str:
    if re.fullmatch(r"cpu|cuda(:\d+)?", text.strip().lower()) is None:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N (N a GPU index), got {text!r}")
    return text.strip().lower()


def _shape(text: str) -> tuple[int, int, int]:
    try:
        batch, height, width = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        batch = height = width = 0
    if batch < 1 or min(height, width) < 32:
        raise argparse.ArgumentTypeError(
            f"expected B,H,W with B >= 1 and H, W >= 32, such as 1,800,800, got {text!r}"
        )
    return (batch, height, width)


def _size(text: str) -> tuple[int, int]:
    try:
        sides = [int(v) for v in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 32 or max(sides) > _LONGEST_BENCH_SIDE:
        raise argparse.ArgumentTypeError(
            f"expected HxW or S (32..{_LONGEST_BENCH_SIDE}), such as 800 or 800x1216, got {text!r}"
        )
    return (sides[0], sides[-1])


def _quiet_pillow() -> None:
    """No Pillow warning of a large image (over PIL.Image.MAX_IMAGE_PIXELS, a possible decompression
    bomb) between the command's lines: such an image is read (an aerial photo may be that large);
    past twice the limit Pillow refuses it, and the command says so in its one line."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _configure_logging(debug: bool) -> None:
    logger = logging.getLogger("anchordetr_trt")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    # pycocotools' summary table goes to this logger: shown with --debug only.
    logging.getLogger("anchordetr_trt.eval.scoring").setLevel(logging.DEBUG if debug else logging.WARNING)
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


# Checks shared by the commands, all run before any work.


def _device(args: argparse.Namespace):
    """--device as a torch.device that exists here (the library's check; main words its errors in flags)."""
    from .devices import check_device, resolve_device

    return check_device(resolve_device(args.device))


def _check_backend(args: argparse.Namespace, device) -> None:
    """--backend and --precision can run on ``device``, said in flags (compile() would say it in arguments)."""
    import torch

    from .backends import backend_status, choose_backend

    if args.backend in ("inductor", "tensorrt") and device.type != "cuda":
        where = "none is visible" if not torch.cuda.is_available() else "--device is the CPU"
        raise InputError(f"--backend {args.backend} needs a CUDA GPU; {where}: use --backend eager")
    status = backend_status(device)
    if args.backend != "auto" and not status[args.backend][0]:
        raise InputError(
            f"--backend {args.backend} cannot run here ({status[args.backend][1]}): "
            f"use --backend {choose_backend('auto', device)[0]}"
        )
    _check_precision(args, device)


def _check_precision(args: argparse.Namespace, device) -> None:
    if device.type == "cpu" and args.precision not in (None, "fp32"):
        raise InputError(
            f"--precision {args.precision} needs a CUDA GPU; on the CPU use --precision fp32 (the default there)"
        )


def _check_sizes(args: argparse.Namespace) -> None:
    if args.max_size < args.min_size:
        raise InputError(
            f"--max-size {args.max_size} is below --min-size {args.min_size}: the long side's cap must be "
            "at least the short side's size"
        )


def _check_cache_dir(args: argparse.Namespace, out: Path | None = None) -> None:
    from .outputs import check_writable

    if args.cache_dir is None:
        return
    if args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise InputError(f"--cache-dir {args.cache_dir} is a file: pass a folder")
    if out is not None and args.cache_dir.resolve().is_relative_to(out.resolve()):
        raise InputError(
            f"--cache-dir {args.cache_dir} lies inside --out {out}, whose earlier outputs each run replaces: "
            "pass a cache folder outside it"
        )
    check_writable(args.cache_dir, "--cache-dir")


def _local_files(*paths: str | Path | None) -> list[Path]:
    """The given paths that are files here (a checkpoint may also be a name or URL)."""
    return [Path(p) for p in paths if p is not None and Path(p).exists()]


def _compiled_model(
    args: argparse.Namespace,
    device,
    *,
    batch: int,
    min_size: int = 800,
    max_size: int = 1333,
    largest_side: int = 0,
):
    """The command's model compiled for batches of up to ``batch`` images resized to [min_size, max_size]
    (``largest_side``: the longest side of the command's images once resized, which the official resize
    lets pass ``max_size`` for very long images, e.g. 10x2000 becomes 7x1400 for 800/1333)."""
    from .checkpoint import load_model
    from .compiled import compile
    from .weights import random_model

    if args.ckpt is not None:
        model = load_model(args.ckpt, variant=args.variant)
    else:
        print(
            f"using deterministic random weights (seed {args.seed}): the model is untrained and its detections "
            "are meaningless; pass --ckpt for real ones",
            file=sys.stderr,
        )
        model = random_model(args.variant or "r50-dc5", args.seed)
    side, longest = min(320, min_size), max(1344, max_size, largest_side)
    return compile(
        model, backend=args.backend, precision=args.precision, device=device, cache_dir=args.cache_dir,
        min_shape=(1, side, side), opt_shape=(1, max(side, min_size), max(side, min_size)),
        max_shape=(max(8, batch), longest, longest),
    )  # fmt: skip


# The longest resized side detect and eval compile for: the official resize lets a long strip pass
# --max-size (10x2000 becomes 7x1400); a far longer one would widen the range (square, as one size
# serves both orientations) until its CUDA-graph buffers take gigabytes and rcda_aggregate's kernel
# gives way to its reference (past 4096 pixels with DC5).
_LONGEST_RESIZED_SIDE = 4096


def _resized_side(path: Path, size: tuple[int, int], args: argparse.Namespace, leave_out: str | None) -> int:
    """The longest side of an image of ``size`` (h, w) once resized; InputError past the limit, naming
    ``leave_out``, the flag that would leave the image out (None where it is given)."""
    from .transforms import resized_size

    side = max(resized_size(*size, args.min_size, args.max_size))
    if side > _LONGEST_RESIZED_SIDE:
        raise InputError(
            f"{path} resizes to a side of {side} pixels (--min-size {args.min_size} --max-size "
            f"{args.max_size}), over the {_LONGEST_RESIZED_SIDE} this command compiles for: crop it"
            + (f", or pass {leave_out}" if leave_out else "")
        )
    return side


# The commands.


def _info(args: argparse.Namespace) -> int:
    from .backends import backend_status, choose_backend
    from .devices import resolve_device
    from .environment import environment

    env = environment()
    try:
        device = _device(args)
    except AnchorDETRError as err:  # info still reports the machine; it says why nothing runs on --device
        device, problem = resolve_device(args.device), in_flags(str(err), "device", args)
        status, auto = {}, None
    else:
        problem = None
        status = backend_status(device)
        auto = choose_backend("auto", device)[0]
    if args.json:
        backends = {name: {"available": ok, "reason": why} for name, (ok, why) in status.items()}
        report = {**env, "device": str(device), "backends": backends, "auto": auto}
        print(json.dumps(report | ({"device_problem": problem} if problem else {}), indent=1))
        return 0
    gpu = (
        f"{env['gpu']} (compute {env['gpu_capability']}, {env['gpu_memory_gib']} GiB)"
        if env["gpu"]
        else "none visible (CPU only)"
    )
    lines = [
        f"anchordetr_trt {env['anchordetr_trt']}  python {env['python']}  {env['platform']}",
        f"torch          {env['torch']} (CUDA {env['cuda'] or 'none'}, cuDNN {env['cudnn'] or 'none'})",
        f"triton         {env['triton'] or 'not installed'}",
        f"torch_tensorrt {env['torch_tensorrt'] or 'not installed'}",
        f"tensorrt       {env['tensorrt'] or 'not installed'}",
        f"GPU            {gpu}",
    ]
    if problem:
        lines.append(f"backends on {device}: none ({problem.removeprefix(f'--device {args.device}: ')})")
    else:
        lines += [
            f"backends on {device}:",
            *(f"  {name:<9} {'yes' if ok else 'no ':<4} {why}" for name, (ok, why) in status.items()),
            f"backend='auto' picks: {auto}",
        ]
    print("\n".join(lines))
    return 0


def _detect(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .detect import detect_files, find_images
    from .draw import draw_detections
    from .eval import COCO_CLASSES
    from .images import check_image
    from .outputs import RunFolder

    _check_sizes(args)
    _check_cache_dir(args, args.out)
    device = _device(args)
    _check_backend(args, device)
    skipped: list[tuple[Path, str]] = []

    def skip(path: Path, err: Exception | str) -> None:
        skipped.append((path, str(err)))
        tqdm.write(f"skipped {path}: {err}", file=sys.stderr)

    paths = find_images(args.images, on_passed_over=skip)

    readable, largest_side = [], 0
    for path in paths:  # headers only, so that a file that is no image stops the run before the model loads
        try:
            side = _resized_side(
                path, check_image(path), args, None if args.skip_bad else "--skip-bad to leave it out"
            )
            readable.append(path)
            largest_side = max(largest_side, side)
        except InputError as err:
            if not args.skip_bad:
                raise
            skip(path, err)
    if not readable:
        raise InputError(f"none of the {len(paths)} image files could be read (see the lines above)")

    with RunFolder(args.out, inputs=[*args.images, *_local_files(args.ckpt)]) as folder:
        model = _compiled_model(
            args, device, batch=args.batch_size, min_size=args.min_size, max_size=args.max_size,
            largest_side=largest_side,
        )  # fmt: skip
        stream_path, records, names = folder.path / "detections.jsonl", [], set()
        if not args.no_draw:
            (folder.path / "annotated").mkdir(exist_ok=True)  # left empty by a run stopped early
        start = time.perf_counter()
        results = detect_files(
            model, readable, COCO_CLASSES, batch_size=args.batch_size, threshold=args.threshold,
            top_k=args.top_k, min_size=args.min_size, max_size=args.max_size,
            on_unreadable=skip if args.skip_bad else None,
        )  # fmt: skip
        show = not args.quiet and sys.stderr.isatty()
        try:
            with (
                stream_path.open("w") as stream,
                tqdm(
                    total=len(readable), unit="img", desc="detect", file=sys.stderr, disable=not show
                ) as bar,
            ):
                for path, image, dets in results:
                    # The image is the upright one (EXIF orientation applied), as are the boxes.
                    record = {
                        "image": str(path),
                        "height": image.height,
                        "width": image.width,
                        "detections": dets,
                    }
                    if not args.no_draw:
                        drawing = folder.path / "annotated" / f"{_unique(path.stem, names)}.png"
                        draw_detections(image, dets).save(drawing)
                        record["annotated"] = str(folder.final(drawing))
                    stream.write(json.dumps(record) + "\n")
                    stream.flush()  # each image's result is kept as soon as it is done
                    records.append(record)
                    bar.update(1)
                    if not args.quiet:
                        best = ", ".join(f"{d['name']} {d['score']:.2f}" for d in dets[:3]) or "-"
                        tqdm.write(f"{path.name}: {len(dets)} detections  {best}", file=sys.stdout)
        except KeyboardInterrupt:
            done = f"the {len(records)} images done so far are in {folder.final(stream_path)}"
            print(f"interrupted: {done}", file=sys.stderr)
            raise
        seconds = time.perf_counter() - start
        if not records:  # --skip-bad passed over every image: no run to put in place of the earlier one
            raise InputError(f"none of the {len(paths)} image files could be read (see the lines above)")
        (folder.path / "detections.json").write_text(json.dumps(records, indent=1))
        if skipped:
            (folder.path / "skipped.txt").write_text("".join(f"{path}\t{why}\n" for path, why in skipped))
    print(
        f"{len(records)} images in {seconds:.2f} s with {model.backend} {model.precision} on {model.device}; "
        f"wrote {args.out / 'detections.json'}"
        + ("" if args.no_draw else f" and {args.out / 'annotated'}/*.png")
        + (
            f"; skipped {len(skipped)} files (unreadable, or no images), listed in {args.out / 'skipped.txt'}"
            if skipped
            else ""
        )
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
    from .eval.annotations import load_dataset
    from .outputs import check_results, write_results

    for flag, path, is_kind, kind, what in (
        ("--ann-file", args.ann_file, Path.is_file, "file", "a COCO annotation file (instances_*.json)"),
        ("--image-dir", args.image_dir, Path.is_dir, "folder", "the folder of its images"),
    ):
        if not is_kind(path):
            problem = "does not exist" if not path.exists() else f"is not a {kind}"
            raise InputError(f"{flag} {path} {problem}: pass {what}")
    _check_sizes(args)
    _check_cache_dir(args)
    if args.out is not None:
        check_results(
            [args.out], writer="eval", inputs=[args.ann_file, args.image_dir, *_local_files(args.ckpt)]
        )
    device = _device(args)
    _check_backend(args, device)
    dataset = load_dataset(args.ann_file, args.image_dir, args.max_images)  # its errors come before compiling
    largest_side = max(
        (
            _resized_side(dataset.image_path(image_id), size, args, "--max-images to stop before it")
            for image_id in dataset.image_ids
            if (size := dataset.image_size(image_id)) is not None
        ),
        default=0,
    )
    model = _compiled_model(
        args, device, batch=args.batch_size, min_size=args.min_size, max_size=args.max_size,
        largest_side=largest_side,
    )  # fmt: skip
    # skip_bad_images: evaluate_coco's option to leave unreadable images out and list them.
    options = {"skip_bad_images": True} if args.skip_bad else {}
    result = evaluate_coco(
        model, args.ann_file, args.image_dir, batch_size=args.batch_size, max_images=args.max_images,
        min_size=args.min_size, max_size=args.max_size, progress=not args.quiet and sys.stderr.isatty(),
        **options,
    )  # fmt: skip
    for item in result.get("skipped_images", []):
        print(f"skipped {item['file']}: {item['error']}", file=sys.stderr)
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
    stats = "  ".join(f"{n} {result[n]:.3f}" if result.get(n) is not None else f"{n} n/a" for n in names)
    print(f"{result['num_images']} images, {model.backend} {model.precision}: {stats}")
    print(f"{result['timing']['images_per_s']:.1f} images/s end to end")
    if args.out is not None:
        write_results(
            {args.out: json.dumps({"tool": f"{PROG} eval", **result}, indent=1).encode()}, writer="eval"
        )
        print(f"wrote {args.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .bench.configs import default_configs
    from .bench.latency import run_benchmark
    from .bench.report import format_flops, format_table, save_benchmark
    from .errors import BackendUnavailableError
    from .outputs import RunFolder

    if args.device is None and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "bench needs a CUDA GPU for real numbers (none is visible); for a CPU smoke run of the harness pass "
            "--device cpu, e.g. --device cpu --variant r50-c5 --size 320 --batch 1 --iters 2"
        )
    device = _device(args)
    _check_precision(args, device)
    _check_cache_dir(args, args.out)
    configs = default_configs(
        device,
        sizes=args.size or [(800, 800)],
        batches=args.batch,
        backends=args.backends,
        precision=args.precision,
    )
    # The folder is checked before any work; the earlier bench run's files are replaced when this one ends.
    with RunFolder(args.out, inputs=_local_files(args.ckpt)) as folder, tempfile.TemporaryDirectory() as cold:
        if device.type == "cpu":
            print(
                "CPU smoke run: these numbers only exercise the harness; the benchmark needs a GPU",
                file=sys.stderr,
            )
        # Default: a new cache for each run, so that first-call compile times are cold.
        cache_dir = args.cache_dir if args.cache_dir is not None else Path(cold)
        report = run_benchmark(
            configs, variant=args.variant, ckpt=args.ckpt, device=device, warmup=args.warmup, iters=args.iters,
            cache_dir=cache_dir, profile=not args.no_profile, startup=not args.no_startup, parts=args.parts,
            on_progress=lambda partial: _measured(partial) and save_benchmark(partial, folder.path, log=None),  # kept if cut short
        )  # fmt: skip
        if not _measured(report):
            reasons = {f"{row['label']}: {row['reason']}" for row in report["results"]}
            print(
                f"{PROG} bench: error: nothing could be measured ({'; '.join(sorted(reasons))})",
                file=sys.stderr,
            )
            folder.drop()
            return 1
        written = save_benchmark(report, folder.path, log=lambda line: print(line, file=sys.stderr))
        written = [folder.final(path) for path in written]
    print(format_table(report))
    print("\n".join(format_flops(report)))
    targets = report["targets"]
    elsewhere = "" if targets["on_target_gpu"] else f", set for an {targets['gpu']}: not a verdict here"
    for check in targets["checks"]:
        verdict = "meets" if check["met"] else "misses"
        print(
            f"{check['label']}: {check['metric']} {check['value']:.2f} {verdict} issue {check['issue']}'s bar "
            f"{check['target']:g} ({check['bar']}{elsewhere})"
        )
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _measured(report: dict) -> bool:
    return any(row["status"] == "ok" for row in report["results"])


def _compile(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_model
    from .compiled import compile
    from .config import variant_name
    from .environment import environment
    from .export import example_inputs
    from .outputs import RunFolder
    from .spec import within
    from .weights import random_model

    flat = lambda shape: ",".join(map(str, shape))
    for low, high in (
        ("min", "max"),
        ("min", "opt"),
        ("opt", "max"),
    ):  # min and max first: a default --opt-shape is not blamed for them
        lo, hi = getattr(args, f"{low}_shape"), getattr(args, f"{high}_shape")
        if any(a > b for a, b in zip(lo, hi, strict=True)):
            raise InputError(
                f"--{low}-shape {flat(lo)} exceeds --{high}-shape {flat(hi)} "
                "in some dimension: each of B, H, W must satisfy min <= opt <= max"
            )
    for shape in args.warm:
        if not within(shape, args.min_shape, args.max_shape):
            raise InputError(
                f"--warm {flat(shape)} lies outside --min-shape {flat(args.min_shape)} .. --max-shape "
                f"{flat(args.max_shape)}: warm shapes within the range, or widen it"
            )
    device = _device(args)
    if args.backend == "eager":
        raise InputError(
            "--backend eager has nothing to compile ahead of time: use --backend inductor or tensorrt "
            "(on a machine with a CUDA GPU)"
        )
    if device.type != "cuda":
        where = "none is visible" if not torch.cuda.is_available() else "--device is the CPU"
        raise InputError(
            f"compile needs a CUDA GPU ({where}): run it on the machine that will run the model "
            "(on the CPU the eager backend runs the model as is, with nothing to compile)"
        )
    _check_backend(args, device)
    # A cache folder: an earlier compile output there is kept and reused; anything else stops here.
    with RunFolder(
        args.out, replace=False, writes=["compile.json"], inputs=_local_files(args.ckpt)
    ) as folder:
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
        folder.write_text("compile.json", json.dumps(manifest, indent=1))
    print(
        f"compiled {compiled.backend} {compiled.precision} in {seconds:.1f} s into {out}; see {out / 'compile.json'}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .outputs import RunFolder

    device = _device(args)
    with RunFolder(args.out, inputs=_local_files(args.ckpt)) as folder:
        run_demo(
            folder.path, ckpt=args.ckpt, variant=args.variant, num_images=args.num_images, seed=args.seed,
            top_k=args.top_k, device=device,
        )  # fmt: skip
    print(f"wrote {args.out}/report.md, report.json, detections.json and annotated/*.png")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Prints the pass/fail table (and writes check.json with --out); exit code 1 if a check failed or
    none ran (all skipped)."""
    import contextlib

    from .checks import run_checks
    from .outputs import RunFolder

    device = _device(args)
    _check_precision(args, device)
    if args.ckpt is None:
        print("no --ckpt: checking seeded random weights (an untrained model)", file=sys.stderr)
    folder = RunFolder(args.out, inputs=_local_files(args.ckpt)) if args.out else contextlib.nullcontext()
    with folder as run:
        passed = run_checks(
            args.ckpt, variant=args.variant, backends=args.backends, precision=args.precision, device=device,
            groups=args.only, out=run and run.path, log=lambda line: print(line, file=sys.stderr),
        )  # fmt: skip
    if args.out:
        print(f"wrote {args.out / 'check.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
