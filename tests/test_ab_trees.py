"""scripts/ab_trees.py: two commits' trees for an A/B run, written from git history."""

import subprocess

import pytest

from scripts import ab_trees


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository of two commits (the second changes src/model.py), as the working directory."""
    root = tmp_path / "repo"
    files = {
        "pyproject.toml": "[project]\n",
        "src/model.py": "LAYERS = 6\n",
        "results/h100/bench.json": "{}\n",
        "tests/fixtures/official_r50.pt": "weights\n",
        "tests/fixtures/small.json": "{}\n",
    }
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    monkeypatch.chdir(root)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (root / "src/model.py").write_text("LAYERS = 5\n")
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    return root


def test_the_trees_hold_each_commits_files_but_the_results_and_official_fixtures(repo, tmp_path):
    out = tmp_path / "ab"
    assert ab_trees.main(["HEAD~1", "HEAD", "--out", str(out)]) == 0
    for tree, rev, layers in (("old", "HEAD~1", "6"), ("new", "HEAD", "5")):
        written = {str(path.relative_to(out / tree)) for path in (out / tree).rglob("*")}
        assert written == {".ab_tree", "pyproject.toml", "src", "src/model.py", "tests", "tests/fixtures"} | {
            "tests/fixtures/small.json"
        }
        assert (out / tree / "src/model.py").read_text() == f"LAYERS = {layers}\n"
        assert (out / tree / ".ab_tree").read_text().strip() == ab_trees.short_commit(rev)


def test_a_second_run_replaces_its_own_trees_and_keeps_other_folders(repo, tmp_path):
    out = tmp_path / "ab"
    ab_trees.main(["HEAD", "HEAD", "--out", str(out)])
    (out / "old" / "stale.txt").write_text("from an earlier run")
    assert ab_trees.main(["HEAD", "HEAD", "--out", str(out)]) == 0
    assert not (out / "old" / "stale.txt").exists()

    mine = tmp_path / "mine"
    (mine / "old").mkdir(parents=True)
    (mine / "old" / "notes.txt").write_text("a user's file")
    with pytest.raises(SystemExit) as exit_info:
        ab_trees.main(["HEAD", "HEAD", "--out", str(mine)])
    assert exit_info.value.code == 2
    assert (mine / "old" / "notes.txt").read_text() == "a user's file"


def test_an_unknown_commit_is_named(repo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ab_trees.main(["no-such-branch", "HEAD", "--out", str(tmp_path / "ab")])
    assert exit_info.value.code == 2
    assert "'no-such-branch' names no commit of this repository" in capsys.readouterr().err
    assert not (tmp_path / "ab").exists()
