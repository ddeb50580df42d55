"""Code trees of two commits for ``STAGES=ab make gpu``, from this repository's history, small enough to
travel to the GPU machine beside the working tree (the results and the official fixtures, which no
A/B side reads, left out). Each tree is ``git archive`` of its commit, written afresh:

    python -m scripts.ab_trees OLD NEW [--out .cache/ab]
    # then, with .cache/ab carried to the GPU machine:
    AB_NAME=<change> AB_OLD=.cache/ab/old AB_OLD_COMMIT=<old> AB_NEW=.cache/ab/new AB_NEW_COMMIT=<new> \\
        AB_MODEL_ONLY=1 STAGES=ab make gpu
"""

import argparse
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

LEFT_OUT = ("results/", "tests/fixtures/official_")  # path prefixes no A/B side reads
TREES = ("old", "new")


def short_commit(rev: str) -> str:
    """``rev``'s commit, abbreviated; ValueError naming ``rev`` if it names none."""
    result = subprocess.run(
        ["git", "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ValueError(f"{rev!r} names no commit of this repository: give a branch, tag or commit")
    return result.stdout.strip()


def write_tree(rev: str, folder: Path) -> int:
    """``rev``'s files (but those under LEFT_OUT) in ``folder``, which is replaced; returns their bytes.
    ``folder`` must be a tree this script wrote or not exist: nothing else is removed."""
    if folder.exists() and not (folder / ".ab_tree").exists():
        raise FileExistsError(f"{folder} exists and is not a tree of scripts.ab_trees: choose another --out")
    archive = subprocess.run(["git", "archive", "--format=tar", rev], capture_output=True, check=True).stdout
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / ".ab_tree").write_text(f"{short_commit(rev)}\n")  # first: a tree cut off halfway is still ours
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = [m for m in tar.getmembers() if not f"{m.name}/".startswith(LEFT_OUT)]  # folders too
        # Python before 3.11.4 has no extraction filters; git archive's members are plain files then.
        tar.extractall(
            folder, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {})
        )
    return sum(m.size for m in members if m.isfile())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the commit to compare with (branch, tag or commit)")
    parser.add_argument("new", help="the commit with the change")
    parser.add_argument(
        "--out", type=Path, default=Path(".cache/ab"), help="folder of the trees old/ and new/"
    )
    args = parser.parse_args(argv)
    try:
        commits = [short_commit(rev) for rev in (args.old, args.new)]
        for tree, rev, commit in zip(TREES, (args.old, args.new), commits, strict=True):
            size = write_tree(rev, args.out / tree)
            print(f"{args.out / tree}: {commit} ({size / 2**20:.1f} MiB)")
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"ab_trees: {error}\n")
    print(
        f"AB_OLD={args.out / 'old'} AB_OLD_COMMIT={commits[0]} AB_NEW={args.out / 'new'} AB_NEW_COMMIT={commits[1]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
