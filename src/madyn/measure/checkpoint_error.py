"""The error every check of a checkpoint raises (:class:`CheckpointError`: a checkpoint
madyn must not measure, its message naming it and saying why), and two helpers the checks
share: whether a JSON value is a whole number (an int, not a bool), and an exception's
message on one line (at most 200 characters)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint madyn must not measure; the message names it and says why."""


def is_whole(x) -> bool:
    """Whether the JSON value ``x`` is a whole number (an int; a bool is not one)."""
    return isinstance(x, int) and not isinstance(x, bool)


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
