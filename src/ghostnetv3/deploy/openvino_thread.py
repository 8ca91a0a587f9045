"""OpenVINO's own thread, on which no signal is ever handled.

OpenVINO's CPU plugin (2026.4) gives the thread that compiles or runs a model an alternate signal
stack of its own and puts the previous one back when the model is destroyed; models destroyed in
another order than they were made leave the thread on a freed stack, and the next signal handled
there (SIGCHLD when a child exits, SIGINT, SIGTERM) kills the process with a segmentation fault.
So every OpenVINO compile, inference, NNCF calibration and release runs on one thread that blocks
all signals.
"""
from __future__ import annotations

import concurrent.futures
import signal
import threading
from typing import Callable, Optional

__all__ = ["on_openvino_thread"]

_POOL: Optional[concurrent.futures.ThreadPoolExecutor] = None


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())


def on_openvino_thread(fn: Callable, *args, **kwargs):
    """Run fn(*args, **kwargs) on OpenVINO's thread and return its result (or raise its error)."""
    global _POOL
    if threading.current_thread().name.startswith("openvino"):  # already there (e.g. a release during GC)
        return fn(*args, **kwargs)
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="openvino", initializer=_block_signals)
    return _POOL.submit(fn, *args, **kwargs).result()
