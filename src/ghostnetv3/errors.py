"""The errors we raise on purpose.

`UserError` marks a failure the user can fix (a bad flag, a broken file, a full disk, a run
directory in use): `ghostnetv3` prints its message as one line and exits 1. Anything else is a
bug or a surprise and keeps its traceback. It subclasses RuntimeError so callers that caught
RuntimeError before keep working.
"""
from __future__ import annotations

__all__ = ["UserError", "BadCheckpoint", "SaveError", "RunDirBusy"]


class UserError(RuntimeError):
    """A failure with a message that says what went wrong and what to do next."""


class BadCheckpoint(UserError, ValueError):
    """A checkpoint file that cannot be read (empty, truncated, not PyTorch, pickled objects)."""


class SaveError(UserError, OSError):
    """A checkpoint or log could not be written (disk full, read-only, permissions)."""


class RunDirBusy(UserError):
    """Another live process holds the run directory's lock."""
