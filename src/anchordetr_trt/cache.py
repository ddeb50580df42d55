"""Where anchordetr_trt keeps files between processes: the one rule for every cache location.

Downloaded checkpoints go to ``cache_home()``: ``$ANCHORDETR_CACHE`` if set, else
``<torch.hub.get_dir()>/checkpoints/anchordetr``, beside torch.hub's own checkpoints (so ``$TORCH_HOME``
moves it too); a ``download_dir`` argument overrides it. Compiled artifacts go only under a
``cache_dir`` the caller names (nothing is persisted without one); Inductor and Triton are pointed at
it with ``use_compile_cache``.
"""

import functools
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from .errors import InputError

T = TypeVar("T")


CACHE_ENV = "ANCHORDETR_CACHE"
# The package and its subpackages, whose folders lie outside the package's in an editable install.
_PACKAGES = (
    "anchordetr_trt",
    "anchordetr_trt.custom_ops",
    "anchordetr_trt.converters",
    "anchordetr_trt.eval",
)


def cache_home() -> Path:
    """The package's default cache folder: where downloaded checkpoints are kept."""
    explicit = os.environ.get(CACHE_ENV)
    return Path(explicit) if explicit else Path(torch.hub.get_dir()) / "checkpoints" / "anchordetr"


def prepare_dir(path: str | os.PathLike, argument: str = "cache_dir") -> Path:
    """``path`` as a folder that exists and is writable; InputError naming ``argument`` otherwise."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{argument}={str(path)!r} is a file, not a folder: pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"{argument}={str(path)!r} cannot be created ({error.strerror}): pass a writable folder"
        ) from None
    if not os.access(path, os.W_OK):
        raise InputError(f"{argument}={str(path)!r} is not writable: pass a writable folder")
    return path


def use_compile_cache(cache_dir: str | os.PathLike) -> Path:
    """Make Inductor and Triton keep their compiled artifacts in ``cache_dir`` for this process.

    Set, not defaulted: the caller asked for this folder, and ``import torchvision`` already sets
    TORCHINDUCTOR_CACHE_DIR, so a default would never apply. Both libraries read the variables
    when they compile, so this takes effect for everything compiled afterwards.
    """
    cache_dir = prepare_dir(cache_dir)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    return cache_dir


def source_files() -> list[tuple[str, Path]]:
    """(name, path) of every Python file of the package, named from its package's folder so that the same
    code in another checkout or venv gets the same names."""
    roots = {
        Path(location).resolve()
        for package in _PACKAGES
        for location in importlib.util.find_spec(package).submodule_search_locations
    }
    files = {
        (f"{root.name}/{path.relative_to(root).as_posix()}", path)
        for root in roots
        for path in root.rglob("*.py")
    }
    return sorted(files)


@functools.cache
def source_digest() -> str:
    """sha256 of the package's source: part of every compiled artifact's cache key, since a compiled
    model depends on any of it (model, ops, kernels, plugins) and code changes without a version bump."""
    digest = hashlib.sha256()
    for name, path in source_files():
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def write_whole(path: Path, write: Callable[[Path], T]) -> T:
    """Make ``path`` by ``write(partial)`` into a temporary file beside it, then a rename, and return
    what ``write`` returned: another process sees the whole file or none, and a ``write`` that fails
    leaves nothing (its error goes up). The file gets the permissions ``open()`` would give it (the
    temporary file's are private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".partial{path.suffix}")
    os.close(handle)
    partial = Path(name)
    try:
        result = write(partial)
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, path)
        return result
    finally:
        partial.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_replaceable(path: Path, ours: Callable[[Path], bool], label: str) -> None:
    """InputError unless ``path`` is new, or a file that this package wrote and that has not changed
    since (``ours(path)`` says so): a user's file is never replaced; and unless its folder exists
    writable, or can be made in one. ``label`` names the path as the caller knows it, e.g. "--out
    result.json" or "path='model.onnx'"."""
    if path.is_dir():
        raise InputError(f"{label} is a folder: pass a file name")
    folder = path.parent  # checked now, not after the work: its first existing part takes the file
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{label}: {folder} is a file, not a folder: pass a path in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{label}: the folder {folder} is not writable: pass a path in a writable folder")
    if path.exists() and not ours(path):
        raise InputError(
            f"{label} exists and anchordetr-trt did not write it (or it changed since); "
            "it is left alone: pass a new file name"
        )
