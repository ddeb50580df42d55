"""scripts.ncu_stalls: an Nsight Compute source page's stall samples split into loops and the code
outside them."""

import gzip

import pytest

from scripts import ncu_stalls

COLUMNS = ["Address", "Source", "Warp Stall Sampling (All Samples)", "stall_wait", "stall_long_sb",
           "stall_wait (Not Issued)"]  # fmt: skip


def page(tmp_path, rows):
    lines = ['"Kernel Name","k",', ",".join(f'"{c}"' for c in COLUMNS)]
    lines += [",".join(f'"{v}"' for v in row) for row in rows]
    path = tmp_path / "sass.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_samples_are_split_between_the_loops_innermost_first_and_the_code_outside(tmp_path):
    rows = [
        ("0x100", "LDG.E R1, [R2]", "10", "0", "10", "0"),
        ("0x110", "HMUL2 R3, R1, R1", "20", "20", "0", "5"),  # outer loop's first instruction
        ("0x120", "HGMMA.64x32x16.F32 R4, R3", "30", "30", "0", "0"),  # inner loop
        ("0x130", "@P0 BRA.U !UP0, 0x120", "0", "0", "0", "0"),  # a branch with modifiers
        ("0x140", "@P1 BRA 0x110", "40", "0", "40", "0"),
        ("0x150", "EXIT", "0", "", "-", "0"),
    ]
    summary = ncu_stalls.summarize(ncu_stalls.read_rows(page(tmp_path, rows)))
    regions = summary["regions"]
    assert summary["samples"] == 100
    assert {name: region["share"] for name, region in regions.items()} == pytest.approx(
        {"outside loops": 0.1, "loop 2": 0.6, "loop 1": 0.3}
    )
    # "(Not Issued)" columns are not reasons of their own.
    assert regions["loop 2"]["stalls"] == pytest.approx({"long_sb": 40 / 60, "wait": 20 / 60})
    assert regions["loop 1"]["instructions"] == 2  # the HGMMA and its branch


def test_a_gzipped_page_reads_as_the_plain_one(tmp_path):
    plain = page(tmp_path, [("0x100", "EXIT", "3", "3", "0", "0")])
    packed = tmp_path / "sass.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert ncu_stalls.read_rows(packed) == ncu_stalls.read_rows(plain)


def test_an_empty_page_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no instructions"):
        ncu_stalls.read_rows(page(tmp_path, []))


def test_a_page_without_the_instructions_header_is_refused(tmp_path):
    path = tmp_path / "details.csv"
    path.write_text('"ID","Metric Name","Metric Value"\n"0","Duration","1"\n')
    with pytest.raises(SystemExit, match="not an ncu source page"):
        ncu_stalls.read_rows(path)
