"""The README's first example runs as written, offline, right after set-up."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_the_first_example_runs_offline():
    first = re.search(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    namespace: dict = {}
    exec(compile(first, str(README), "exec"), namespace)
    (detections,) = namespace["detections"]
    assert {"scores", "labels", "boxes"} <= set(detections)
    assert len(detections["scores"]) == 100
