"""Reading checkpoint files safely, with one error per broken file — for every layer.

`torch.load(weights_only=True)` never unpickles Python objects, but what it raises for a broken
file is a zoo (EOFError for an empty file, UnpicklingError for random bytes or an object pickle,
RuntimeError without the file name for a truncated zip). `read` turns them all into one
BadCheckpoint that names the file, says what is wrong and what to do. It has no ghostnetv3
imports beyond `errors`, so models, engine, distill and deploy all use it.
"""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file

from ghostnetv3.errors import BadCheckpoint

__all__ = ["read", "load", "require_dict", "first_intact"]

_WHAT_TO_DO = "use another checkpoint (a run directory's last.pt or best.pt) or train again"


def _why_unreadable(path: Path, e: BaseException) -> str:
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return "it is empty (0 bytes): a save or copy was cut off"
    if path.name.endswith(".safetensors"):
        return _why_safetensors_unreadable(size, e)
    with open(path, "rb") as f:
        head = f.read(2)
    if head not in (b"PK", b"\x80\x02"):  # a zip (torch >= 1.6) or a legacy pickle-protocol-2 file
        return f"it is not a PyTorch checkpoint ({size} bytes of something else)"
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "weights only" in text.lower():
        return ("it holds pickled Python objects, which are never loaded (unpickling can run code); "
                "re-save only its tensors from a trusted copy, e.g. torch.save(model.state_dict(), path)")
    if "central directory" in text or "zip archive" in text or isinstance(e, EOFError):
        return f"it is truncated or damaged ({size} bytes)"
    return f"{type(e).__name__}: {text.splitlines()[0][:160] if text else 'unreadable'}"


def _why_safetensors_unreadable(size: int, e: BaseException) -> str:
    """safetensors says 'Error while deserializing header: <why>'; keep the why, in our words."""
    why = str(e).splitlines()[0].split("header:", 1)[-1].strip() if str(e) else type(e).__name__
    if "incomplete" in why or "too small" in why:
        return f"it is truncated ({size} bytes; safetensors: {why})"
    return f"it is not a valid safetensors file ({size} bytes; safetensors: {why})"


def read(path: str | os.PathLike) -> Any:
    """The object in a .pt/.pth/... file (weights_only) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.name.endswith(".safetensors"):
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # torch/pickle/zip/safetensors raise many types for a broken file
        raise BadCheckpoint(f"cannot read checkpoint {path}: {_why_unreadable(path, e)}; {_WHAT_TO_DO}") from None


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint that must be a dict (a training checkpoint, a state dict)."""
    return require_dict(read(path), path)


def require_dict(obj: Any, path: str | os.PathLike) -> dict[str, Any]:
    """`obj` (read from `path`) when it is a dict, else the one BadCheckpoint saying what it holds."""
    if not isinstance(obj, dict):
        raise BadCheckpoint(f"cannot use checkpoint {path}: it holds a {type(obj).__name__}, not a dict of "
                            f"tensors or state dicts; {_WHAT_TO_DO}")
    return obj


def first_intact(paths: Sequence[str | os.PathLike],
                 load: Callable[[Path], dict[str, Any]] = load) -> tuple[Path, dict[str, Any]]:
    """(path, checkpoint) of the first of `paths` that exists and reads; a broken one is skipped with a
    note on stderr (a run's best.pt broken, its last.pt intact). Raises the first error if none reads.
    `load`: how a file is read (engine.run.Run passes its own, which reads each file once)."""
    first_error = None
    for candidate in map(Path, paths):
        if not candidate.is_file():
            continue
        try:
            state = load(candidate)
        except BadCheckpoint as e:
            first_error = first_error or e
            continue
        if first_error is not None:
            print(f"note: {first_error}; using {candidate} instead", file=sys.stderr, flush=True)
        return candidate, state
    if first_error is None:
        raise FileNotFoundError(f"none of {', '.join(map(str, paths))} exists")
    raise first_error
