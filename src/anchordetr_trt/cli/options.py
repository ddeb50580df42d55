"""The command line's flag types and the flags that several commands share (as argparse parents).

A flag type raises ``argparse.ArgumentTypeError``; argparse prefixes its message with the flag
("argument --top-k: ..."). Nothing here imports torch: ``--help`` stays fast.
"""

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULT_VARIANT, VARIANTS, AnchorDETRConfig

PROG = "anchordetr-trt"
DEVICE_HELP = "cpu, cuda or cuda:N (default: the GPU if there is one)"
# The longest resized side detect and eval compile for: the official resize lets a long strip pass
# --max-size (10x2000 becomes 7x1400); a far longer one would widen the range (square, as one size
# serves both orientations) until its CUDA-graph buffers take gigabytes and rcda_aggregate's kernel
# gives way to its reference (past 4096 pixels with DC5).
LONGEST_RESIZED_SIDE = 4096


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Parents:
    """The shared flags, as parent parsers: ``debug`` (--debug after the command), ``common`` (with
    --device), ``weights`` (--ckpt or --random-weights, --variant, --seed), ``model`` (weights and
    --backend, --precision) and ``cached`` (--cache-dir, read by detect and eval)."""

    debug: argparse.ArgumentParser
    common: argparse.ArgumentParser
    weights: argparse.ArgumentParser
    model: argparse.ArgumentParser
    cached: argparse.ArgumentParser


def parents() -> Parents:
    """New parent parsers of the shared flags."""
    debug = Parser(add_help=False)
    # SUPPRESS: the subcommand's default must not undo a --debug given before the subcommand.
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common = Parser(add_help=False, parents=[debug])
    common.add_argument("--device", type=device_name, help=DEVICE_HELP)

    weights = Parser(add_help=False)
    source = weights.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="AnchorDETR checkpoint (.pth), e.g. the released R50-DC5")
    source.add_argument(
        "--random-weights",
        action="store_true",
        help="deterministic random weights (untrained: for trying the tool)",
    )
    weights.add_argument(
        "--variant",
        choices=list(VARIANTS),
        type=str.lower,
        help=f"model variant (needed when the checkpoint has no args; default {DEFAULT_VARIANT})",
    )
    weights.add_argument("--seed", type=seed, default=0, help="seed of --random-weights (default 0)")
    model = Parser(add_help=False, parents=[weights])
    model.add_argument("--backend", choices=["auto", "tensorrt", "inductor", "eager"], default="auto",
                       help="auto: tensorrt, else inductor on a GPU, else eager (default auto)")  # fmt: skip
    model.add_argument(
        "--precision", choices=["fp16", "bf16", "fp32"], help="default fp16 on a GPU, fp32 on the CPU"
    )
    # detect and eval read a compile cache; compile writes one, in --out (it refuses --cache-dir).
    cached = Parser(add_help=False)
    cached.add_argument("--cache-dir", type=Path, help="compile cache folder (see the compile command)")
    return Parents(debug=debug, common=common, weights=weights, model=model, cached=cached)


def optional_checkpoint(parser: argparse.ArgumentParser, ckpt_help: str) -> None:
    """--ckpt (optional, ``ckpt_help`` saying what runs without it) and --variant: the weights of the
    commands that run on random weights by default (bench, demo, check)."""
    parser.add_argument("--ckpt", help=ckpt_help)
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        type=str.lower,
        help=f"model variant (default: the checkpoint's, or {DEFAULT_VARIANT})",
    )


def size_options(parser: argparse.ArgumentParser) -> None:
    """--min-size and --max-size: the resize of detect and eval."""
    parser.add_argument(
        "--min-size", type=side, default=800, help="resize the short side to this (default 800)"
    )
    parser.add_argument("--max-size", type=side, default=1333, help="cap on the long side (default 1333)")


# Flag types.
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


def positive(text: str) -> int:
    return _integer(text, 1, "an integer >= 1")


def count(text: str) -> int:
    return _integer(text, 0, "an integer >= 0")


def seed(text: str) -> int:
    return _integer(text, 0, f"an integer in 0..{_MAX_SEED}", _MAX_SEED)


def top_k(text: str) -> int:
    config = AnchorDETRConfig()  # every variant has its queries and classes
    most = config.num_queries * config.num_classes
    return _integer(text, 1, f"an integer in 1..{most} (queries x classes)", most)


def side(text: str) -> int:
    return _integer(
        text, 32, f"a side in pixels, an integer in 32..{LONGEST_RESIZED_SIDE}", LONGEST_RESIZED_SIDE
    )


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def device_name(text: str) -> str:
    if re.fullmatch(r"cpu|cuda(:\d+)?", text.strip().lower()) is None:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N (N a GPU index), got {text!r}")
    return text.strip().lower()


def shape(text: str) -> tuple[int, int, int]:
    try:
        batch, height, width = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        batch = height = width = 0
    if batch < 1 or min(height, width) < 32:
        raise argparse.ArgumentTypeError(
            f"expected B,H,W with B >= 1 and H, W >= 32, such as 1,800,800, got {text!r}"
        )
    return (batch, height, width)


def size(text: str) -> tuple[int, int]:
    try:
        sides = [int(v) for v in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 32 or max(sides) > _LONGEST_BENCH_SIDE:
        raise argparse.ArgumentTypeError(
            f"expected HxW or S (32..{_LONGEST_BENCH_SIDE}), such as 800 or 800x1216, got {text!r}"
        )
    return (sides[0], sides[-1])


# The library's default shape range (anchordetr_trt.spec.DEFAULT_*_SHAPE), written out for --help only,
# which must not import torch; the flags default to None and the commands take spec's values
# (test_cli checks that these agree).
SHAPE_HELP = {"min": "1,320,320", "opt": "1,800,800, moved into the range", "max": "8,1344,1344"}


def shape_options(parser: argparse.ArgumentParser) -> None:
    """--min-shape, --opt-shape and --max-shape: the (batch, height, width) range to compile for;
    each None where not given (the library's default applies)."""
    for name, default in SHAPE_HELP.items():
        parser.add_argument(f"--{name}-shape", type=shape, help=f"B,H,W (default {default})")
