"""scripts.sass_rcda: rcda_aggregate's main loop found in the SASS of its sm_90 build, and what a step
issues (docs/transformer_performance.md reads these counts)."""

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_build_keeps_its_registers_and_a_step_issues_16_products_and_the_joint_weights_paired():
    # In a process without the interpreter: the kernel is compiled for sm_90, not run (no GPU needed).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "scripts.sass_rcda"], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    header, *lines = run.stdout.splitlines()
    programs, loop_spills = map(
        int, re.search(r"programs per SM: (\d+).*, (\d+) in the main", header).groups()
    )
    # An SM's registers hold at least two of these programs (4 warps each); none spills in the loop.
    assert (programs >= 2, loop_spills) == (True, 0), header
    counts = {line.split()[1]: int(line.split()[0]) for line in lines}
    # Two rows h of 64 columns (K = 128) for 128 queries: 8 k-steps of 16 for each of two 64-row tiles.
    assert counts["HGMMA.64x32x16.F32"] == 16
    # The step's 128 x 128 joint weights over 128 threads, two 16-bit products per instruction.
    assert counts["HMUL2"] == 64
