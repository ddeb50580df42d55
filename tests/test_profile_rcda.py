"""scripts.profile_rcda: the profiled calls run the op's kernel on its cases and are checked."""

import pytest

from scripts import profile_rcda


@pytest.mark.interpreter
@pytest.mark.parametrize("name", ["small", "model_heads_map"])  # the decoder's and the encoder's layout
def test_profiled_calls_are_checked_against_the_reference(name, monkeypatch):
    assert profile_rcda.run(profile_rcda.SPEC.cases[name], "cpu") < 2e-3
    # A kernel that writes wrong values fails the run (the stage would report it, not profile it).
    launcher = profile_rcda.SPEC.launcher
    monkeypatch.setattr(
        type(profile_rcda.SPEC), "launcher", property(lambda spec: lambda *args: launcher(*args) + 0.5)
    )
    with pytest.raises(AssertionError):
        profile_rcda.run(profile_rcda.SPEC.cases[name], "cpu")


def test_at_least_one_call_is_checked():
    with pytest.raises(ValueError, match="calls must be >= 1"):
        profile_rcda.run(profile_rcda.SPEC.cases["small"], "cpu", calls=0)
