"""scripts/gpu.sh's stage runner, run with a stand-in for python3 (no GPU, no torch): a stage past its
limit is interrupted before it is killed, so that an interrupted GPU suite still writes its report."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# python3 for gpu.sh: the import check passes, any other command returns at once, except pytest, which
# runs until a signal and writes its junit file only on SIGINT (as pytest does on KeyboardInterrupt),
# or, as a hung C call would, ignores SIGINT (IGNORE_INT=1).
STAND_IN = """#!/bin/bash
[[ $1 == -m && $2 == pytest ]] || exit 0
for arg; do [[ $arg == --junitxml=* ]] && junit=${arg#--junitxml=}; done
sleep 120 & child=$!
if [[ $IGNORE_INT == 1 ]]; then trap '' INT
else trap 'echo "<testsuite interrupted=\\"1\\"/>" > "$junit"; kill $child; exit 2' INT; fi
trap 'kill $child; exit 3' TERM
wait
"""


@pytest.mark.slow
@pytest.mark.parametrize(("ignore_int", "rc"), [(0, 124), (1, 137)])
def test_a_stage_past_its_limit_is_interrupted_then_killed(tmp_path, ignore_int, rc):
    """Interrupted 10 s before the limit (pytest then writes its junit file); killed at the limit where
    the interrupt is ignored."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu.sh", tree / "scripts" / "gpu.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STAND_IN)
    (bin_dir / "python3").chmod(0o755)
    out = tmp_path / "out"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OUT": str(out),
        "STAGES": "tests",
        "GPU_BUDGET_S": "25",  # the tests stage's limit: interrupted at 15 s, killed at 25
        "IGNORE_INT": str(ignore_int),
        "COMMIT": "abc1234",
    }
    run = subprocess.run(
        ["bash", str(tree / "scripts" / "gpu.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    summary = (out / "logs" / "summary.txt").read_text()
    assert f"tests      rc={rc}" in summary, summary
    junit = out / "gpu_tests.xml"
    if ignore_int:
        assert not junit.exists()
    else:
        assert junit.read_text().startswith('<testsuite interrupted="1"/>')
    assert "tests\tabc1234\tgpu_tests.xml\t" in (out / "runs.tsv").read_text()
