"""For ``make gpu`` only (scripts/gpu.sh puts this folder first on PYTHONPATH): a Python process started
with ANCHORDETR_STACKS_AT=<Unix time> writes every thread's stack to its stderr at that time if it is
still running, so that a stage cut off at its time limit shows where it was, also in a call into
native code, where the interrupt that comes next cannot reach Python. The variable is removed from
the process's environment: the processes it starts (compile workers) do not inherit the timer. The
Python's own sitecustomize, which this one hides, is run after it."""

import faulthandler
import importlib.util
import os
import sys
import time

_AT = float(os.environ.pop("ANCHORDETR_STACKS_AT", "") or 0)
# A duplicate of stderr as the process started: pytest's output capture later redirects fd 2.
_STDERR = os.fdopen(os.dup(2), "w") if _AT else None


def arm_stack_dump() -> None:
    """Set faulthandler's timer (a process has one) to the time given, if it is still ahead: again
    after code that cancels it (pytest does, at each failing test: tests/conftest.py calls this)."""
    if time.time() < _AT:
        faulthandler.dump_traceback_later(_AT - time.time(), exit=False, file=_STDERR)


def _run_hidden_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in sys.path:
        path = os.path.join(folder or ".", "sitecustomize.py")
        if os.path.abspath(folder or ".") != here and os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_hidden_sitecustomize", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


arm_stack_dump()
_run_hidden_sitecustomize()
