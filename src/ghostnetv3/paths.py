"""Where a command will write, checked before it works.

A read-only folder, a path under an existing file or a folder given as a file name used to
surface as a traceback from whichever library wrote last (both ONNX exporters, TorchScript's
zip writer, matplotlib), after minutes of work. `check_writable` says it in one line up front.
It imports only `errors`, so every layer can use it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ghostnetv3.errors import SaveError

__all__ = ["check_writable"]


def _first_existing(path: Path) -> Path:
    """`path` or the nearest ancestor of it that exists (a relative path ends at '.')."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, flag: str = "--output", folder: bool = False) -> Path:
    """Raise SaveError (one line naming `flag`) unless `path` can be written: as a file, or as a
    folder of files when `folder`. The folders on the way may be missing (they would be made);
    nothing is created: a probe file in the nearest existing folder is made and removed at once."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise SaveError(f"{flag} {path}: is a folder; give a file name (e.g. {path / 'model'}.<ext>)")
    if path.exists() and folder and not path.is_dir():
        raise SaveError(f"{flag} {path}: is a file, not a folder; give a folder")
    base = _first_existing(path if folder else path.parent)
    if not base.is_dir():
        raise SaveError(f"{flag} {path}: {base} is a file, so no folder can be made under it; "
                        f"choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=base)
    except OSError as e:
        raise SaveError(f"{flag} {path}: cannot write in {base} ({e.strerror or e}); make it writable "
                        f"or choose another path") from None
    os.close(fd)
    os.unlink(probe)
    return path
