"""Where a test can run, and the helpers several test files share.

- ``gpu``-marked tests need a CUDA GPU (``make gpu`` runs them); ``no_gpu``-marked tests check what a
  machine without one is told.
- ``interpreter``-marked tests (``needs_interpreter``) run the Triton kernels on the CPU, which needs
  ``TRITON_INTERPRET=1`` set before triton is imported (``make test`` and ``make test-fast`` set it).
  Selected on a machine without a GPU and without the interpreter, they stop the run with a usage
  error rather than skip: a suite that skipped them would pass without testing a kernel. On a GPU
  they are skipped: the ``gpu``-marked tests run the kernels compiled.
- Under ``make gpu``, a stage's stack dump (``scripts/gpu_site/sitecustomize.py``) stays armed past
  failing tests.
"""

import functools
import sys

import pytest
import torch

needs_interpreter = pytest.mark.interpreter
H100_SHARED_PER_BLOCK = 227 * 1024  # the most shared memory a thread block may opt into on sm_90


@functools.cache
def interpreted() -> bool:
    """Whether the Triton kernels run under the interpreter (TRITON_INTERPRET=1 before triton's import)."""
    from triton.runtime.interpreter import InterpretedFunction

    from anchordetr_trt.custom_ops import masked_softmax

    return isinstance(masked_softmax.masked_softmax_kernel, InterpretedFunction)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``anchordetr-trt argv``, run in this process."""
    from anchordetr_trt.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's --help and usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = torch.cuda.is_available()
    for item in items:
        # Markers, not keywords: a parameter id such as [gpu] is a keyword too.
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run by `make gpu`)"))
        if item.get_closest_marker("no_gpu") and has_gpu:
            item.add_marker(pytest.mark.skip(reason="checks what a machine without a GPU is told"))
        if item.get_closest_marker("interpreter") and has_gpu and not interpreted():
            item.add_marker(
                pytest.mark.skip(reason="runs the kernels on the CPU; the gpu tests run them here")
            )


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -m/-k deselection: only the tests that would run count.
    if torch.cuda.is_available() or interpreted():
        return
    kernel_tests = [item for item in session.items if item.get_closest_marker("interpreter")]
    if kernel_tests:
        raise pytest.UsageError(
            f"{len(kernel_tests)} selected tests run the Triton kernels on the CPU, which needs "
            "TRITON_INTERPRET=1 set before triton is imported: run `make test` (or `make test-fast`), or "
            'TRITON_INTERPRET=1 pytest ...; -m "not interpreter" leaves those tests out'
        )


@pytest.hookimpl(trylast=True)
def pytest_exception_interact() -> None:
    # pytest cancels faulthandler's one timer at each failing test; make gpu's stack dump uses it.
    arm = getattr(sys.modules.get("sitecustomize"), "arm_stack_dump", None)
    if arm is not None:
        arm()
