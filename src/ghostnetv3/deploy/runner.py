"""Run a model file on a batch: the one runner behind `export`'s check, `quantize`'s scoring and
`bench`'s timing, for every format.

`open_runner(path, fmt, threads)` loads the file in its own runtime (backends/) and returns a
function float32 NCHW batch -> logits (numpy). A file with a fixed batch size (an on-device file,
a static-batch ONNX graph) is fed any batch in chunks of its size, the last one zero-padded and
its padding dropped; a batch of exactly that size goes straight through (what `bench` times).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ghostnetv3.deploy.backends import backend_for

__all__ = ["Runner", "open_runner", "fixed_batch"]

Runner = Callable[[np.ndarray], np.ndarray]


def fixed_batch(run: Runner, size: Optional[int]) -> Runner:
    """`run`, which takes exactly `size` images (None: any number), fed any batch."""
    if not size:
        return run

    def run_in_chunks(x: np.ndarray) -> np.ndarray:
        if len(x) == size:
            return run(x)
        outs = []
        for i in range(0, len(x), size):
            c = x[i:i + size]
            if len(c) < size:
                c = np.concatenate([c, np.zeros((size - len(c),) + c.shape[1:], c.dtype)])
            outs.append(run(c))
        return np.concatenate(outs)[:len(x)]
    return run_in_chunks


def open_runner(path: str | os.PathLike, fmt: str, threads: Optional[int] = None) -> Runner:
    """A function float32 NCHW batch -> logits that runs `path` (format `fmt`) in its own runtime
    with `threads` intra-op threads (None: the runtime's default)."""
    backend = backend_for(fmt)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    run, size = backend.load_runner(path, threads)
    return fixed_batch(run, size)
