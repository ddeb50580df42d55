"""Where the commands write: a user's file is never overwritten or deleted, and no stale file mixes in.

A command writes into a folder that is new, empty, or was written by an earlier run of this tool: its
manifest lists the files that run wrote. Those files, if unchanged since, are removed before the new
run starts, so that each run's outputs are its own. Anything else in the folder (a file the manifest
does not list, or one changed since) stops the command before it does any work; nothing is removed.
"""

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .cache import check_replaceable
from .errors import InputError, listed

MANIFEST = ".anchordetr-trt-run.json"


class RunFolder:
    """The output folder of one run, as a context manager: ``__enter__`` checks and prepares it,
    ``__exit__`` (also on an error or Ctrl-C) records in its manifest what the run wrote.

    ``inputs``: files and folders the run reads, which must not lie inside it nor hold it.
    ``replace``: remove the earlier run's files first; False keeps them (a compile cache that grows).
    ``flag``: how the caller named the folder, for messages (e.g. "--out").
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        inputs: Iterable[str | os.PathLike] = (),
        replace: bool = True,
        flag: str = "--out",
    ):
        self.path = Path(path)
        self.inputs = [Path(p) for p in inputs]
        self.replace = replace
        self.flag = flag

    def __enter__(self) -> "RunFolder":
        check_not_inside(self.path, self.inputs, self.flag)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.flag} {self.path} is a file, not a folder: pass a folder")
        previous = self._previous_files()
        check_writable(self.path, self.flag)
        if self.replace:
            for name in previous:
                (self.path / name).unlink(missing_ok=True)
            _remove_emptied_folders(self.path, previous)
            previous = {}
        self._kept = previous
        # Files here that no run of ours wrote (a kept folder may hold them): never claimed, as they are.
        self._not_ours = {name: stat for name, stat in _files(self.path) if name not in previous}
        self._write_manifest(previous)
        return self

    def __exit__(self, *exc) -> None:
        written = {name: stat for name, stat in _files(self.path) if self._not_ours.get(name) != stat}
        self._write_manifest(self._kept | written)

    def _previous_files(self) -> dict[str, list[int]]:
        """The files of the earlier run here (name -> [size, mtime_ns]); InputError if anything else is here."""
        if not self.path.is_dir():
            return {}
        present = dict(_files(self.path))
        try:
            recorded = json.loads((self.path / MANIFEST).read_text())["files"]
        except FileNotFoundError:
            recorded = {}
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(
                f"{self.flag} {self.path}: its {MANIFEST} is unreadable, so what anchordetr-trt wrote there "
                "is unknown: pass a new or empty folder"
            ) from None
        if self.replace:
            foreign = sorted(name for name, stat in present.items() if recorded.get(name) != stat)
        else:  # a cache grows after the run that made it: any earlier run of ours vouches for the folder
            foreign = sorted(present) if not (self.path / MANIFEST).is_file() else []
        if foreign:
            raise InputError(
                f"{self.flag} {self.path} holds files that anchordetr-trt did not write or that changed since "
                f"({listed(foreign)}); they are left alone: pass a new or empty folder"
            )
        return {name: stat for name, stat in recorded.items() if name in present}

    def _write_manifest(self, files: dict[str, list[int]]) -> None:
        text = json.dumps({"tool": "anchordetr-trt", "files": files}, indent=0)
        _atomic_write(self.path / MANIFEST, text)


def check_not_inside(out: Path, inputs: Iterable[Path], flag: str = "--out") -> None:
    """InputError if the output path ``out`` is an input, holds one, or lies inside an input folder."""
    target = out.resolve()
    for path in inputs:
        source = path.resolve()
        if source == target or source.is_relative_to(target):
            raise InputError(
                f"{flag} {out} holds the input {path}: writing there could overwrite it; pass another {flag}"
            )
        if source.is_dir() and target.is_relative_to(source):
            raise InputError(f"{flag} {out} lies inside the input folder {path}: pass a {flag} outside it")


def check_writable(folder: Path, flag: str = "--out") -> None:
    """Create ``folder`` (and its parents) and write a scratch file in it; InputError saying why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise InputError(f"{flag} {folder}: a file stands in its path: pass a folder") from None
    except NotADirectoryError:
        raise InputError(
            f"{flag} {folder}: part of its path is a file, not a folder: pass a folder"
        ) from None
    except OSError as err:
        raise InputError(
            f"{flag} {folder} is not writable ({err.strerror or err}): pass another folder"
        ) from None


def check_new_file(path: Path, flag: str = "--out", *, owned_key: str = "tool") -> None:
    """Check before any work that the result file ``path`` can be written: its folder is writable, and it
    is new or a JSON file this tool wrote (with ``owned_key`` "anchordetr-trt ...")."""
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder: pass a file name such as {path / 'result.json'}")
    if path.name == MANIFEST:  # ours, but an output folder's record of its files, not a result
        raise InputError(f"{flag} {path} is an output folder's record of its files: pass another file name")
    check_replaceable(path, lambda p: _json_owned(p, owned_key), f"{flag} {path}")
    check_writable(path.parent, flag)


def _json_owned(path: Path, owned_key: str) -> bool:
    try:
        return str(json.loads(path.read_text()).get(owned_key, "")).startswith("anchordetr-trt")
    except (OSError, ValueError, AttributeError):
        return False


def _atomic_write(path: Path, text: str) -> None:
    scratch = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    scratch.write_text(text)
    scratch.replace(path)


def _files(folder: Path) -> Iterable[tuple[str, list[int]]]:
    """(relative name, [size, mtime_ns]) of every file and link under ``folder``, the manifest excepted."""
    for root, dirs, names in os.walk(folder):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in (*names, *links):
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if relative != MANIFEST:
                stat = path.lstat()
                yield relative, [stat.st_size, stat.st_mtime_ns]


def _remove_emptied_folders(folder: Path, removed: Iterable[str]) -> None:
    """Remove the folders that held the ``removed`` files, where now empty (deepest first)."""
    parents = {parent for name in removed for parent in Path(name).parents if parent != Path(".")}
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        path = folder / parent
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
