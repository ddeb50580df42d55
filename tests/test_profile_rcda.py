"""scripts.profile_rcda: the profiled launches run the shipped kernel on the model's layouts, checked."""

import pytest

from scripts import profile_rcda


@pytest.mark.interpreter
@pytest.mark.parametrize("part", list(profile_rcda.PARTS))
def test_the_profiled_calls_match_the_reference(part):
    # The encoder's map and the decoder's sequence of queries, on a 4x4 map under the interpreter.
    assert profile_rcda.launch(part, batch=1, device="cpu", side=4, warmup=0, calls=1) < 1e-4
