"""scripts.results_table: every file of a result set listed with its commit and command, and the
figures of the files it knows read from them."""

import json

from scripts import results_table


def test_table_lists_each_file_with_its_run_and_reads_the_figures(tmp_path):
    folder = tmp_path / "h100"
    folder.mkdir()
    (folder / "runs.tsv").write_text(
        "stage\tcommit\tfiles\tcommand\n"
        "tests\tabc1234\tgpu_tests.xml\tpython3 -m pytest -m 'gpu or tensorrt' tests\n"
        "check\tdef5678\tcheck.json\tpython3 -m anchordetr_trt.cli check --out OUT/check\n"
    )
    (folder / "gpu_tests.xml").write_text(
        '<testsuites><testsuite tests="10" failures="1" errors="0" skipped="2"/></testsuites>'
    )
    results = [{"status": status} for status in ("pass", "pass", "fail", "skip")]
    (folder / "check.json").write_text(json.dumps({"results": results}))
    (folder / "notes.txt").write_text("by hand")
    (folder / "check_before_the_fix.json").write_text(json.dumps({"results": results[:1]}))
    (folder / "check_ops.csv").write_text("not json")  # labels keep the kind's suffix

    text = results_table.table([folder])
    assert "| GPU tests | 7 passed, 1 failed, 2 skipped | H100 | abc1234 | `STAGES=tests make gpu` |" in text
    assert "| anchordetr-trt check | 2 passed, 1 failed, 1 skipped | H100 | def5678 |" in text
    assert "| H100 | `gpu_tests.xml` | abc1234 | `python3 -m pytest -m 'gpu or tensorrt' tests` |" in text
    assert "| H100 | `notes.txt` | ? | `?` |" in text  # no run names it
    assert "| anchordetr-trt check | 1 passed, 0 failed, 0 skipped | H100 | ? |" in text  # a labelled run
    assert "`runs.tsv`" not in text

    out = tmp_path / "README.md"
    assert results_table.main([str(folder), "--write", str(out)]) == 0
    assert out.read_text().startswith("# Results") and text in out.read_text()


def test_ab_files_name_each_tree_and_a_cut_off_file_gives_what_it_measured(tmp_path):
    folder = tmp_path / "h100"
    folder.mkdir()
    (folder / "runs.tsv").write_text(
        "stage\tcommit\tfiles\tcommand\nab\tbbb2222\tab_key_means_old.json\tab\n"
    )
    runs = [{"median_ms": 2.0, "img_s": 500.0}, {"median_ms": 2.1, "img_s": 480.0}]
    old = {
        "tag": "old",
        "commit": "aaa1111",
        "whole_model": {"b1": {"runs": runs}},
        "parts": {"b8": {"encoder": {"ms": [1.9, 1.8]}, "decoder": {"ms": [1.5]}}},
    }
    (folder / "ab_key_means_old.json").write_text(json.dumps(old))
    (folder / "ab_key_means_new.json").write_text(json.dumps({"tag": "new", "rcda_aggregate": []}))

    text = results_table.table([folder])
    assert (
        "| A/B key_means, old tree (aaa1111): whole model, 800x800, batch 1 | 2.00 ms, 500 img/s / 2.10 ms, 480 img/s |"
        in text
    )
    assert (
        "| A/B key_means, old tree (aaa1111): encoder + decoder, 800x800, batch 8 | 1.80 + 1.50 ms |" in text
    )
    assert "A/B key_means, new tree" not in text  # cut off before the model was timed: no figure, no error
    assert "| H100 | `ab_key_means_new.json` | ? |" in text


def test_the_warm_up_timing_reads_both_settings_medians(tmp_path):
    folder = tmp_path / "h100"
    folder.mkdir()
    (folder / "runs.tsv").write_text(
        "stage\tcommit\tfiles\tcommand\nwarm\tabc1234\twarm_kernels.json\tpython3 -m x\n"
    )
    # The medians from the runs' seconds, whatever median_s says (an earlier warm_time took the upper one).
    settings = {
        "1 worker": {"seconds": [20.1, 23.1], "median_s": 23.1},
        "default": {"seconds": [9.4], "median_s": 9.4},
    }
    (folder / "warm_kernels.json").write_text(json.dumps({"variants": 16, "settings": settings}))
    text = results_table.table([folder])
    assert (
        "| compile()'s custom-kernel warm-up, cold (16 variants): 1 worker / threads, median of 2 / 1 "
        "| 21.6 s / 9.4 s "
        "| H100 | abc1234 | `STAGES=warm make gpu` |"
    ) in text
