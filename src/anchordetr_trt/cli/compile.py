"""``anchordetr-trt compile``: compile ahead into a cache folder that later processes reuse."""

import argparse
import json
import time
from pathlib import Path

from ..errors import InputError
from . import options
from .shared import check_backend, device_of, local_files, shape_range


def register(commands: argparse._SubParsersAction, parents: options.Parents) -> None:
    """Add the ``compile`` command to ``commands``."""
    compile_ = commands.add_parser(
        "compile", parents=[parents.common, parents.model],
        help="compile ahead: warm an Inductor cache or save a TensorRT engine in a folder for later processes",
    )  # fmt: skip
    compile_.add_argument(
        "--out", type=Path, required=True,
        help="folder for the compiled artifacts (the cache dir): new, empty, or an earlier compile output",
    )  # fmt: skip
    options.shape_options(compile_)
    compile_.add_argument(
        "--warm",
        type=options.shape,
        action="append",
        default=[],
        help="also compile for this B,H,W now (repeatable)",
    )
    compile_.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..compiled import compile
    from ..config import variant_name
    from ..environment import environment
    from ..export import example_inputs
    from ..outputs import RunFolder
    from ..spec import within
    from ..weights import load_or_random

    shapes = shape_range(args)
    flat = lambda shape: ",".join(map(str, shape))
    for low, high in (
        ("min", "max"),
        ("min", "opt"),
        ("opt", "max"),
    ):  # min and max first: a default --opt-shape is not blamed for them
        lo, hi = shapes[f"{low}_shape"], shapes[f"{high}_shape"]
        if any(a > b for a, b in zip(lo, hi, strict=True)):
            raise InputError(
                f"--{low}-shape {flat(lo)} exceeds --{high}-shape {flat(hi)} "
                "in some dimension: each of B, H, W must satisfy min <= opt <= max"
            )
    for shape in args.warm:
        if not within(shape, shapes["min_shape"], shapes["max_shape"]):
            raise InputError(
                f"--warm {flat(shape)} lies outside --min-shape {flat(shapes['min_shape'])} .. --max-shape "
                f"{flat(shapes['max_shape'])}: warm shapes within the range, or widen it"
            )
    device = device_of(args)
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
    check_backend(args, device)
    # A cache folder: an earlier compile output there is kept and reused; anything else stops here.
    with RunFolder(args.out, replace=False, writes=["compile.json"], inputs=local_files(args.ckpt)) as folder:
        out = args.out.resolve()
        start = time.perf_counter()
        model = load_or_random(args.ckpt, variant=args.variant, seed=args.seed)
        compiled = compile(
            model, backend=args.backend, precision=args.precision, device=device, cache_dir=out, **shapes
        )
        for shape in args.warm:
            compiled(*example_inputs(shape, device, compiled.dtype))
        seconds = time.perf_counter() - start
        manifest = {
            "backend": compiled.backend,
            "precision": compiled.precision,
            "weights": str(args.ckpt) if args.ckpt else f"deterministic random (seed {args.seed})",
            "variant": variant_name(model.config),
            **shapes,
            "warmed_shapes": args.warm,
            "compile_s": seconds,
            "environment": environment(),
            "reuse": f"anchordetr_trt.compile(ckpt, backend={compiled.backend!r}, precision={compiled.precision!r}, "
            f"min_shape={shapes['min_shape']}, opt_shape={shapes['opt_shape']}, max_shape={shapes['max_shape']}, cache_dir={str(out)!r})",
        }
        folder.write_text("compile.json", json.dumps(manifest, indent=1))
    print(
        f"compiled {compiled.backend} {compiled.precision} in {seconds:.1f} s into {out}; see {out / 'compile.json'}"
    )
    return 0
