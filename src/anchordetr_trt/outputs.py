"""Where the package writes: a user's file is never overwritten or deleted, and no stale file mixes in.

Each folder the package writes into keeps a record, ``.anchordetr-trt-run.json``, of the files it
wrote there, with their sizes and SHA-256 hashes. A file is replaced or removed only if a record lists
it and it is unchanged since; anything else stops the writer before it does any work, and stays.

- A run folder (``RunFolder``: ``detect``, ``bench``, ``demo``, ``check --out``) holds one run's
  files. The run writes into a private scratch folder inside it; when it ends (or is interrupted),
  its files take the place of the earlier run's, each by a rename, and the earlier run's other files
  are removed. A run that fails leaves the folder as it was. A file that appears or changes in the
  folder during the run is never claimed, replaced nor removed.
- A cache folder (``RunFolder(replace=False)``: ``compile --out``) grows in place: nothing is removed,
  and only the files the run writes through ``write_text`` are recorded.
- Result files (``write_results``: ``eval --out``, ``write_report``, ``make_synthetic_coco``, the
  benchmark and check reports) are written beside their place and renamed over it; each must be new
  or a result the package wrote, unchanged since.
"""

import contextlib
import errno
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

from .errors import InputError, check_path, listed

MANIFEST = ".anchordetr-trt-run.json"
_SCRATCH = ".anchordetr-trt-partial-"  # + the writing process's id
_FOLDER, _FILE = "folder", "file"  # what a record entry belongs to: the folder's run, or a result file


class RunFolder:
    """The output folder of one run, as a context manager: ``__enter__`` checks it (nothing is
    removed), the run writes under ``path``, and ``__exit__`` puts the run's files in place, on
    success or Ctrl-C; on an error it drops them and the folder stays as it was.

    ``path``: where the run writes (a scratch folder inside ``folder``; ``folder`` itself for a cache);
    ``final(p)`` is where a file written at ``p`` ends up: name that one in files and messages.
    ``inputs``: files and folders the run reads, which must not lie inside it nor hold it.
    ``replace``: False for a cache folder that keeps its files and grows (see the module docstring).
    ``writes``: names the run will write with ``write_text``, checked first (a cache's record file).
    ``flag``: how the caller named the folder, for messages (e.g. "--out").
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        inputs: Iterable[str | os.PathLike] = (),
        replace: bool = True,
        writes: Iterable[str] = (),
        flag: str = "--out",
    ):
        self.folder = Path(check_path(flag, path))
        self.path = self.folder
        self.inputs = [Path(p) for p in inputs]
        self.replace = replace
        self.writes = list(writes)
        self.flag = flag
        self._dropped = False

    def __enter__(self) -> "RunFolder":
        check_not_inside(self.folder, self.inputs, self.flag)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.flag} {self.folder} is a file, not a folder: pass a folder")
        _check_other_writers(self.folder, self.flag)
        self._previous = self._check_previous()
        check_writable(self.folder, self.flag)
        if not self.replace and not (self.folder / MANIFEST).is_file():  # vouches for the files to come
            write_record(self.folder, {})
        if self.replace:
            self.path = self.folder / f"{_SCRATCH}{os.getpid()}"
            self.path.mkdir()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if not self.replace:
            return
        if not self._dropped and (kind is None or issubclass(kind, KeyboardInterrupt)):
            self._commit()
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    def drop(self) -> None:
        """End the run without putting its files in place (it failed without raising): the folder
        stays as it was."""
        self._dropped = True

    def final(self, path: str | os.PathLike) -> Path:
        """Where the file the run writes at ``path`` (under ``self.path``) will be once the run ends."""
        return self.folder / Path(path).relative_to(self.path)

    def write_text(self, name: str, text: str) -> Path:
        """Write ``name`` in the folder now, recorded as the run's (for a cache folder, which the
        compilers fill in place); the earlier file of that name must be the run's, unchanged."""
        path = self.path / name
        _write_recorded({path: text.encode()}, self.flag, _FOLDER)
        return path

    def _check_previous(self) -> dict[str, dict]:
        """The earlier run's files here (name -> record entry); InputError naming anything else."""
        if not self.folder.is_dir():
            return {}
        entries = read_record(self.folder, self.flag)
        ours = {name: entry for name, entry in entries.items() if entry.get("output") == _FOLDER}
        # Without a record every file here is another's: a few of them name the problem (a folder such
        # as "/" or a home folder is not walked in full).
        present = list(_files(self.folder) if entries else itertools.islice(_files(self.folder), 100))
        if self.replace:
            foreign = [
                name for name in present if not (name in ours and unchanged(self.folder / name, ours[name]))
            ]
        else:  # a cache grows after the run that made it: a record of ours vouches for the rest of the folder
            changed = [n for n in present if n in entries and not unchanged(self.folder / n, entries[n])]
            taken = [n for n in self.writes if (self.folder / n).exists() and n not in entries]
            foreign = (
                (present if present and not (self.folder / MANIFEST).is_file() else []) + changed + taken
            )
        if foreign:
            raise InputError(
                f"{self.flag} {self.folder} holds files that anchordetr-trt did not write or that changed since "
                f"({listed(sorted(set(foreign)))}); they are left alone: pass a new or empty folder"
            )
        return {name: ours[name] for name in present if name in ours}

    def _commit(self) -> None:
        """Put the run's files in place of the earlier run's: each renamed over its place, then the
        earlier run's other files removed; the record lists both while this goes on, so that a process
        killed in between leaves a folder whose every file is still known."""
        new = {name: fingerprint(self.path / name) for name in _files(self.path)}
        kept = {n: e for n, e in self._previous.items() if unchanged(self.folder / n, e)}
        blocked = [n for n in new if _occupied(self.folder, n) and n not in kept]
        if blocked:
            unplaced = self.folder / f"anchordetr-trt-unplaced-{os.getpid()}"
            self.path.rename(unplaced)
            raise InputError(
                f"{self.flag} {self.folder}: {listed(sorted(blocked))} appeared or changed there while the run "
                f"was going and are left alone; this run's files are in {unplaced}: move them where you want them"
            )
        results = {n: e for n, e in _read_record_or_empty(self.folder).items() if e.get("output") == _FILE}
        during = {n: {**e, "output": _FOLDER} for n, e in kept.items()}
        for name, entry in new.items():
            during[name] = {**entry, "output": _FOLDER, "was": kept.get(name)}
        write_record(self.folder, results | during)
        for name in new:
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / name, target)
        gone = [n for n, e in kept.items() if n not in new and unchanged(self.folder / n, e)]
        for name in gone:
            (self.folder / name).unlink()
        _remove_emptied_folders(self.folder, gone)
        write_record(self.folder, results | {n: {**e, "output": _FOLDER} for n, e in new.items()})
        shutil.rmtree(self.path, ignore_errors=True)  # its folders, emptied


def write_results(
    contents: Mapping[Path, bytes],
    flag: str = "--out",
    *,
    root: Path | None = None,
    writer: str | None = None,
    inputs: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """Write each result file of ``contents`` (path -> bytes) after checking them all with
    ``check_results``: beside its place, then renamed over it, and recorded. ``root``: the folder
    whose record lists them all (default: each file's own folder)."""
    contents = {Path(check_path(flag, path)): data for path, data in contents.items()}
    bad = [str(path) for path, data in contents.items() if not isinstance(data, bytes | bytearray)]
    if bad:
        raise InputError(f"{flag}: the contents of {listed(bad)} must be bytes (e.g. text.encode())")
    check_results(contents, flag, root=root, writer=writer, inputs=inputs)
    return _write_recorded(contents, flag, _FILE, root, writer or flag)


def check_results(
    paths: Iterable[Path],
    flag: str = "--out",
    *,
    root: Path | None = None,
    writer: str | None = None,
    inputs: Iterable[str | os.PathLike] = (),
) -> None:
    """InputError unless each result file can be written: its folder is writable; it is no input of
    the run (``inputs``); and it is new, or a result that the same ``writer`` (default: ``flag``)
    wrote there and that is unchanged since. Call it before the work, then ``write_results``."""
    paths = [Path(check_path(flag, p)) for p in paths]
    inputs = [Path(p) for p in inputs]
    for path in paths:
        if path.is_dir():
            raise InputError(f"{flag} {path} is a folder: pass a file name such as {path / 'result.json'}")
        if path.name == MANIFEST or path.name.startswith(_SCRATCH):
            raise InputError(
                f"{flag} {path} is an output folder's record of its files: pass another file name"
            )
        check_not_inside(path, inputs, flag)
    taken = []
    for folder, names in _by_record(paths, root).items():
        entries = read_record(folder, flag) if any(_occupied(folder, n) for n in names) else {}
        for name in names:
            entry = entries.get(name)
            ours = entry and entry["output"] == _FILE and entry.get("by") == (writer or flag)
            if _occupied(folder, name) and not (ours and unchanged(folder / name, entry)):
                taken.append(str(folder / name))
    if taken:
        raise InputError(
            f"{flag} {listed(taken)} exists and anchordetr-trt did not write it there as such a result, or it "
            "changed since; it is left alone: pass a new file name"
        )
    for folder in {p.parent for p in paths}:
        check_writable(folder, flag)


def _by_record(paths: Iterable[Path], root: Path | None) -> dict[Path, list[str]]:
    """The paths by the folder whose record lists them: ``root``, else each one's own folder."""
    grouped: dict[Path, list[str]] = {}
    for path in paths:
        folder = root if root is not None else path.parent
        grouped.setdefault(folder, []).append(path.relative_to(folder).as_posix())
    return grouped


def _write_recorded(
    contents: Mapping[Path, bytes],
    flag: str,
    output: str,
    root: Path | None = None,
    writer: str | None = None,
) -> list[Path]:
    """Write each file beside its place and rename it there, then record them in their folder's record."""
    from .cache import write_whole

    for folder, names in _by_record(contents, root).items():
        entries = read_record(folder, flag)
        for name in names:  # checked again: the file may have changed since the caller's check
            entry = entries.get(name)
            if _occupied(folder, name) and not (entry and unchanged(folder / name, entry)):
                raise InputError(f"{flag} {folder / name} changed while the run was going: it is left alone")
        for name in names:
            data = contents[folder / name]
            write_whole(folder / name, lambda partial, data=data: partial.write_bytes(data))
            entries[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "output": output}
            if writer is not None:
                entries[name]["by"] = writer
        write_record(folder, entries)
    return list(contents)


def read_record(folder: Path, flag: str = "--out") -> dict[str, dict]:
    """The record of ``folder``: file name (under it) -> {"size", "sha256", "output"}; {} if none."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        if not all(isinstance(e, dict) and {"size", "sha256"} <= e.keys() for e in files.values()):
            raise TypeError
        return files
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(
            f"{flag} {folder}: its {MANIFEST} is unreadable, so what anchordetr-trt wrote there is unknown: "
            "pass a new or empty folder"
        ) from None


def _read_record_or_empty(folder: Path) -> dict[str, dict]:
    try:
        return read_record(folder)
    except InputError:
        return {}


def write_record(folder: Path, entries: Mapping[str, dict]) -> None:
    from .cache import write_whole

    text = json.dumps({"tool": "anchordetr-trt", "files": entries}, indent=1)
    write_whole(folder / MANIFEST, lambda partial: partial.write_text(text))


def fingerprint(path: Path) -> dict:
    """{"size", "sha256"} of the file (or link: of its target's name) at ``path``."""
    digest = hashlib.sha256()
    if path.is_symlink():
        digest.update(os.readlink(path).encode())
    else:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return {"size": path.lstat().st_size, "sha256": digest.hexdigest()}


def unchanged(path: Path, entry: Mapping) -> bool:
    """Whether the file at ``path`` is as recorded in ``entry`` (or, while a run puts its files in
    place, as the file it replaces)."""
    if not (path.is_file() or path.is_symlink()):
        return False
    versions = [entry, *([entry["was"]] if entry.get("was") else [])]
    size = path.lstat().st_size
    if all(v["size"] != size for v in versions):
        return False
    digest = fingerprint(path)["sha256"]
    return any(v["sha256"] == digest for v in versions)


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


def _check_other_writers(folder: Path, flag: str) -> None:
    """InputError if another process of this package is writing a run into ``folder``; the scratch
    folder of one that ended without cleaning up (killed) is removed: it holds that run's files only."""
    for scratch in folder.glob(f"{_SCRATCH}*") if folder.is_dir() else ():
        pid = scratch.name.removeprefix(_SCRATCH)
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            raise InputError(
                f"{flag} {folder}: another anchordetr-trt process (pid {pid}) is writing there: wait for it to "
                "end, or pass another folder"
            )
        shutil.rmtree(scratch, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _occupied(folder: Path, name: str) -> bool:
    path = folder / name
    return path.exists() or path.is_symlink()


def _files(folder: Path) -> Iterator[str]:
    """Relative name of every file and link under ``folder``, its record and scratch folders excepted."""
    for root, dirs, names in os.walk(folder):
        if Path(root) == folder:
            dirs[:] = [d for d in dirs if not d.startswith(_SCRATCH)]
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in (*names, *links):
            relative = Path(root, name).relative_to(folder).as_posix()
            if relative != MANIFEST:
                yield relative


def _remove_emptied_folders(folder: Path, removed: Iterable[str]) -> None:
    """Remove the folders that held the ``removed`` files, where now empty (deepest first)."""
    parents = {parent for name in removed for parent in Path(name).parents if parent != Path(".")}
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        path = folder / parent
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


class GuardedStream:
    """A text stream that passes writes on to ``stream`` until one fails (a reader that closed the pipe,
    a full disk), then drops the rest instead of stopping the work; ``error`` is that failure."""

    def __init__(self, stream: TextIO):
        self.stream, self.error = stream, None

    def write(self, text: str) -> int:
        self._guarded(lambda: (self.stream.write(text), "\n" in text and self.stream.flush()))
        return len(text)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)

    def _guarded(self, action) -> None:
        if self.error is not None:
            return
        try:
            action()
        except OSError as error:
            self.error = error
            with contextlib.suppress(OSError, ValueError, AttributeError):  # later flushes go nowhere
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())


@contextlib.contextmanager
def guarded_stdout() -> Iterator[GuardedStream]:
    """``sys.stdout`` as a ``GuardedStream`` for the duration: printing can no longer stop the work."""
    guard = GuardedStream(sys.stdout)
    sys.stdout = guard
    try:
        yield guard
    finally:
        guard.flush()
        sys.stdout = guard.stream


def stdout_problem(error: OSError) -> tuple[str, int]:
    """(one line, exit code) saying what happened to stdout: 141 (128 + SIGPIPE, as other Unix tools)
    for a reader that stopped reading, else 1."""
    if error.errno == errno.EPIPE:
        return "stdout was closed by its reader (broken pipe): the lines after that were not printed", 141
    return f"could not write to stdout ({error.strerror or error}): the lines after that were not printed", 1
