"""scripts/gpu.sh's stage runner, run with a stand-in for python3 (no GPU, no torch): a stage past its
limit is interrupted before it is killed, so that an interrupted GPU suite still writes its report."""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# python3 for gpu.sh: the import check passes, any other command returns at once, except pytest, which
# runs until a signal and writes its junit file only on SIGINT (as pytest does on KeyboardInterrupt).
STAND_IN = """#!/bin/bash
[[ $1 == -m && $2 == pytest ]] || exit 0
for arg; do [[ $arg == --junitxml=* ]] && junit=${arg#--junitxml=}; done
sleep 120 & child=$!
trap 'echo "<testsuite interrupted=\\"1\\"/>" > "$junit"; kill $child; exit 2' INT
trap 'kill $child; exit 3' TERM
wait
"""


def test_a_stage_past_its_limit_is_interrupted_so_that_pytest_writes_its_junit_file(tmp_path):
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu.sh", tree / "scripts" / "gpu.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STAND_IN)
    (bin_dir / "python3").chmod(0o755)
    out = tmp_path / "out"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "OUT": str(out),
        "STAGES": "tests",
        "GPU_BUDGET_S": "22",  # the tests stage's limit: interrupted at 12 s, killed at 22
        "COMMIT": "abc1234",
    }
    run = subprocess.run(
        ["bash", str(tree / "scripts" / "gpu.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    summary = (out / "logs" / "summary.txt").read_text()
    assert "tests      rc=124" in summary, summary
    assert (out / "gpu_tests.xml").read_text().startswith('<testsuite interrupted="1"/>')
    assert "tests\tabc1234\tgpu_tests.xml\t" in (out / "runs.tsv").read_text()
