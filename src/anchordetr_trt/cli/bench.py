"""``anchordetr-trt bench``: latency and throughput against eager fp32 and plain torch.compile."""

import argparse
import sys
import tempfile
from pathlib import Path

from . import options
from .options import PROG
from .shared import check_cache_dir, check_precision, device_of, local_files


def register(commands: argparse._SubParsersAction, parents: options.Parents) -> None:
    """Add the ``bench`` command to ``commands``."""
    bench = commands.add_parser(
        "bench",
        parents=[parents.common],
        help="latency and throughput against eager fp32 and plain torch.compile",
    )
    bench.add_argument(
        "--out", type=Path, default=Path("out/bench"),
        help="output folder (default out/bench): new, empty, or an earlier bench output, which is replaced",
    )  # fmt: skip
    options.optional_checkpoint(bench, "checkpoint (default: random weights; speed does not depend on them)")
    bench.add_argument(
        "--size", type=options.size, action="append", help="input HxW or S for SxS, repeatable (default 800)"
    )
    bench.add_argument(
        "--batch",
        type=options.positive,
        nargs="+",
        help="batch sizes (default 1 8 32 on a GPU, 1 8 on the CPU)",
    )
    bench.add_argument(
        "--backends", nargs="+", choices=["eager-fp32", "torch-compile", "eager", "inductor", "tensorrt"],
        help="what to measure (default on a GPU: eager-fp32 torch-compile inductor tensorrt)",
    )  # fmt: skip
    bench.add_argument("--precision", choices=["fp16", "bf16", "fp32"], help="package backends' precision")
    bench.add_argument(
        "--warmup", type=options.count, default=10, help="untimed calls per config (default 10)"
    )
    bench.add_argument(
        "--iters", type=options.positive, default=100, help="timed calls per config (default 100)"
    )
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
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.configs import default_configs
    from ..bench.latency import run_benchmark
    from ..bench.report import format_flops, format_table, save_benchmark
    from ..errors import BackendUnavailableError
    from ..outputs import RunFolder

    if args.device is None and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "bench needs a CUDA GPU for real numbers (none is visible); for a CPU smoke run of the harness pass "
            "--device cpu, e.g. --device cpu --variant r50-c5 --size 320 --batch 1 --iters 2"
        )
    device = device_of(args)
    check_precision(args, device)
    check_cache_dir(args, args.out)
    configs = default_configs(
        device,
        sizes=args.size or [(800, 800)],
        batches=args.batch,
        backends=args.backends,
        precision=args.precision,
    )
    # The folder is checked before any work; the earlier bench run's files are replaced when this one ends.
    with RunFolder(args.out, inputs=local_files(args.ckpt)) as folder, tempfile.TemporaryDirectory() as cold:
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
