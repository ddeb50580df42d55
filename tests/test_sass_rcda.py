"""scripts.sass_rcda: the main loops of rcda_aggregate's and self_attention's sm_90 builds found in
their SASS, and what a step issues (docs/transformer_performance.md reads these counts)."""

import os
import re
import subprocess
import sys

import pytest


def sass_report(*args: str) -> tuple[int, int, dict[str, int]]:
    """(programs per SM, spilling instructions in the main loop, the loop's instructions by opcode) of
    ``python -m scripts.sass_rcda *args``, in a process without the interpreter: the kernel is compiled
    for sm_90, not run (no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "scripts.sass_rcda", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    header, *lines = run.stdout.splitlines()
    programs, loop_spills = map(
        int, re.search(r"programs per SM: (\d+).*, (\d+) in the main", header).groups()
    )
    return programs, loop_spills, {line.split()[1]: int(line.split()[0]) for line in lines}


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "programs_per_sm"), [(1, 4), (8, 2)])  # 64 queries of 4 warps; 128 of 8
def test_self_attention_steps_mask_nothing_and_its_sm_holds_sixteen_warps(batch, programs_per_sm):
    programs, loop_spills, counts = sass_report("--op", "self_attention", "--batch", str(batch))
    assert (programs >= programs_per_sm, loop_spills) == (True, 0)
    # Each warpgroup's 64 queries x 64 keys (K = 32: two k-steps) and their product with the values
    # (K = 64).
    assert (counts["HGMMA.64x64x16.F32"], counts["HGMMA.64x32x16.F32"]) == (2, 4)
    # Whole steps select nothing (only the last, partial one masks its scores, outside the loop);
    # 64 x 64 exponents over 128 threads.
    assert "FSEL" not in counts and counts["MUFU.EX2"] >= 32


@pytest.mark.slow
def test_the_build_keeps_its_registers_and_a_step_issues_16_products_and_the_joint_weights_paired():
    programs, loop_spills, counts = sass_report()
    # An SM's registers hold at least two of these programs (4 warps each); none spills in the loop.
    assert (programs >= 2, loop_spills) == (True, 0)
    # Two rows h of 64 columns (K = 128) for 128 queries: 8 k-steps of 16 for each of two 64-row tiles.
    assert counts["HGMMA.64x32x16.F32"] == 16
    # The step's 128 x 128 joint weights over 128 threads, two 16-bit products per instruction.
    assert counts["HMUL2"] == 64
