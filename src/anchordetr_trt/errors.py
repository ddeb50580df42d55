"""Exceptions raised for bad user input, each message naming the problem and the fix, and the checks of
plain values (integers, seeds, flags, fractions, paths) that every entry point shares."""

import numbers
import os
import re


class AnchorDETRError(Exception):
    """Base class of the package's own errors. ``argument``, when given, names the caller's argument at
    fault (e.g. "variant"), so that the command line can name its flag instead."""

    def __init__(self, *args: object, argument: str | None = None):
        super().__init__(*args)
        self.argument = argument


class CheckpointError(AnchorDETRError, ValueError):
    """A checkpoint that cannot be loaded: unreadable, truncated, or not an AnchorDETR of a known variant."""


class InputError(AnchorDETRError, ValueError):
    """Images, masks or sizes of the wrong shape, dtype or device, or outside a compiled shape range."""


class BackendUnavailableError(AnchorDETRError, RuntimeError):
    """The requested backend cannot run on this machine."""


def listed(items: list[str], most: int = 3) -> str:
    """The first ``most`` of ``items`` for a message: "a, b, c and 4 more"."""
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


MAX_SEED = 2**64 - 1  # torch.manual_seed's largest; numpy's generators take any integer >= 0


def check_int(name: str, value: object, low: int = 1, high: int | None = None, what: str = "") -> int:
    """``value`` as an int if it is an integer (a Python or numpy int, not a bool) in [low, high];
    InputError naming ``name`` (the caller's argument) and ``what`` the bounds are, otherwise."""
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if integer and value >= low and (high is None or value <= high):
        return int(value)
    bounds = f"in {low}..{high}" if high is not None else f">= {low}"
    raise InputError(f"{name} must be an integer {bounds}{what}, got {value!r}", argument=name)


def check_seed(seed: object, name: str = "seed") -> int:
    """A random seed: an integer in 0..MAX_SEED."""
    return check_int(name, seed, 0, MAX_SEED)


def first_line(error: BaseException) -> str:
    """The first line of a dependency's error message, without terminal escapes (bold, colors)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(error)).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False (a string such as "no" would read as True)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}", argument=name)
    return value


def check_fraction(name: str, value: object, *, open_low: bool = False) -> float:
    """``value`` as a float if it is a real number in [0, 1] (or (0, 1] with ``open_low``), not a bool."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if number and (value > 0 if open_low else value >= 0) and value <= 1:
        return float(value)
    raise InputError(
        f"{name} must be a number in {'(' if open_low else '['}0, 1], got {value!r}", argument=name
    )


def check_path(name: str, value: object) -> os.PathLike | str:
    """``value`` if it is a path (str or os.PathLike, not empty); InputError naming ``name`` otherwise."""
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise InputError(
            f"{name} must be a file or folder path (str or pathlib.Path), got {value!r}", argument=name
        )
    return value
