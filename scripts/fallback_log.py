"""How long Inductor takes to compile the inductor backend's model (R50-DC5, fused ops, on the CPU)
with its graph log on, and how many implicit-fallback messages it formats on the way.

torch 2.11 formats each such message even with the log off (docs/transformer_performance.md, "Work
that depends on the weights only"); torch 2.14 formats it only with the log on, which this script
turns on, so that the cost shows on the CPU. ``--no-register`` leaves out ``register_fallbacks``
(the backend's registration of the package's ops); ``--commit REV`` compiles another commit's model,
from a ``git archive`` of it laid out as an installed package.

    python -m scripts.fallback_log [--no-register] [--commit REV] [--timeout-s 600] [--code-out FILE]
"""

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.ab_trees import write_tree

SUBPACKAGES = ("custom_ops", "converters", "eval")  # folders the package maps into anchordetr_trt


def compile_with_log(register: bool, code_out: str | None) -> None:
    """Compile the backend's model with the graph log on; print the time and the messages' count, and
    write the code Inductor generated to ``code_out`` if given."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from anchordetr_trt.backends import inductor
    from anchordetr_trt.config import AnchorDETRConfig
    from anchordetr_trt.fold import fold_frozen_batchnorm
    from anchordetr_trt.model import build_model
    from anchordetr_trt.spec import CompileSpec

    if register:
        inductor.register_fallbacks()
    log = io.StringIO()
    graph_log = logging.getLogger("torch._inductor.graph")
    graph_log.addHandler(logging.StreamHandler(log))
    graph_log.setLevel(logging.INFO)
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 64, 64), (1, 64, 64), (1, 64, 64))
    model = inductor.prepare(fold_frozen_batchnorm(build_model(AnchorDETRConfig())), spec)
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    function = torch.compile(model, backend="inductor", fullgraph=True, dynamic=False)
    start = time.perf_counter()
    with torch.no_grad(), torch._inductor.utils.fresh_cache():
        _, code = run_and_get_code(function, images, mask)
    if code_out:
        Path(code_out).write_text("\n".join(code))
    text = log.getvalue()
    print(
        f"registered {register}: compile and first call {time.perf_counter() - start:.1f} s, "
        f"{text.count('Creating implicit fallback')} implicit-fallback messages ({len(text):,} characters)"
    )


def package_of(commit: str, folder: Path) -> Path:
    """``commit``'s package laid out under ``folder`` as an install makes it; returns the site folder."""
    tree, site = folder / "tree", folder / "site"
    write_tree(commit, tree)
    shutil.copytree(tree / "src" / "anchordetr_trt", site / "anchordetr_trt")
    for name in SUBPACKAGES:
        shutil.copytree(tree / name, site / "anchordetr_trt" / name)
    return site


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-register", action="store_true", help="leave out register_fallbacks")
    parser.add_argument("--commit", help="compile this commit's model instead of the installed one")
    parser.add_argument("--timeout-s", type=float, default=600, help="give up after this long")
    parser.add_argument("--code-out", help="write the code Inductor generated to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        # The other commit's package first; this folder for this script (run from the repository's root).
        paths = [str(package_of(args.commit, Path(folder)))] if args.commit else []
        environment = dict(
            os.environ,
            TORCHINDUCTOR_CACHE_DIR=str(Path(folder) / "inductor"),
            PYTHONPATH=os.pathsep.join([*paths, os.getcwd()]),
        )
        code_out = os.path.abspath(args.code_out) if args.code_out else None
        code = (
            "from scripts.fallback_log import compile_with_log; "
            f"compile_with_log({not args.no_register}, {code_out!r})"
        )
        try:
            return subprocess.run(
                [sys.executable, "-c", code], env=environment, timeout=args.timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            print(f"registered {not args.no_register}: not compiled after {args.timeout_s:.0f} s")
            return 1


if __name__ == "__main__":
    sys.exit(main())
