"""A finished (or running) training run, read once: `Run(RUN_DIR | CHECKPOINT)`.

A run directory holds config.yaml, plan.json, metrics.jsonl, `last.pt` (everything `--resume` needs)
and `best.pt` (the weights the validation picked); engine/checkpoint.py names these files and a
checkpoint's keys, engine/state.py writes them. Every command that reads a run — eval, export,
quantize, bench, predict, fuse, detect, a teacher run, `train --resume` — reads it through `Run`,
which reads each checkpoint file at most once and answers:

    run = Run("runs/fmnist")             # or a checkpoint file: runs/fmnist/last.pt, weights.pt
    run.config, run.plan, run.classes, run.input_spec
    run.weights()                        # the flat state dict `eval`'s fused row, export, predict use
    run.choose(), run.state              # which weights and why; the checkpoint dict itself
    run.train_state("top1")              # where last.pt stands (engine.state.TrainState)

Which weights: engine.weights' rule, the one every command follows (best.pt, else last.pt — a broken
best.pt next to an intact last.pt: last.pt, with a note — and the weights its validation picked).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ghostnetv3 import safeload
from ghostnetv3.data.inputspec import InputSpec
from ghostnetv3.errors import BadCheckpoint
from ghostnetv3.models.checkpoint import read_state_dict

from . import checkpoint as ckpt_io
from .config import TrainConfig, from_checkpoint_dict, read_yaml
from .plan import RunPlan
from .state import TrainState
from .weights import CHECKPOINTS, WeightsChoice, choose_weights, resolve_run_checkpoint

__all__ = ["Run", "pick_weights"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def pick_weights(source: str | os.PathLike, *, weights: Optional[str] = None,
                 checkpoint: Optional[str] = None) -> WeightsChoice:
    """The checkpoint file and weights a command takes from RUN_DIR | CHECKPOINT (see module doc)."""
    return Run(source, checkpoint=checkpoint).choose(weights)


# --------------------------------------------------------------------------- the run

class Run:
    """RUN_DIR, or one checkpoint file (a run's best.pt/last.pt, or any weights file). `checkpoint`
    ('best' | 'last' | None: best.pt, else last.pt) picks the file of a run directory that `state`,
    `config`, `classes`, `input_spec` and `weights` describe. Nothing is read until asked; each
    file is read at most once."""

    def __init__(self, path: str | os.PathLike, checkpoint: Optional[str] = None):
        if checkpoint is not None and checkpoint not in CHECKPOINTS:
            raise ValueError(f"--checkpoint: {checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
        self.path = Path(path)
        self.checkpoint = checkpoint
        self._files: dict[Path, Any] = {}  # resolved path -> what it holds
        self._chosen: Optional[tuple[Path, str, Any]] = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, checkpoint={self.checkpoint!r})"

    # ---- files -------------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        """The run directory (a checkpoint file's folder)."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    def file(self, name: str) -> Path:
        """A file of the run directory, e.g. run.file(ckpt_io.CONFIG_FILE)."""
        return self.dir / name

    def read(self, path: str | os.PathLike) -> Any:
        """What a checkpoint file holds (weights_only; a broken file is one line naming it), read once."""
        path = Path(path)
        key = path.resolve()
        if key not in self._files:
            self._files[key] = _read_checkpoint(path)
        return self._files[key]

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        """`read`, for a file that must hold a dict (a training checkpoint, a state dict)."""
        return safeload.require_dict(self.read(path), path)

    def yaml_config(self) -> dict[str, Any]:
        """RUN_DIR/config.yaml ({} when there is none): the config for people, never the truth."""
        f = self.file(ckpt_io.CONFIG_FILE)
        return (read_yaml(f) or {}) if f.is_file() else {}

    # ---- the chosen checkpoint -----------------------------------------------------------------
    def _choice(self) -> tuple[Path, str, Any]:
        if self._chosen is None:
            path, kind = resolve_run_checkpoint(self.path, self.checkpoint)
            if kind == "best" and self.checkpoint is None:  # a broken best.pt, an intact last.pt: take it, say so
                path, state = safeload.first_intact([path, path.with_name(ckpt_io.LAST)], load=self.load)
                kind = "best" if path.name == ckpt_io.BEST else "last"
            else:
                state = self.read(path)
            self._chosen = (path, kind, state)
        return self._chosen

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint file the run's weights come from."""
        return self._choice()[0]

    @property
    def state(self) -> Any:
        """The chosen checkpoint as loaded (a dict for any checkpoint of ours)."""
        return self._choice()[2]

    def get(self, key: str, default: Any = None) -> Any:
        """A key of the chosen checkpoint (`default` when it lacks it or is not a dict)."""
        state = self.state
        return state.get(key, default) if isinstance(state, dict) else default

    @property
    def is_ours(self) -> bool:
        """The checkpoint records its run (a config inside): it knows its model."""
        return isinstance(self.get(ckpt_io.CONFIG_KEY), dict)

    def choose(self, weights: Optional[str] = None) -> WeightsChoice:
        """Which weights of the chosen checkpoint a command takes (`weights`: raw | ema | None: the rule)."""
        path, kind, state = self._choice()
        chosen, reason = choose_weights(state, weights, where=str(path))
        return WeightsChoice(path=path, checkpoint=kind, weights=chosen, reason=reason, state=state)

    def weights(self, which: Optional[str] = None) -> dict[str, torch.Tensor]:
        """The flat {name: tensor} state dict of those weights (`which`: raw | ema | None: the rule)."""
        choice = self.choose(which)
        return read_state_dict(choice.state, use_ema=choice.use_ema)

    # ---- what the run is -----------------------------------------------------------------------
    @property
    def saved_config(self) -> dict[str, Any]:
        """The config inside the chosen checkpoint, as saved ({} when it holds none)."""
        cfg = self.get(ckpt_io.CONFIG_KEY)
        return dict(cfg) if isinstance(cfg, dict) else {}

    @property
    def config(self) -> TrainConfig:
        """The run's TrainConfig: the checkpoint's own (engine.config.from_checkpoint_dict, with its
        rules for older checkpoints), else a run directory's config.yaml."""
        saved = self.saved_config or self.yaml_config()
        if not saved:
            raise ValueError(f"{self.checkpoint_path} holds no training config (and no config.yaml beside it); "
                             f"pass the model and recipe explicitly")
        return from_checkpoint_dict(saved)

    @property
    def model_name(self) -> Optional[str]:
        return self.get(ckpt_io.MODEL_NAME_KEY) or self.saved_config.get("model")

    @property
    def num_classes(self) -> Optional[int]:
        """The head's outputs as the run resolved them (the config may say None: 'the dataset's')."""
        n = self.get(ckpt_io.NUM_CLASSES_KEY)
        return n if isinstance(n, int) else self.saved_config.get("num_classes")

    @property
    def in_chans(self) -> Optional[int]:
        n = self.get(ckpt_io.IN_CHANS_KEY)
        return n if isinstance(n, int) else self.saved_config.get("in_chans")

    @property
    def classes(self) -> Optional[list[str]]:
        """The class names, label i = classes[i] (None when the checkpoint does not record them)."""
        names = self.get(ckpt_io.CLASSES_KEY)
        return [str(c) for c in names] if isinstance(names, list) else None

    @property
    def plan(self) -> Optional[RunPlan]:
        """The schedule the run planned: the checkpoint's, else plan.json; None when neither holds one."""
        saved = self.get(ckpt_io.PLAN_KEY)
        if isinstance(saved, dict) and saved:
            return RunPlan.from_dict(saved)
        f = self.file(ckpt_io.PLAN_FILE)
        return RunPlan.from_dict(json.loads(f.read_text())) if f.is_file() else None

    @property
    def input_spec(self) -> InputSpec:
        """What the model is fed (its config's transform keys, the run's channel count)."""
        return InputSpec.from_config(self.config, in_chans=self.in_chans)

    def report_config_edits(self, advice: str = "") -> dict[str, tuple[Any, Any]]:
        """The note when config.yaml differs from the chosen checkpoint's config (engine.checkpoint);
        last.pt's config from this Run when it has read it, else memory-mapped."""
        last = self._files.get(self.dir.joinpath(ckpt_io.LAST).resolve())
        later = last.get(ckpt_io.CONFIG_KEY) if isinstance(last, dict) else None
        return ckpt_io.report_config_edits(self.dir, self.saved_config, self.checkpoint_path, advice,
                                           later_config=later)

    # ---- resuming --------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        """What `--resume` continues from: a run directory's last.pt, or the file itself."""
        return ckpt_io.find_checkpoint(self.path)

    @property
    def last(self) -> dict[str, Any]:
        """last.pt (or the checkpoint file given) as loaded, read once."""
        return self.load(self.last_path)

    def train_state(self, metric: str) -> TrainState:
        """Where last.pt stands: epoch, step, best so far (by `metric`), the random streams."""
        return TrainState.from_checkpoint(self.last, metric)


def _read_checkpoint(path: Path) -> Any:
    """safeload.read, and for an image passed where a checkpoint belongs, what to do with it."""
    try:
        return safeload.read(path)
    except BadCheckpoint:
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            raise ValueError(f"{path} is an image, not a checkpoint; to classify it: "
                             f"ghostnetv3 predict RUN_DIR {path}") from None
        raise
