"""How a long deploy step behaves: it says what it is doing, and a SIGTERM cleans up after it.

The converters can work for minutes with nothing to show (ExecuTorch's lowering of a 224-px
GhostNetV3 took over 3 minutes; LiteRT's import alone ~12 s), and what they do print is noise
(absl / oneDNN notices, progress bars, graph dumps), silenced by `quiet_output`. `step` prints
one line when a step starts and a "still ..." line every HEARTBEAT_S seconds while it runs,
written to the terminal past that silencing.

SIGTERM's default action ends the process on the spot, so the `finally` clauses that remove a
half-written export never ran (a hidden `.tmp-<pid>-model.onnx` stayed behind).
`sigterm_interrupts` turns it into KeyboardInterrupt for the length of a block, and
`made_folders` removes the folders a failed step made for its outputs.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

__all__ = ["step", "quiet_output", "sigterm_interrupts", "made_folders", "HEARTBEAT_S"]

HEARTBEAT_S = 30.0  # seconds between "still ..." lines


def _terminal_writer(log: Callable[[str], None]) -> tuple[Callable[[str], None], Callable[[], None]]:
    """(write a line, release) that reach the real stdout even while its file descriptor is
    redirected: a duplicate of fd 1 taken now, when `log` is plain print to the process's stdout;
    else `log` itself (a no-op for --json, a capture in tests)."""
    try:
        real = log is print and sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError + ValueError
        real = False
    if not real:
        return log, lambda: None
    fd = os.dup(1)

    def write(line: str) -> None:
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            os.write(fd, (line + "\n").encode())
    return write, lambda: os.close(fd)


@contextlib.contextmanager
def step(log: Callable[[str], None], what: str, every: Optional[float] = None) -> Iterator[None]:
    """Log `what ...`, then `  still what (N s)` every `every` seconds (default HEARTBEAT_S) until
    the block ends."""
    every = HEARTBEAT_S if every is None else every
    log(f"{what} ...")
    write, release = _terminal_writer(log)
    t0, stop = time.monotonic(), threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            write(f"  still {what} ({time.monotonic() - t0:.0f} s)")

    thread = threading.Thread(target=beat, name="ghostnetv3-step", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        release()


@contextlib.contextmanager
def made_folders(directory: str | os.PathLike) -> Iterator[Path]:
    """Make `directory` and its missing parents; on the way out remove those of them that are
    still empty (a failed command leaves no empty `deploy/` behind; a finished one keeps its files)."""
    directory = Path(directory)
    made, d = [], directory
    while not d.exists() and d != d.parent:
        made.append(d)  # deepest first
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    try:
        yield directory
    finally:
        for d in made:
            with contextlib.suppress(OSError):  # not empty (the outputs are there) or gone
                d.rmdir()


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Silence what third-party code prints straight to the process's file descriptors 1 and 2
    (converters' graph dumps and progress bars, TensorFlow's absl / oneDNN lines at import, LiteRT's
    "Created TensorFlow Lite XNNPACK delegate"), which no Python-level redirect reaches."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"terminated (signal {signum})")


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt (so `finally` clauses run); outside it,
    whatever handler was there before. A no-op off the main thread or where SIGTERM is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
