"""Writing an eval function's files into a folder the caller names, without replacing anyone else's."""

from collections.abc import Mapping
from pathlib import Path

from anchordetr_trt.errors import InputError, listed


def write_files(contents: Mapping[Path, bytes], function: str, argument: str) -> None:
    """Write each file of ``contents`` (path -> bytes) after checking them all: a file already there
    is replaced only where it holds the same bytes (the same call again); otherwise InputError naming
    ``function``'s folder ``argument``, and nothing is written."""
    taken = sorted(
        str(p) for p, data in contents.items() if p.exists() and (p.is_dir() or p.read_bytes() != data)
    )
    if taken:
        raise InputError(
            f"{function}: {listed(taken)} already exist with other contents, which are left alone: pass a new or "
            f"empty {argument}"
        )
    for path, data in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
