"""For ``make gpu`` only (scripts/gpu.sh puts this folder on PYTHONPATH): a Python process started with
ANCHORDETR_STACKS_AT=<Unix time> writes every thread's stack to its stderr at that time if it is
still running, so that a stage cut off at its time limit shows where it was, also in a call into
native code, where the interrupt that comes next cannot reach Python. The variable is removed from
the process's environment: the processes it starts (compile workers) do not inherit the timer."""

import faulthandler
import os
import time

_at = os.environ.pop("ANCHORDETR_STACKS_AT", "")
if _at and float(_at) > time.time():
    # A duplicate of stderr as the process started: pytest's output capture later redirects fd 2.
    _stderr = os.fdopen(os.dup(2), "w")
    faulthandler.dump_traceback_later(float(_at) - time.time(), exit=False, file=_stderr)
