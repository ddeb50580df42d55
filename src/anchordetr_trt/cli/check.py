"""``anchordetr-trt check``: the parity suite on this machine."""

import argparse
import sys
from pathlib import Path

from . import options
from .shared import check_precision, device_of, local_files


def register(commands: argparse._SubParsersAction, parents: options.Parents) -> None:
    """Add the ``check`` command to ``commands``."""
    check = commands.add_parser(
        "check",
        parents=[parents.common],
        help="parity suite on this machine: fused ops, backends, export, TensorRT",
    )
    options.optional_checkpoint(check, "checkpoint to check (default: seeded random weights)")
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
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prints the pass/fail table (and writes check.json with --out); exit code 1 if a check failed or
    none ran (all skipped)."""
    import contextlib

    from ..checks import run_checks
    from ..outputs import RunFolder

    device = device_of(args)
    check_precision(args, device)
    if args.ckpt is None:
        print("no --ckpt: checking seeded random weights (an untrained model)", file=sys.stderr)
    folder = RunFolder(args.out, inputs=local_files(args.ckpt)) if args.out else contextlib.nullcontext()
    with folder as run:
        passed = run_checks(
            args.ckpt, variant=args.variant, backends=args.backends, precision=args.precision, device=device,
            groups=args.only, out=run and run.path, log=lambda line: print(line, file=sys.stderr),
        )  # fmt: skip
    if args.out:
        print(f"wrote {args.out / 'check.json'}")
    return 0 if passed else 1
