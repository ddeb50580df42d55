"""``anchordetr-trt info``: versions, the GPU, and which backends can run on --device."""

import argparse
import json

from ..errors import AnchorDETRError
from . import options
from .shared import device_of, in_flags


def register(commands: argparse._SubParsersAction, parents: options.Parents) -> None:
    """Add the ``info`` command to ``commands``."""
    info = commands.add_parser(
        "info", parents=[parents.common], help="versions, GPU, and which backends can run here"
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..backends import backend_status, choose_backend
    from ..devices import resolve_device
    from ..environment import environment

    env = environment()
    try:
        device = device_of(args)
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
