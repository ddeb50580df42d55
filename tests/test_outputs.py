"""Output folders (outputs.RunFolder): each run's files are its own; a user's files are never touched."""

import json
import os

import pytest

from anchordetr_trt.errors import InputError
from anchordetr_trt.outputs import MANIFEST, RunFolder, check_new_file


def _run(folder, names: dict[str, str], **options) -> None:
    with RunFolder(folder, **options) as run:
        for name, text in names.items():
            (run.path / name).parent.mkdir(parents=True, exist_ok=True)
            (run.path / name).write_text(text)


def test_a_rerun_removes_the_earlier_runs_files_and_their_emptied_folders(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.json": "1", "cache/x/y.bin": "2", "annotated/a.png": "3"})
    _run(out, {"b.json": "4"})
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(["b.json", MANIFEST])
    assert list(json.loads((out / MANIFEST).read_text())["files"]) == ["b.json"]


@pytest.mark.parametrize("change", ["edited", "added", "unlisted manifest"])
def test_a_file_the_run_did_not_write_stops_the_next_run_and_stays(change, tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.json": "1", "b.json": "2"})
    if change == "edited":
        (out / "a.json").write_text("the user's edit")
        os.utime(out / "a.json", ns=(1, 1))  # whatever the clock, the file is not as the run left it
    elif change == "added":
        (out / "notes.txt").write_text("mine")
    else:
        (out / MANIFEST).write_text("not json")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match=r"--out .*(left alone|unreadable)"):
        _run(out, {"c.json": "3"})
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_files_of_an_interrupted_run_are_recorded(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), RunFolder(out) as run:
        (run.path / "done.json").write_text("1")
        raise KeyboardInterrupt
    _run(out, {"again.json": "2"})  # the interrupted run's file is ours, so it is replaced
    assert not (out / "done.json").exists() and (out / "again.json").exists()


def test_a_cache_folder_keeps_its_files_and_grows(tmp_path):
    out = tmp_path / "cache"
    _run(out, {"inductor/a": "1"}, replace=False)
    (out / "inductor" / "b").write_text("written by a later process using the cache")
    _run(out, {"compile.json": "{}"}, replace=False)
    assert {p.name for p in out.rglob("*") if p.is_file()} == {"a", "b", "compile.json", MANIFEST}


def test_a_result_file_is_new_or_ours(tmp_path):
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    ours.write_text(json.dumps({"tool": "anchordetr-trt eval"}))
    theirs.write_text(json.dumps({"AP": 1.0}))
    check_new_file(ours)
    check_new_file(tmp_path / "new" / "result.json")
    with pytest.raises(InputError, match="did not write it"):
        check_new_file(theirs)


def test_a_users_file_in_a_kept_folder_is_never_claimed(tmp_path):
    """A folder kept across runs (replace=False) accepts a user's file but never records it as the run's:
    a later run that replaces its own files stops at it instead of removing it."""
    out = tmp_path / "cache"
    _run(out, {"compile.json": "{}"}, replace=False)
    (out / "my_notes.txt").write_text("mine")
    _run(out, {"compile.json": "{1}"}, replace=False)
    assert "my_notes.txt" not in json.loads((out / MANIFEST).read_text())["files"]
    with pytest.raises(InputError, match=r"my_notes\.txt.*left alone"):
        _run(out, {"detections.json": "[]"})
    assert (out / "my_notes.txt").read_text() == "mine"
