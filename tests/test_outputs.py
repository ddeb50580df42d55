"""Where the package writes (outputs): each run's files are its own; a user's files are never touched."""

import errno
import io
import json
import os
import subprocess
import sys

import pytest

from anchordetr_trt.errors import InputError
from anchordetr_trt.outputs import (
    MANIFEST,
    GuardedStream,
    RunFolder,
    check_results,
    stdout_problem,
    write_results,
)


def _run(folder, names: dict[str, str], during=lambda run: None, **options) -> None:
    with RunFolder(folder, **options) as run:
        for name, text in names.items():
            (run.path / name).parent.mkdir(parents=True, exist_ok=True)
            (run.path / name).write_text(text)
        during(run)


def _tree(folder) -> dict[str, bytes]:
    """The folder's files, but for a run's scratch folder."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return {
        name: p.read_bytes() for name, p in files.items() if not name.startswith(".anchordetr-trt-partial")
    }


def _recorded(folder) -> list[str]:
    return sorted(json.loads((folder / MANIFEST).read_text())["files"])


def test_a_rerun_replaces_the_earlier_runs_files_and_removes_their_emptied_folders(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.json": "1", "cache/x/y.bin": "2", "annotated/a.png": "3"})
    _run(out, {"b.json": "4", "a.json": "5"})
    assert _tree(out).keys() == {"a.json", "b.json", MANIFEST} and (out / "a.json").read_text() == "5"
    assert _recorded(out) == ["a.json", "b.json"]


@pytest.mark.parametrize("change", ["edited", "added", "unlisted manifest"])
def test_a_file_the_run_did_not_write_stops_the_next_run_and_stays(change, tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.json": "1", "b.json": "2"})
    if change == "edited":
        (out / "a.json").write_text("9")  # same size: the hash tells
    elif change == "added":
        (out / "notes.txt").write_text("mine")
    else:
        (out / MANIFEST).write_text("not json")
    before = _tree(out)
    with pytest.raises(InputError, match=r"--out .*(left alone|unreadable)"):
        _run(out, {"c.json": "3"})
    assert _tree(out) == before


def test_the_earlier_outputs_stay_as_they_were_until_the_new_run_ends_and_after_it_fails(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.json": "1", "sub/b.png": "2"})
    before = _tree(out)

    def fail(run):
        assert _tree(out) == before, "nothing replaced while the run goes on"
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError):
        _run(out, {"a.json": "new"}, during=fail)
    assert _tree(out) == before and not any(
        p.name.startswith(".anchordetr-trt-partial") for p in out.iterdir()
    )


def test_a_file_saved_into_the_folder_during_a_run_is_never_claimed(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.json": "1"}, during=lambda run: (run.folder / "mine.txt").write_text("the user's"))
    assert _recorded(out) == ["a.json"]
    with pytest.raises(InputError, match=r"mine\.txt.*left alone"):
        _run(out, {"b.json": "2"})
    assert (out / "mine.txt").read_text() == "the user's"


def test_an_earlier_file_edited_during_a_run_is_neither_replaced_nor_removed(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.json": "1", "b.json": "2"})

    def edit(run):
        (out / "a.json").write_text("the user's a")
        (out / "b.json").write_text("the user's b")

    with pytest.raises(InputError, match=r"a\.json appeared or changed there while the run was going"):
        _run(out, {"a.json": "new"}, during=edit)
    assert (out / "a.json").read_text() == "the user's a" and (out / "b.json").read_text() == "the user's b"
    [unplaced] = out.glob("anchordetr-trt-unplaced-*")
    assert (unplaced / "a.json").read_text() == "new", "the run's own file is kept aside, not lost"


def test_the_files_of_an_interrupted_run_are_put_in_place(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), RunFolder(out) as run:
        (run.path / "done.json").write_text("1")
        raise KeyboardInterrupt
    assert _recorded(out) == ["done.json"]
    _run(out, {"again.json": "2"})  # the interrupted run's file is ours, so it is replaced
    assert not (out / "done.json").exists() and (out / "again.json").exists()


def test_a_folder_another_process_writes_into_is_refused_and_a_dead_ones_scratch_removed(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.json": "1"})
    (out / f".anchordetr-trt-partial-{os.getppid()}").mkdir()  # a live process
    with pytest.raises(InputError, match=rf"another anchordetr-trt process \(pid {os.getppid()}\)"):
        _run(out, {"a.json": "2"})
    (out / f".anchordetr-trt-partial-{os.getppid()}").rmdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (out / f".anchordetr-trt-partial-{int(dead.stdout)}").mkdir()  # killed before it ended
    _run(out, {"a.json": "2"})
    assert _tree(out).keys() == {"a.json", MANIFEST}


def test_a_cache_folder_keeps_its_files_and_grows(tmp_path):
    out = tmp_path / "cache"
    _run(out, {"inductor/a": "1"}, replace=False)
    (out / "inductor" / "b").write_text("written by a later process using the cache")
    _run(out, {"compile.json": "{}"}, replace=False)
    assert {p.name for p in out.rglob("*") if p.is_file()} == {"a", "b", "compile.json", MANIFEST}


def test_a_cache_folder_records_only_what_the_run_writes_itself(tmp_path):
    """Files a compiler puts in a cache folder, or a user, are never recorded: a run that replaces its
    files stops at them instead of removing them; the cache's own record file is replaced only as written."""
    out = tmp_path / "cache"
    with RunFolder(out, replace=False, writes=["compile.json"]) as run:
        (run.path / "inductor").mkdir()
        (run.path / "inductor" / "graph.bin").write_text("compiled")
        run.write_text("compile.json", "{}")
    (out / "my_notes.txt").write_text("mine")
    assert _recorded(out) == ["compile.json"]
    with pytest.raises(InputError, match=r"inductor/graph\.bin, my_notes\.txt.*left alone"):
        _run(out, {"detections.json": "[]"})
    (out / "compile.json").write_text('{"edited": 1}')
    with pytest.raises(InputError, match=r"compile\.json.*left alone"):
        RunFolder(out, replace=False, writes=["compile.json"]).__enter__()
    assert (out / "my_notes.txt").read_text() == "mine"


def test_a_result_file_is_new_or_an_unchanged_result_of_ours(tmp_path):
    result = tmp_path / "res.json"
    write_results({result: b'{"AP": 0.1}'})
    write_results({result: b'{"AP": 0.2}'})  # ours, unchanged: replaced
    assert result.read_bytes() == b'{"AP": 0.2}'
    result.write_text('{"AP": 0.2, "note": "mine"}')
    theirs = tmp_path / "theirs.json"
    theirs.write_text(json.dumps({"tool": "anchordetr-trt eval"}))  # looks like ours, but is not recorded
    for path in (result, theirs):
        with pytest.raises(InputError, match="left alone"):
            check_results([path])
    with pytest.raises(InputError, match="is a folder"):
        check_results([tmp_path])
    with pytest.raises(InputError, match="record of its files"):
        check_results([tmp_path / MANIFEST])
    assert result.read_text() == '{"AP": 0.2, "note": "mine"}'


def test_a_result_file_edited_between_the_check_and_the_write_is_left_alone(tmp_path):
    result = tmp_path / "res.json"
    write_results({result: b"1"})
    check_results([result])
    result.write_text("the user's")
    with pytest.raises(InputError, match="left alone"):
        write_results({result: b"2"})
    assert result.read_text() == "the user's"


class _Broken(io.StringIO):
    def __init__(self, code: int):
        super().__init__()
        self.code = code

    def write(self, text: str) -> int:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize(
    ("code", "exit_code", "words"), [(errno.EPIPE, 141, "broken pipe"), (errno.ENOSPC, 1, "space")]
)
def test_a_failing_stdout_is_told_apart_and_does_not_stop_the_work(code, exit_code, words):
    stream = GuardedStream(_Broken(code))
    print("first line", file=stream)
    print("second line", file=stream)  # dropped, without raising
    message, status = stdout_problem(stream.error)
    assert status == exit_code and words in message.lower() and "\n" not in message
