"""``anchordetr-trt export``: the ONNX file of a checkpoint (``export_onnx``) and, with ``--engine``, a
serialized TensorRT engine of it (``build_engine``).

Every output is checked before any work: ``--onnx`` must be new or an ONNX this tool wrote,
``--engine`` and its record ``<engine>.json`` new or written by this tool and unchanged since, and a
builder must be installed. torch is imported only when the command runs.
"""

import argparse
import time
from pathlib import Path

from ..errors import InputError
from . import options
from .shared import model_of, shape_range


def register(commands: argparse._SubParsersAction, parents: options.Parents) -> None:
    """Add the ``export`` command to ``commands``."""
    export = commands.add_parser(
        "export",
        parents=[parents.debug, parents.weights],
        help="ONNX of the model for TensorRT, DeepStream or Triton, and with --engine a TensorRT engine",
    )
    export.add_argument(
        "--onnx", type=Path, required=True, help="ONNX file to write (new, or one this tool wrote)"
    )
    export.add_argument(
        "--engine",
        type=Path,
        help="also build a serialized engine here, and its record <engine>.json (new, or ones this tool wrote)",
    )
    export.add_argument(
        "--precision", choices=["fp16", "fp32"], default="fp16", help="the network's dtype (default fp16)"
    )
    options.shape_options(export)
    export.add_argument(
        "--builder", choices=["auto", "tensorrt", "tensorrt-rtx"], default="auto",
        help="engine builder: auto (TensorRT where it can build, i.e. with a CUDA GPU, else TensorRT-RTX on "
        "the CPU), tensorrt or tensorrt-rtx",
    )  # fmt: skip
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cache import check_replaceable
    from ..onnx_export import export_onnx, written_by_us
    from ..outputs import check_writable
    from ..spec import check_shape_range
    from ..trt_engine import build_engine, check_engine_paths, choose_builder

    shapes = shape_range(args)
    check_shape_range(**shapes)
    check_replaceable(args.onnx, written_by_us, f"--onnx {args.onnx}")
    check_writable(args.onnx.parent, "--onnx")
    if args.engine is not None:
        outputs = [args.onnx.resolve(), args.engine.resolve(), Path(f"{args.engine}.json").resolve()]
        if len(set(outputs)) < len(outputs):
            raise InputError(
                f"--onnx {args.onnx} and --engine {args.engine} (with its record {args.engine}.json) must be "
                "three different files: pass other names"
            )
        check_engine_paths(args.engine, f"--engine {args.engine}")
        check_writable(args.engine.parent, "--engine")
        choose_builder(args.builder)  # a missing builder stops here, not after the export
    start = time.perf_counter()
    model = model_of(args)
    export_onnx(model, args.onnx, precision=args.precision, **shapes)
    print(
        f"wrote {args.onnx} ({args.precision}, batch {shapes['min_shape'][0]}..{shapes['max_shape'][0]}, height and width "
        f"multiples of 32 in {shapes['min_shape'][1:]}..{shapes['max_shape'][1:]}) in {time.perf_counter() - start:.0f} s"
    )
    if args.engine is not None:
        build = build_engine(args.onnx, args.engine, builder=args.builder, **shapes)
        print(
            f"built {args.engine} with {build.builder} in {build.build_s:.0f} s ({build.size_bytes / 1e6:.0f} MB); "
            f"it runs on {build.targets}; see {args.engine}.json"
        )
    return 0
