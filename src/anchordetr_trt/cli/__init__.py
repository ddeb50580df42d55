"""``anchordetr-trt``: info, detect, eval, bench, compile, demo, check and export from the command line.

Errors in the user's input end the command with one line on stderr, in terms of the command's flags,
and exit code 2; any other failure is one line and exit code 1. ``--debug`` shows the traceback instead.
A stdout that stops taking lines (a reader that closed the pipe, a full disk) does not stop the work:
the files are finished, and one line says what happened to stdout (exit code 141 for a closed pipe,
1 otherwise, unless the command failed on its own).
Every flag is checked, and every output location, before any work; torch is imported only by the
commands (``--help`` and ``--version`` stay fast).

Each command is a module here, with ``register`` (its flags) and ``run`` (its work); ``options`` holds
the flag types and the flags several commands share, ``shared`` the checks and the model they share.
"""

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import AnchorDETRError
from . import bench, check, compile, demo, detect, eval, export, info, options
from .options import PROG, Parser
from .shared import in_flags

_USER_ERRORS = (AnchorDETRError, OSError, ValueError, FloatingPointError)
_COMMANDS = (info, detect, eval, bench, compile, demo, check, export)  # in --help's order


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from ..outputs import guarded_stdout, stdout_problem

    args = _parser().parse_args(argv)
    _configure_logging(args.debug)
    _quiet_pillow()
    with guarded_stdout() as stdout:  # a closed pipe or a full disk on stdout does not stop the work
        code = _run(args)
    if stdout.error is None:
        return code
    message, stdout_code = stdout_problem(stdout.error)
    print(
        f"{PROG} {args.command}: {message}{'' if code else '; the command itself finished'}", file=sys.stderr
    )
    return code or stdout_code


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: {_one_line(err, args)}", file=sys.stderr)
        return 2 if isinstance(err, _USER_ERRORS) else 1


def _one_line(err: Exception, args: argparse.Namespace) -> str:
    message = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, _USER_ERRORS):
        return f"error: {type(err).__name__}: {message[:300]} (rerun with --debug for the traceback)"
    return f"error: {in_flags(message, getattr(err, 'argument', None), args)}"


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="AnchorDETR checkpoints compiled to fast FP16 inference modules.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = options.parents()
    for command in _COMMANDS:
        command.register(commands, parents)
    return parser


def _quiet_pillow() -> None:
    """No Pillow warning of a large image (over PIL.Image.MAX_IMAGE_PIXELS, a possible decompression
    bomb) between the command's lines: such an image is read (an aerial photo may be that large);
    past twice the limit Pillow refuses it, and the command says so in its one line."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _configure_logging(debug: bool) -> None:
    logger = logging.getLogger("anchordetr_trt")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    # pycocotools' summary table goes to this logger: shown with --debug only.
    logging.getLogger("anchordetr_trt.eval.scoring").setLevel(logging.DEBUG if debug else logging.WARNING)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (main() may run many times in one process)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass
