"""TensorRT's Python plugin layer (``tensorrt/plugin/*.py``, plain Python) from the real bindings wheels.

``PINS``: the lowest and the highest TensorRT that the Torch-TensorRT releases accepted by the tensorrt
backend require (Torch-TensorRT 2.11 requires TensorRT >= 10.15.1, < 10.16; 2.14 requires >= 11.1, < 11.2,
read from their wheels' metadata). Two versions of one distribution cannot share a virtual environment,
so ``make test`` fetches each wheel from PyPI by name and keeps only its ``tensorrt_bindings/plugin``
folder: ``python tests/tensorrt_plugin_layers.py DEST``.
"""

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PINS = ("10.15.1.29", "11.1.0.106")
DISTRIBUTION = "tensorrt-cu13-bindings"
ENV = "ANCHORDETR_TRT_PLUGIN_LAYERS"  # the folder, set by make test
_PLUGIN = "tensorrt_bindings/plugin/"


def plugin_dir(root: Path, version: str) -> Path:
    return root / version / "plugin"


def fetch(root: Path) -> None:
    """Download each pinned wheel and keep ``root/<version>/plugin/*.py``."""
    for version in PINS:
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", download,
                 f"{DISTRIBUTION}=={version}"],
                check=True,
            )  # fmt: skip
            (wheel,) = Path(download).glob("*.whl")
            target = plugin_dir(root, version)
            target.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.startswith(_PLUGIN) and name.endswith(".py"):
                        (target / name.removeprefix(_PLUGIN)).write_bytes(archive.read(name))


if __name__ == "__main__":
    fetch(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ[ENV]))
