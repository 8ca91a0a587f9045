"""`TrainState`: where a run stands — epoch, step, global step, the best validation score so far, the
epoch's running loss, the clock and every random stream — and the one place that writes and reads
a run's checkpoint files:

- `last.pt` (`FORMAT`): everything `--resume` needs to continue bitwise as if never stopped (the
  weights, EMA, optimizer, scheduler, grad scaler, each rank's RNG states, the counters);
- `best.pt` (`WEIGHTS_FORMAT`): the weights the validation picked, with the metrics that picked them.

Both carry what the run is (`RunInfo`: model, classes, config, plan), so `eval`, `export` and
`predict` rebuild the model from the file alone.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch.nn as nn

from . import checkpoint as ckpt_io
from . import rundir
from .plan import RunPlan
from .config import TrainConfig
from .distributed import Dist, gather_objects

__all__ = ["FORMAT", "WEIGHTS_FORMAT", "RUN_KEYS", "RunInfo", "TrainState", "best_start", "better",
           "open_resume", "restore_training", "save_training_checkpoint", "save_weights"]

FORMAT = ckpt_io.TRAIN_FORMAT  # the file format's names and keys live in engine/checkpoint.py
WEIGHTS_FORMAT = ckpt_io.WEIGHTS_FORMAT
RUN_KEYS = ckpt_io.RUN_KEYS  # keys that say how to run, not what to compute (one list, in engine/checkpoint.py)


def best_start(metric: str) -> float:
    """The best score before any epoch: any real score beats it."""
    return math.inf if metric == "loss" else -1.0


def better(metric: str, a: float, b: float) -> bool:
    """`a` is a better validation score than `b` (loss: lower is better)."""
    return a < b if metric == "loss" else a > b


@dataclasses.dataclass
class RunInfo:
    """What every checkpoint of a run says about it besides the weights."""
    model_name: str
    num_classes: int
    in_chans: int
    classes: list[str]
    config: dict[str, Any]  # the config as asked (what --resume compares against)

    def weights(self, module: nn.Module, ema, plan: RunPlan) -> dict[str, Any]:
        """The keys both files share: the weights (raw and EMA) and what they are."""
        return {ckpt_io.MODEL_NAME_KEY: self.model_name,
                ckpt_io.RAW_KEY: ckpt_io.strip_module_prefix(module.state_dict()),
                ckpt_io.EMA_KEY: ema.module.state_dict() if ema is not None else None,
                ckpt_io.NUM_CLASSES_KEY: self.num_classes, ckpt_io.IN_CHANS_KEY: self.in_chans,
                ckpt_io.CLASSES_KEY: list(self.classes), ckpt_io.CONFIG_KEY: self.config,
                ckpt_io.PLAN_KEY: plan.to_dict()}


@dataclasses.dataclass
class TrainState:
    """The counters of a run: `epoch` (the epoch in progress, 0-based; epochs finished at its end) and
    `step` (steps done in it), `global_step` (optimizer steps in all), `best` ({value, epoch, source}),
    the epoch's loss sums, `elapsed` (seconds of earlier sessions) and, from a checkpoint, `rng` (each
    rank's random streams, put back by `restore_rng`)."""
    metric: str
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss_sum: float = 0.0
    loss_count: int = 0
    parts_sum: dict[str, float] = dataclasses.field(default_factory=dict)  # KD loss parts (rank 0's)
    elapsed: float = 0.0
    rng: Optional[list[dict[str, Any]]] = None
    clock: float = dataclasses.field(default_factory=time.perf_counter)  # when this session's loop started

    def __post_init__(self):
        if not self.best:
            self.best = {"value": best_start(self.metric), "epoch": 0, "source": None}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], metric: str) -> "TrainState":
        """The counters a training checkpoint saved; a run resumed with another --eval-metric picks best.pt
        afresh."""
        best = None
        if f"best_{metric}" not in ckpt:
            print(f"note: the run picked best.pt by another metric; from now on by {metric}", flush=True)
        else:
            best = {"value": ckpt[f"best_{metric}"], "epoch": ckpt["best_epoch"], "source": ckpt["best_source"]}
        return cls(metric, ckpt["epoch"], ckpt["step"], ckpt["global_step"], best=best,
                   loss_sum=ckpt["epoch_loss_sum"], loss_count=ckpt["epoch_loss_count"],
                   parts_sum=dict(ckpt.get("epoch_parts_sum") or {}), elapsed=ckpt["elapsed"], rng=ckpt["rng"])

    def restore_rng(self, d: Dist) -> None:
        """This rank's random streams as they were at the checkpoint (all of them: torch, CUDA, numpy,
        Python), so dropout and Mixup draw what an unbroken run draws."""
        if self.rng is None:
            return
        if len(self.rng) == d.world_size:
            ckpt_io.set_rng_state(self.rng[d.rank])
        elif d.main:
            print(f"note: checkpoint saved by {len(self.rng)} processes, resuming on {d.world_size}: "
                  f"dropout/Mixup randomness will differ from an uninterrupted run")

    def start_clock(self) -> None:
        self.clock = time.perf_counter()

    def elapsed_s(self) -> float:
        """Seconds of training, this session and the ones before it."""
        return self.elapsed + (time.perf_counter() - self.clock)

    def reset_epoch_sums(self) -> None:
        self.loss_sum, self.loss_count, self.parts_sum = 0.0, 0, {}

    def consider(self, candidates: dict[str, float], epoch: int) -> None:
        """The best of this epoch's scores ({source: value}) becomes the best so far when it beats it."""
        source = (min if self.metric == "loss" else max)(candidates, key=candidates.get)
        if better(self.metric, candidates[source], self.best["value"]):
            self.best = {"value": candidates[source], "epoch": epoch, "source": source}

    def best_record(self) -> dict[str, Any]:
        return {f"best_{self.metric}": self.best["value"], "best_epoch": self.best["epoch"],
                "best_source": self.best["source"]}

    def counters(self) -> dict[str, Any]:
        """The checkpoint's keys for where the run stands."""
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                "epoch_loss_sum": self.loss_sum, "epoch_loss_count": self.loss_count,
                "epoch_parts_sum": self.parts_sum, **self.best_record(), "elapsed": self.elapsed_s()}


def save_training_checkpoint(path: Path, state: TrainState, info: RunInfo, d: Dist, *, module: nn.Module, ema,
                             optimizer, scheduler, scaler, plan: RunPlan) -> None:
    """last.pt: every rank hands over its RNG states (a collective: all ranks call this); rank 0 writes."""
    rngs = gather_objects(ckpt_io.rng_state(), d)
    if not d.main:
        return
    ckpt_io.atomic_save({ckpt_io.FORMAT_KEY: FORMAT, **info.weights(module, ema, plan),
                         "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rngs,
                         **state.counters()}, path)


def save_weights(path: Path, state: TrainState, info: RunInfo, epoch: int, summary: dict[str, Any], *,
                 module: nn.Module, ema, plan: RunPlan) -> None:
    """best.pt: the weights of the epoch whose validation is the best so far, with its numbers."""
    ckpt_io.atomic_save({ckpt_io.FORMAT_KEY: WEIGHTS_FORMAT, **info.weights(module, ema, plan),
                         ckpt_io.BEST_SOURCE_KEY: state.best["source"], "epoch": epoch,
                         "metrics": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}, path)


def open_resume(cfg: TrainConfig, d: Dist, resumed=None) -> tuple[Path, dict[str, Any]]:
    """(path, contents) of the training checkpoint `--resume` names, checked; rank 0 takes the run
    directory's lock and says which recipe keys changed since the run started. `resumed`: that run
    already opened by the caller (an engine.run.Run of `cfg.resume`), so last.pt is read once."""
    if resumed is not None and Path(resumed.path) == Path(cfg.resume):
        ckpt_path, ckpt = resumed.last_path, resumed.last
    else:
        ckpt_path = ckpt_io.find_checkpoint(cfg.resume)
        ckpt = ckpt_io.load(ckpt_path)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{ckpt_path} is not a ghostnetv3 training checkpoint (no optimizer state); "
                         f"start a new run with --init-checkpoint {ckpt_path}")
    if ckpt["model_name"] != cfg.model:
        raise ValueError(f"{ckpt_path} was saved from model '{ckpt['model_name']}', not '{cfg.model}'; "
                         f"resume with --model {ckpt['model_name']} or start a new run")
    run_dir = ckpt_path.parent
    if d.main:  # a --resume of a run that is still alive would train alongside it
        rundir.lock_run_dir(run_dir)
        ckpt_io.clean_stale_temp_files(run_dir)
        ckpt_io.report_config_edits(run_dir, ckpt["config"], ckpt_path,
                                    "it is rewritten from it; pass changes as --key value with --resume")
    changed = {k: (v, cfg.to_dict().get(k)) for k, v in ckpt["config"].items()
               if k not in RUN_KEYS and cfg.to_dict().get(k, v) != v}
    if changed and d.main:
        print("note: resuming with changed recipe keys (the result will differ from an unbroken run): "
              + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), flush=True)
    return ckpt_path, ckpt


def restore_training(ckpt: dict[str, Any], ckpt_path: Path, model_name: str, *, model: nn.Module, optimizer,
                     scaler, ema, make_ema: Callable[[nn.Module], Any]):
    """The weights, optimizer, grad scaler and EMA of a training checkpoint, put back; returns the EMA
    (started afresh from the weights when the run kept none)."""
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{ckpt_path} does not fit model '{model_name}' with this config "
                         f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        if ckpt.get("state_dict_ema") is not None:
            ema.module.load_state_dict(ckpt["state_dict_ema"])
        else:
            ema = make_ema(model)
    return ema
