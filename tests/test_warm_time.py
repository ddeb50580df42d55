"""scripts/warm_time.py's report (the timings themselves run on the GPU: ``STAGES=warm make gpu``)."""

import pytest

from scripts import warm_time


def test_the_summary_gives_each_setting_its_runs_and_median():
    runs = [
        {"workers": 1, "seconds": 14.0, "variants": 23},
        {"workers": None, "seconds": 5.0, "variants": 23},
        {"workers": 1, "seconds": 12.0, "variants": 23},
        {"workers": None, "seconds": 6.0, "variants": 23},
        {"workers": 1, "seconds": 13.0, "variants": 23},
    ]
    summary = warm_time.summarize(runs)
    assert summary["variants"] == 23
    assert summary["settings"]["1 worker"] == {"seconds": [12.0, 13.0, 14.0], "median_s": 13.0}
    assert summary["settings"]["default"] == {"seconds": [5.0, 6.0], "median_s": 5.5}


def test_runs_that_compiled_different_variants_are_an_error():
    runs = [
        {"workers": 1, "seconds": 14.0, "variants": 23},
        {"workers": None, "seconds": 5.0, "variants": 22},
    ]
    with pytest.raises(RuntimeError, match="different numbers of kernel variants"):
        warm_time.summarize(runs)


def test_a_failed_measurement_names_its_setting(monkeypatch):
    class Failed:
        returncode, stdout, stderr = 1, "", "Traceback: CUDA error"

    monkeypatch.setattr(warm_time.subprocess, "run", lambda *_, **__: Failed())
    with pytest.raises(RuntimeError, match="workers=None failed:\nTraceback: CUDA error"):
        warm_time.run_child(None)
