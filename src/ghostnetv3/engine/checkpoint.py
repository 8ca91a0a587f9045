"""Checkpoints that survive crashes and load with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings and lists — no pickled objects — so it
is safe to load from anywhere. It is written to a temp file in the same directory, fsynced and
renamed over the old one: a crash or a full disk leaves the previous checkpoint intact.
"""
from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"
BEST = "best.pt"


def _write(obj: Any, f) -> None:
    torch.save(obj, f)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            _write(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        what = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise RuntimeError(f"could not save checkpoint {path} ({what}){kept}") from e
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory (its last.pt) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        if (p / LAST).is_file():
            return p / LAST
        raise FileNotFoundError(f"no checkpoint in {p} (expected {p / LAST}); "
                                f"was the run killed before its first checkpoint? start it again without --resume")
    if p.is_file():
        return p
    raise FileNotFoundError(f"no such run directory or checkpoint: {p}")


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP and torch.compile wrappers add prefixes; checkpoints never carry them."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


# --- RNG states as tensors (weights_only-safe) ---

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": float(np_state[4]),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached_gauss"]))
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_internal"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
