"""Cross-process locks for an ablation grid, so two `ghostnetv3 ablate` on one plan share its runs.

Each run is claimed with an exclusive `fcntl.flock` on `<run_root>/_locks/<run>.lock` (beside the run
directory, not in it: the `train` process inside takes the run directory's own lock). A process that
finds a run claimed by another live process skips it; the teacher, each seed's teacher cache and the
report are shared, so a process waits for them instead. The OS drops a flock when its process dies,
however it dies, so a killed grid never leaves a run claimed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator, Optional


class Claim:
    """An exclusive flock held on a lock file; `release()` (or the process ending) drops it."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _stamp(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def holder(path: Path) -> Optional[str]:
    """The PID written by the process that last claimed `path` (the live holder while it is locked)."""
    try:
        pid = path.read_text().strip()
    except OSError:
        return None
    return pid if pid.isdigit() else None


def try_claim(path: Path) -> Optional[Claim]:
    """Claim `path` now, or None when another open lock (another process, or another claim in this
    one) holds it."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    _stamp(fd)
    return Claim(path, fd)


@contextlib.contextmanager
def waiting_claim(path: Path, on_wait=None) -> Iterator[Claim]:
    """Hold `path` for the block, waiting for another process that holds it (`on_wait(pid)` is
    called once first, so the wait is announced)."""
    claim = try_claim(path)
    if claim is None:
        if on_wait is not None:
            on_wait(holder(path))
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        _stamp(fd)
        claim = Claim(path, fd)
    try:
        yield claim
    finally:
        claim.release()
