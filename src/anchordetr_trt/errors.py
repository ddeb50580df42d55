"""Exceptions raised for bad user input; each message names the problem and the fix."""


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
