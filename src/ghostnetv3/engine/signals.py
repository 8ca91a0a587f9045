"""SIGINT/SIGTERM during training: the loop finishes its step, saves a checkpoint and stops."""
from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["StopFlag"]


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint after the current step."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum:  # second signal: the user insists
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
