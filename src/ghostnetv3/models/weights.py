"""Which weights a command takes from a run — one rule for eval, export, quantize, bench, fuse,
predict and a teacher run.

A run directory holds `best.pt` (the epoch validation scored best) and `last.pt` (the final
state); each holds the raw weights and, with EMA on, the EMA weights. Unless told otherwise
(`--checkpoint best|last`, `--weights raw|ema`) every command takes best.pt (else last.pt) and
the weights that epoch's validation picked (`best_source`), else EMA when there is EMA. So
`eval`'s "fused" row, the file `export` writes and what `predict` answers are one model.

This module sits with the models (the lowest layer) so that distill, engine and deploy can all
follow the rule without importing each other.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ghostnetv3 import safeload

__all__ = ["CHECKPOINTS", "WEIGHTS", "WeightsChoice", "resolve_run_checkpoint", "choose_weights", "pick_weights",
           "add_weights_flags"]

CHECKPOINTS = ("best", "last")
WEIGHTS = ("raw", "ema")
_FILES = {"best": "best.pt", "last": "last.pt"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class WeightsChoice:
    path: Path                   # the checkpoint file
    checkpoint: str              # best | last | file
    weights: str                 # raw | ema | plain (a flat state dict: no choice to make)
    reason: str                  # why these weights, for the user
    state: Any = field(default=None, repr=False)  # the loaded checkpoint (dict), to avoid a second read

    @property
    def use_ema(self) -> bool:
        return self.weights == "ema"

    def describe(self) -> str:
        """e.g. 'EMA weights of best.pt (validation picked them)'."""
        label = {"ema": "EMA weights", "raw": "raw weights", "plain": "weights"}[self.weights]
        return f"{label} of {self.path.name} ({self.reason})"


def add_weights_flags(p) -> None:
    """--weights raw|ema and --checkpoint best|last, the same on every command that reads a run."""
    p.add_argument("--weights", choices=WEIGHTS, default=None,
                   help="raw or EMA weights (default: the ones the run's validation picked, else EMA if any)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default=None, dest="run_checkpoint",
                   help="a run directory's best.pt or last.pt (default: best.pt, else last.pt)")


def resolve_run_checkpoint(source: str | os.PathLike, checkpoint: Optional[str] = None) -> tuple[Path, str]:
    """(file, 'best' | 'last' | 'file'): a run directory's best.pt (else last.pt), or a file itself."""
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint: {checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
    p = Path(source)
    if p.is_dir():
        if checkpoint is not None:
            f = p / _FILES[checkpoint]
            if not f.is_file():
                raise FileNotFoundError(f"{p} has no {f.name} yet (--checkpoint {checkpoint}); "
                                        f"has the run finished an epoch?")
            return f, checkpoint
        for kind in CHECKPOINTS:
            if (p / _FILES[kind]).is_file():
                return p / _FILES[kind], kind
        raise FileNotFoundError(f"no checkpoint in {p} (no best.pt or last.pt): has the run saved one yet?")
    if p.is_file():
        if checkpoint is not None:
            raise ValueError(f"--checkpoint {checkpoint} picks a file of a run directory; {p} is a file already")
        return p, "file"
    raise FileNotFoundError(f"no such run directory or checkpoint: {p}")


def _has(state: Any, key: str) -> bool:
    v = state.get(key) if isinstance(state, dict) else None
    return isinstance(v, dict) and bool(v)


def choose_weights(state: Any, weights: Optional[str] = None, where: str = "the checkpoint") -> tuple[str, str]:
    """(raw | ema | plain, reason) for a loaded checkpoint — the rule itself."""
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"--weights: {weights!r} is not one of {', '.join(WEIGHTS)}")
    has_ema = any(_has(state, k) for k in ("state_dict_ema", "model_ema", "ema"))
    has_raw = any(_has(state, k) for k in ("state_dict", "model"))
    if not has_ema and not has_raw:  # a flat {name: tensor} file (fused export, safetensors)
        if weights == "ema":
            raise ValueError(f"{where} is a plain state dict with no EMA weights; drop --weights ema")
        return "plain", "the only weights in the file"
    if weights == "ema" and not has_ema:
        raise ValueError(f"{where} has no EMA weights (trained with --model-ema false); use --weights raw")
    if weights is not None:
        return weights, "as asked"
    source = state.get("best_source")
    if source == "raw" or (source == "ema" and has_ema):
        return source, "the run's validation picked them"
    return ("ema", "EMA is kept, no validation choice recorded") if has_ema else ("raw", "no EMA weights kept")


def _read(path: Path) -> Any:
    if path.name.endswith(".safetensors"):
        return safeload.read(path)  # a broken file is one line naming it, as for .pt files
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an image, a truncated file, a pickled object: say so, don't suggest unpickling
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            raise ValueError(f"{path} is an image, not a checkpoint; to classify it: "
                             f"ghostnetv3 predict RUN_DIR {path}") from None
        return safeload.read(path)  # raises its one-line BadCheckpoint naming the file and what to do


def pick_weights(source: str | os.PathLike, *, weights: Optional[str] = None,
                 checkpoint: Optional[str] = None) -> WeightsChoice:
    """The checkpoint file and weights a command takes from RUN_DIR | CHECKPOINT (see module doc)."""
    path, kind = resolve_run_checkpoint(source, checkpoint)
    if kind == "best" and checkpoint is None:  # a broken best.pt, an intact last.pt: take it, and say so
        path, state = safeload.first_intact([path, path.with_name(_FILES["last"])])
        kind = "best" if path.name == _FILES["best"] else "last"
    else:
        state = _read(path)
    chosen, reason = choose_weights(state, weights, where=str(path))
    return WeightsChoice(path=path, checkpoint=kind, weights=chosen, reason=reason, state=state)
