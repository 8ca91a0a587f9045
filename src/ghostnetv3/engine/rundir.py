"""One process per run directory: an exclusive `fcntl.flock` on RUN_DIR/.lock.

Two `ghostnetv3 train` into one directory (or a `--resume` of a run that is still alive) would
interleave metrics.jsonl and overwrite each other's checkpoints while both report success. The
lock is held for the whole run; the OS releases it when the process ends, however it ends, so a
SIGKILLed run never leaves a stale lock (the file stays, the lock does not).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from ghostnetv3.errors import RunDirBusy

LOCK_FILE = ".lock"
_held: dict[Path, "RunDirLock"] = {}  # the locks this process holds, by resolved run directory


class RunDirLock:
    def __init__(self, run_dir: Path, fd: int, created: bool):
        self.run_dir, self.fd, self.created = run_dir, fd, created
        self.key = run_dir.resolve()

    def release(self) -> None:
        """Unlock; a directory this run created and left with nothing but the lock is removed
        (a run that failed at start leaves no empty directory behind)."""
        if self.fd < 0:
            return
        if self.created:  # removed while still locked, so no twin can take the lock of a deleted file
            try:
                if {p.name for p in self.run_dir.iterdir()} <= {LOCK_FILE}:
                    (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
                    self.run_dir.rmdir()
            except OSError:
                pass
        os.close(self.fd)  # closing the only descriptor drops the flock
        self.fd = -1
        _held.pop(self.key, None)


def _holder(fd: int) -> Optional[str]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return None
    return pid if pid.isdigit() else None


def lock_run_dir(run_dir: str | os.PathLike, created: bool = False) -> RunDirLock:
    """Take RUN_DIR's lock or raise RunDirBusy naming the PID that holds it. Re-entrant within a
    process (a second call returns the lock already held)."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held:
        return _held[key]
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise RunDirBusy(f"{run_dir} is in use by {'process ' + pid if pid else 'another process'} (a "
                         f"training run writes to it); wait for it to finish, stop it"
                         f"{' (kill ' + pid + ')' if pid else ''}, or train into another --experiment") from None
    except OSError:
        os.close(fd)
        raise
    try:  # a failed run removed the file (and its directory) while we waited on it: lock the new one
        same = os.fstat(fd).st_ino == os.stat(run_dir / LOCK_FILE).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        run_dir.mkdir(parents=True, exist_ok=True)
        return lock_run_dir(run_dir, created)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    lock = _held[key] = RunDirLock(run_dir, fd, created)
    return lock


def lock_holder(run_dir: str | os.PathLike) -> Optional[str]:
    """'process PID' (or 'another process') when a live process holds RUN_DIR's lock, else None.
    Probes with a shared lock released at once; never creates the lock file."""
    run_dir = Path(run_dir)
    if run_dir.resolve() in _held:
        return None
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no run has ever locked it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        return f"process {pid}" if pid else "another process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def held_dirs() -> set[Path]:
    return set(_held)


def release_since(before: set[Path], failed: bool) -> None:
    """Release the locks taken since `held_dirs()` returned `before` (the end of one `train` call);
    a failed run's directory is removed if it holds nothing but the lock."""
    for key in set(_held) - before:
        lock = _held[key]
        if not failed:
            lock.created = False  # a finished run's directory is kept whatever it holds
        lock.release()
