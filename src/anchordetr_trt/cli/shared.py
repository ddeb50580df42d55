"""What the commands share: their errors worded in flags, the checks of their flags before any work,
and the model they compile."""

import argparse
import re
import sys
from pathlib import Path

from ..errors import InputError
from .options import LONGEST_RESIZED_SIDE

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


def device_of(args: argparse.Namespace):
    """--device as a torch.device that exists here (the library's check; main words its errors in flags)."""
    from ..devices import check_device, resolve_device

    return check_device(resolve_device(args.device))


def check_backend(args: argparse.Namespace, device) -> None:
    """--backend and --precision can run on ``device``, said in flags (compile() would say it in arguments)."""
    import torch

    from ..backends import backend_status, choose_backend

    if args.backend in ("inductor", "tensorrt") and device.type != "cuda":
        where = "none is visible" if not torch.cuda.is_available() else "--device is the CPU"
        raise InputError(f"--backend {args.backend} needs a CUDA GPU; {where}: use --backend eager")
    status = backend_status(device)
    if args.backend != "auto" and not status[args.backend][0]:
        raise InputError(
            f"--backend {args.backend} cannot run here ({status[args.backend][1]}): "
            f"use --backend {choose_backend('auto', device)[0]}"
        )
    check_precision(args, device)


def check_precision(args: argparse.Namespace, device) -> None:
    if device.type == "cpu" and args.precision not in (None, "fp32"):
        raise InputError(
            f"--precision {args.precision} needs a CUDA GPU; on the CPU use --precision fp32 (the default there)"
        )


def check_sizes(args: argparse.Namespace) -> None:
    if args.max_size < args.min_size:
        raise InputError(
            f"--max-size {args.max_size} is below --min-size {args.min_size}: the long side's cap must be "
            "at least the short side's size"
        )


def check_cache_dir(args: argparse.Namespace, out: Path | None = None) -> None:
    from ..outputs import check_writable

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


def local_files(*paths: str | Path | None) -> list[Path]:
    """The given paths that are files here (a checkpoint may also be a name or URL)."""
    return [Path(p) for p in paths if p is not None and Path(p).exists()]


def compiled_model(
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
    from ..compiled import compile
    from ..spec import DEFAULT_MAX_SHAPE, DEFAULT_MIN_SHAPE

    model = model_of(args)
    # The library's default range, widened to the command's sizes and batch.
    side = min(DEFAULT_MIN_SHAPE[1], min_size)
    longest = max(DEFAULT_MAX_SHAPE[1], max_size, largest_side)
    return compile(
        model, backend=args.backend, precision=args.precision, device=device, cache_dir=args.cache_dir,
        min_shape=(1, side, side), opt_shape=(1, max(side, min_size), max(side, min_size)),
        max_shape=(max(DEFAULT_MAX_SHAPE[0], batch), longest, longest),
    )  # fmt: skip


def model_of(args: argparse.Namespace):
    """The model of --ckpt, or of --random-weights (--variant, --seed) with a note on stderr that its
    detections are meaningless."""
    from ..weights import load_or_random

    if args.ckpt is None:
        print(
            f"using deterministic random weights (seed {args.seed}): the model is untrained and its detections "
            "are meaningless; pass --ckpt for real ones",
            file=sys.stderr,
        )
    return load_or_random(args.ckpt, variant=args.variant, seed=args.seed)


def resized_side(path: Path, size: tuple[int, int], args: argparse.Namespace, leave_out: str | None) -> int:
    """The longest side of an image of ``size`` (h, w) once resized; InputError past the limit, naming
    ``leave_out``, the flag that would leave the image out (None where it is given)."""
    from ..transforms import resized_size

    side = max(resized_size(*size, args.min_size, args.max_size))
    if side > LONGEST_RESIZED_SIDE:
        raise InputError(
            f"{path} resizes to a side of {side} pixels (--min-size {args.min_size} --max-size "
            f"{args.max_size}), over the {LONGEST_RESIZED_SIDE} this command compiles for: crop it"
            + (f", or pass {leave_out}" if leave_out else "")
        )
    return side


def shape_range(args: argparse.Namespace) -> dict[str, tuple[int, int, int]]:
    """--min-shape, --opt-shape and --max-shape as compile()'s keyword arguments, the library's defaults
    where not given (an --opt-shape not given fitted into the range, as compile() fits it)."""
    from ..spec import DEFAULT_MAX_SHAPE, DEFAULT_MIN_SHAPE, fitted_opt_shape

    min_shape = args.min_shape or DEFAULT_MIN_SHAPE
    max_shape = args.max_shape or DEFAULT_MAX_SHAPE
    opt_shape = args.opt_shape or fitted_opt_shape(min_shape, max_shape)
    return {"min_shape": min_shape, "opt_shape": opt_shape, "max_shape": max_shape}


def plural(number: int, noun: str) -> str:
    """``1 image``, ``2 images``: a count with its noun in the right number."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def rate(value: float) -> str:
    """A rate with three significant digits below 100 (0.0458, 3.14, 12.3), one decimal above, never
    in exponent notation and never rounded to 0.0 when it is not zero."""
    return f"{value:.1f}" if value >= 100 else f"{value:.3g}"
