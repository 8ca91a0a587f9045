"""Which weights a command takes from a run — one rule for eval, export, quantize, bench, fuse,
predict and a teacher run.

A run directory holds `best.pt` (the epoch validation scored best) and `last.pt` (the final
state); each holds the raw weights and, with EMA on, the EMA weights. Unless told otherwise
(`--checkpoint best|last`, `--weights raw|ema`) every command takes best.pt (else last.pt) and
the weights that epoch's validation picked (`best_source`), else EMA when there is EMA. So
`eval`'s "fused" row, the file `export` writes and what `predict` answers are one model.

The rule works on a loaded checkpoint; `engine.run.Run` reads the files (`Run.choose`). This module
stays light (no data or model imports), so every command line can offer `add_weights_flags`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import checkpoint as ckpt_io

__all__ = ["CHECKPOINTS", "WEIGHTS", "WeightsChoice", "add_weights_flags", "resolve_run_checkpoint",
           "choose_weights"]

CHECKPOINTS = ("best", "last")
WEIGHTS = ("raw", "ema")
_FILES = {"best": ckpt_io.BEST, "last": ckpt_io.LAST}
# where a checkpoint keeps its weights: ours first, then the layouts met in the wild (timm, reference code)
_EMA_KEYS = (ckpt_io.EMA_KEY, "model_ema", "ema")
_RAW_KEYS = (ckpt_io.RAW_KEY, "model")


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
    has_ema = any(_has(state, k) for k in _EMA_KEYS)
    has_raw = any(_has(state, k) for k in _RAW_KEYS)
    if not has_ema and not has_raw:  # a flat {name: tensor} file (fused export, safetensors)
        if weights == "ema":
            raise ValueError(f"{where} is a plain state dict with no EMA weights; drop --weights ema")
        return "plain", "the only weights in the file"
    if weights == "ema" and not has_ema:
        raise ValueError(f"{where} has no EMA weights (trained with --model-ema false); use --weights raw")
    if weights is not None:
        return weights, "as asked"
    source = state.get(ckpt_io.BEST_SOURCE_KEY)
    if source == "raw" or (source == "ema" and has_ema):
        return source, "the run's validation picked them"
    return ("ema", "EMA is kept, no validation choice recorded") if has_ema else ("raw", "no EMA weights kept")
