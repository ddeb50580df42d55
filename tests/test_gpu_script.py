"""scripts/gpu.sh's stage runner, run with a stand-in for python3 (no GPU, no torch): a stage past its
limit is interrupted before it is killed, so that an interrupted GPU suite still writes its report;
and its Python processes' stack dumps before the interrupt (scripts/gpu_site), run with this Python."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# python3 for gpu.sh: the import check passes, any other command returns at once, except pytest, which
# runs until a signal and writes its junit file only on SIGINT (as pytest does on KeyboardInterrupt),
# or, as a hung C call would, ignores SIGINT (IGNORE_INT=1).
STAND_IN = """#!/bin/bash
echo "python3 $1 with path $PYTHONPATH"
[[ $1 == -m && $2 == pytest ]] || exit 0
echo "stacks at ${ANCHORDETR_STACKS_AT:-unset}, now $(date +%s), path $PYTHONPATH"
for arg; do [[ $arg == --junitxml=* ]] && junit=${arg#--junitxml=}; done
sleep 120 & child=$!
if [[ $IGNORE_INT == 1 ]]; then trap '' INT
else trap 'echo "<testsuite interrupted=\\"1\\"/>" > "$junit"; kill $child; exit 2' INT; fi
trap 'kill $child; exit 3' TERM
wait
"""


def _run_gpu_sh(tmp_path: Path, **env: str) -> tuple[Path, Path]:
    """(the tree, its OUT folder) after scripts/gpu.sh, copied into a tree of its own, ran with the
    stand-in python3, commit abc1234 and ``env``."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu.sh", tree / "scripts" / "gpu.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STAND_IN)
    (bin_dir / "python3").chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out), "COMMIT": "abc1234", **env}
    run = subprocess.run(
        ["bash", str(tree / "scripts" / "gpu.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return tree, out


@pytest.mark.slow
@pytest.mark.parametrize(("ignore_int", "rc"), [(0, 124), (1, 137)])
def test_a_stage_past_its_limit_is_interrupted_then_killed(tmp_path, ignore_int, rc):
    """Interrupted 10 s before the limit (pytest then writes its junit file); killed at the limit where
    the interrupt is ignored."""
    # The tests stage's limit 25 s: interrupted at 15 s, killed at 25.
    tree, out = _run_gpu_sh(tmp_path, STAGES="tests", GPU_BUDGET_S="25", IGNORE_INT=str(ignore_int))
    summary = (out / "logs" / "summary.txt").read_text()
    assert f"tests      rc={rc}" in summary, summary
    junit = out / "gpu_tests.xml"
    if ignore_int:
        assert not junit.exists()
    else:
        assert junit.read_text().startswith('<testsuite interrupted="1"/>')
    assert "tests\tabc1234\tgpu_tests.xml\t" in (out / "runs.tsv").read_text()
    # The stage's Python processes are told to dump their stacks 5 s before the interrupt at 15 s.
    log = (out / "logs" / "gpu.log").read_text()
    at, now, path = re.search(r"stacks at (\d+), now (\d+), path (\S+)", log).groups()
    assert 8 <= int(at) - int(now) <= 10, log
    assert path.split(":")[0] == str(tree / "scripts" / "gpu_site")


def _stage_env(*more_path: Path, stacks_in_s: float | None = None) -> dict[str, str]:
    """This process's environment as gpu.sh gives a stage's Python: scripts/gpu_site first on
    PYTHONPATH (then ``more_path``), and the stack dump's time ``stacks_in_s`` from now if given."""
    env = {**os.environ, "PYTHONPATH": ":".join(map(str, (REPO / "scripts" / "gpu_site", *more_path)))}
    if stacks_in_s is not None:
        env["ANCHORDETR_STACKS_AT"] = str(time.time() + stacks_in_s)
    return env


STUCK = """
import os, subprocess, sys, time
child = "import os; print('child:', os.environ.get('ANCHORDETR_STACKS_AT'))"
subprocess.run([sys.executable, "-c", child], check=True)
def stuck_here():
    time.sleep(%s)
stuck_here()
"""


@pytest.mark.parametrize("in_s", [3, -1])
def test_a_stage_process_writes_its_stacks_at_the_time_it_is_given(tmp_path, in_s):
    """A process started with ANCHORDETR_STACKS_AT writes its stack (in the function it is in) at that
    time, to the stderr it started with; a time past does nothing; its children do not inherit it."""
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent(STUCK % 6))
    env = _stage_env(stacks_in_s=in_s)
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "child: None" in run.stdout
    assert ("in stuck_here" in run.stderr) == (in_s > 0), run.stderr


def test_the_pythons_own_sitecustomize_still_runs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("print('the hidden one ran')\n")
    env = _stage_env(tmp_path)
    run = subprocess.run([sys.executable, "-c", "pass"], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout == "the hidden one ran\n", run.stderr


@pytest.mark.slow
def test_a_failing_test_does_not_cancel_the_stack_dump(tmp_path):
    """pytest cancels faulthandler's timer at a failing test; tests/conftest.py arms it again."""
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_two.py").write_text(
        "import time\n\ndef test_fails():\n    assert False\n\ndef test_stuck():\n    time.sleep(25)\n"
    )
    env = _stage_env(stacks_in_s=15)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "1 failed, 1 passed" in run.stdout, run.stdout
    assert "in test_stuck" in run.stderr, run.stderr


@pytest.mark.slow
def test_both_sides_of_an_ab_stage_get_the_stack_dump(tmp_path):
    tree, out = _run_gpu_sh(tmp_path, STAGES="ab", AB_OLD=str(tmp_path), AB_OLD_COMMIT="def5678")
    site = tree / "scripts" / "gpu_site"
    sides = re.findall(
        r"python3 \S*ab_transformer.py with path (\S+)", (out / "logs" / "gpu.log").read_text()
    )
    assert sides == [f"/tmp/ab_old_site:{site}", str(site)], sides
