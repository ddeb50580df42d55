"""scripts.fallback_log: another commit's package laid out as an install lays it out, and a compile
that outlasts its time limit reported as such (the figures it prints are in
docs/transformer_performance.md)."""

import subprocess
import sys
from pathlib import Path

from scripts.fallback_log import SUBPACKAGES, package_of

ROOT = Path(__file__).resolve().parents[1]


def test_a_commits_package_has_its_subpackages_inside(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    site = package_of("HEAD", tmp_path)
    package = site / "anchordetr_trt"
    assert (package / "__init__.py").is_file()
    for name in SUBPACKAGES:
        assert (package / name / "__init__.py").is_file(), name
    committed = subprocess.run(
        ["git", "show", "HEAD:src/anchordetr_trt/backends/inductor.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (package / "backends" / "inductor.py").read_text() == committed


def test_a_compile_past_the_time_limit_is_reported_and_fails():
    run = subprocess.run(
        [sys.executable, "-m", "scripts.fallback_log", "--timeout-s", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "registered True: not compiled after 1 s" in run.stdout
