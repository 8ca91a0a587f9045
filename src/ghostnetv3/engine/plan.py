"""A run's plan: the decisions a recipe leaves to the run (`auto`), made once and kept.

- the batch (`batch_size: auto`): 128, halved on a small training set until an epoch has 8 steps,
  and the last, partial batch kept when dropping it would leave out more than 5% of the images;
- the memory layout (`channels_last: auto`): a few timed train steps of a copy of the model in
  each layout, interleaved; channels_last wins only when it is at least 10% faster. The probe is
  skipped (NCHW) when one step already takes 2 s, and stops after 20 s;
- the schedule's length in optimizer steps, from `epochs` or from a time budget
  (`time_limit`, minutes of training): the run times its first steps (20, or fewer when the
  provisional plan is shorter or they take 10% of the budget) and plans the cosine schedule to end
  at the budget instead of being cut off;
- warmup (`warmup_epochs: auto`): 5% of the run, at most 3 epochs (the paper's 3 of 300);
- the EMA decay (`model_ema_decay: auto`): a horizon of `model_ema_horizon` × the run's steps,
  so a 5-epoch run does not average over the paper's ~5,000-step horizon (decay 0.9998).

The plan is stored in every checkpoint and in `plan.json`; `--resume` reuses it, so a resumed run
follows the same schedule as an unbroken one.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from .checkpoint import PLAN_FILE, atomic_write_text
from .config import TrainConfig

__all__ = ["RunPlan", "auto_warmup_epochs", "auto_ema_decay", "ema_warmup_gamma", "choose_channels_last",
           "prefer_channels_last", "build_scheduler", "TimeBudget", "PLAN_FILE", "auto_batch_size", "drop_last_batch",
           "few_steps_warning", "scaled_lr"]

MAX_AUTO_WARMUP_EPOCHS = 3.0
AUTO_WARMUP_FRACTION = 0.05


@dataclass
class RunPlan:
    steps_per_epoch: int
    total_steps: int            # optimizer steps of the whole schedule
    warmup_steps: int
    ema_decay: Optional[float]  # None: no EMA
    channels_last: bool
    time_limit_s: Optional[float] = None  # the training-time budget the schedule was planned for
    calibrated: bool = True     # False until a time-budget run has timed its first steps
    batch_size: Optional[int] = None  # the global batch the run uses (`batch_size: auto` decides it once)
    lr: Optional[float] = None  # the peak lr the run uses (from lr_base when lr is not given)

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_epoch))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunPlan":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def save(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / PLAN_FILE, json.dumps(self.to_dict(), indent=1) + "\n")

    def describe(self) -> str:
        ema = "off" if self.ema_decay is None else f"decay {self.ema_decay:.6g}"
        budget = f", planned for {self.time_limit_s / 60:.3g} min" if self.time_limit_s else ""
        return (f"{self.total_steps} steps ({self.total_steps / self.steps_per_epoch:.3g} epochs{budget}), "
                f"warmup {self.warmup_steps} steps, EMA {ema}, "
                f"{'channels_last' if self.channels_last else 'NCHW'}")


def auto_warmup_epochs(total_epochs: float) -> float:
    return min(MAX_AUTO_WARMUP_EPOCHS, AUTO_WARMUP_FRACTION * total_epochs)


def auto_ema_decay(total_steps: int, horizon: float) -> float:
    """EMA decay whose horizon 1/(1−decay) is `horizon` × the run's steps (at least 10 steps)."""
    return 1.0 - 1.0 / max(10.0, horizon * total_steps)


EMA_WARMUP_POWER = 2 / 3  # timm ModelEmaV3's warmup_power


def ema_warmup_gamma(decay: Optional[float], auto: bool) -> float:
    """`warmup_gamma` for timm's EMA warmup, which ramps the decay as 1 − (1 + step/γ)^(−2/3) up to
    the target. With timm's γ = 1 the ramp reaches a decay of 1 − 1/h only after h^1.5 steps (a
    156-step horizon after 1,949 steps), so in any run over ~1,000 steps with a 10% horizon the
    ramp, not the decay, set the EMA: two grid runs with decays 0.99359 and 0.9998 gave the same EMA
    to 7 digits. For an `auto` decay γ is chosen so that the ramp reaches the target at step h, the
    horizon itself; a decay the user gave keeps timm's ramp."""
    if not auto or decay is None:
        return 1.0
    h = 1.0 / (1.0 - decay)
    return h / (h ** (1.0 / EMA_WARMUP_POWER) - 1.0)


def make_plan(cfg: TrainConfig, steps_per_epoch: int, channels_last: bool, total_steps: Optional[int] = None,
              calibrated: bool = True) -> RunPlan:
    """The plan for `total_steps` (default: `cfg.epochs` epochs)."""
    total = int(total_steps if total_steps is not None else cfg.epochs * steps_per_epoch)
    total = max(1, total)
    epochs = total / steps_per_epoch
    warmup_epochs = cfg.warmup_epochs if cfg.warmup_epochs is not None else auto_warmup_epochs(epochs)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    ema = None
    if cfg.model_ema:
        ema = cfg.model_ema_decay if cfg.model_ema_decay is not None else auto_ema_decay(total, cfg.model_ema_horizon)
    return RunPlan(steps_per_epoch, total, max(0, warmup), ema, bool(channels_last),
                   cfg.time_limit * 60.0 if cfg.time_limit else None, calibrated, cfg.batch_size, cfg.lr)


AUTO_BATCH_SIZE = 128
MIN_EPOCH_STEPS = 8          # `batch_size: auto` halves the batch until an epoch has this many steps
MAX_DROPPED_FRACTION = 0.05  # the last, partial batch is kept when dropping it would leave out more


def auto_batch_size(num_train: int, world_size: int = 1) -> int:
    """The global batch of `batch_size: auto`: 128 (rounded down to a multiple of the processes), halved
    while an epoch would have fewer than 8 steps, down to 2 images per process. 162 images: 16 (10
    steps); the 128 default gave 1 step per epoch and left 34 images out. `num_train` 0: unknown (an
    iterable source), 128."""
    per_rank = max(1, AUTO_BATCH_SIZE // world_size)
    n = num_train // world_size
    while num_train > 0 and per_rank > 2 and n // per_rank < MIN_EPOCH_STEPS:
        per_rank //= 2
    return per_rank * world_size


def drop_last_batch(num_per_rank: int, batch_per_rank: int) -> bool:
    """Whether a training epoch drops its last, partial batch: yes (timm's and torchvision's habit: equal
    batches) unless that would leave out more than 5% of the images. A 1-image remainder is always
    dropped: BatchNorm cannot normalise a single image over a 1x1 map."""
    rest = num_per_rank % batch_per_rank
    return not (rest >= 2 and rest > MAX_DROPPED_FRACTION * num_per_rank)


def scaled_lr(lr_base: float, batch_size: int, lr_base_size: int) -> float:
    """timm's lr from a base: linear in the global batch (images per optimizer step)."""
    return lr_base * batch_size / lr_base_size


MIN_LEARNING_STEPS = 100  # fewer optimizer steps than this rarely teach a network trained from scratch


def few_steps_warning(cfg: TrainConfig, plan: RunPlan) -> Optional[str]:
    """A warning when a run from scratch has too few optimizer steps to learn: how many, and what to do."""
    if plan.total_steps >= MIN_LEARNING_STEPS or cfg.pretrained or cfg.init_checkpoint:
        return None
    epochs_needed = math.ceil(MIN_LEARNING_STEPS / plan.steps_per_epoch)
    batch = f" of {plan.batch_size} images" if plan.batch_size else ""
    return (f"warning: this run makes only {plan.total_steps} optimizer steps ({plan.steps_per_epoch} per epoch"
            f"{batch}); a network trained from scratch rarely learns in under {MIN_LEARNING_STEPS}: train "
            f"longer (--epochs {epochs_needed} gives {epochs_needed * plan.steps_per_epoch} steps), use a smaller "
            f"--batch-size, or start from trained weights (--pretrained, --init-checkpoint)")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, plan: RunPlan):
    """timm's scheduler stepped per optimizer update, over the plan's steps."""
    from timm.scheduler import create_scheduler_v2  # lazy: timm's import is slow, a plan does not need it

    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=plan.total_steps, min_lr=cfg.min_lr,
                                       warmup_lr=cfg.warmup_lr, warmup_epochs=plan.warmup_steps,
                                       step_on_epochs=False, updates_per_epoch=1)
    return scheduler


# channels_last is taken only when it is clearly faster: within the noise of a few timed steps the
# two layouts flip from run to run (a 32-px GhostNetV3-0.5 measured 262 vs 275 ms one time, the
# other way round the next), and two runs of one command should not train in different layouts
CHANNELS_LAST_MARGIN = 0.10
# the probe's bounds: a model whose step (after a warm-up) already takes 2 s is not probed (its 8 steps would take
# minutes: 49-64 s steps of ghostnetv3_100 at 224 px, batch 128, on 2 CPU cores, ran ~7.5 min), and no
# probe times for longer than 20 s
PROBE_LONG_STEP_S = 2.0
PROBE_MAX_S = 20.0


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one SGD train step of `model` on `x` (the model is a throwaway copy)."""
    t0 = time.perf_counter()
    out = model(x)
    loss = nn.functional.cross_entropy(out, y) if out.dim() == 2 else out.float().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def prefer_channels_last(times: dict[str, float], margin: float = CHANNELS_LAST_MARGIN) -> bool:
    """channels_last when its step is at least `margin` faster than NCHW's."""
    return times["channels_last"] < (1.0 - margin) * times["nchw"]


def choose_channels_last(model: nn.Module, batch_shape: tuple[int, ...], num_classes: int,
                         device: torch.device, steps: int = 3, long_step_s: float = PROBE_LONG_STEP_S,
                         max_seconds: float = PROBE_MAX_S) -> tuple[bool, dict[str, float]]:
    """(channels_last?, median seconds per step in each layout): time `steps` steps of a copy of
    `model` in each layout, interleaved (after one untimed step each: it allocates and picks kernels).

    Bounded in time: when the first timed NCHW step (after its warm-up, which carries the process's
    one-time costs) takes `long_step_s` or more, the probe stops there and keeps NCHW
    (`{"first_step": seconds}`); `max_seconds` after that warm-up it stops timing and decides from the
    steps timed so far (NCHW unless both layouts were timed). The copies are thrown away, so the model, its BN
    statistics and the RNG streams of the run are untouched (the random input comes from a private
    generator)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch_shape, generator=gen).to(device)
    y = torch.randint(0, max(num_classes, 1), (batch_shape[0],), generator=gen).to(device)
    rng = torch.random.get_rng_state()  # dropout in the probe must not move the run's random stream
    try:
        probes = {}
        for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            probe = copy.deepcopy(model).to(memory_format=fmt).train()
            probes[name] = (probe, torch.optim.SGD(probe.parameters(), lr=1e-3, momentum=0.9),
                            x.contiguous(memory_format=fmt))
        _train_step(*probes["nchw"], y)  # warm-up: allocates and picks kernels
        t_start = time.perf_counter()    # the cap bounds the timing, not the process's one-time costs
        first = _train_step(*probes["nchw"], y)
        if first >= long_step_s:
            return False, {"first_step": first}
        times: dict[str, list[float]] = {"nchw": [first], "channels_last": []}
        _train_step(*probes["channels_last"], y)
        for name in ["channels_last"] + ["nchw", "channels_last"] * (steps - 1):  # interleaved
            if time.perf_counter() - t_start > max_seconds:
                break
            times[name].append(_train_step(*probes[name], y))
        del probes
    finally:
        torch.random.set_rng_state(rng)
    med = {name: statistics.median(t) for name, t in times.items() if t}
    return (prefer_channels_last(med) if len(med) == 2 else False), med


class TimeBudget:
    """Plans a time-limited schedule from the run's own steps, in two calibrations.

    Until `calibration_steps` optimizer steps have run, the schedule is a provisional one planned
    from `cfg.epochs`. Then the measured training rate (evaluation excluded) fixes the total so that
    the schedule ends at the budget. The first steps run faster than a whole epoch does (epoch ends,
    checkpoints, a warming allocator: a 10-minute Fashion-MNIST run planned at 4.45 steps/s overran
    by 56 s), so the total is refined once more when `refine_fraction` of the planned run is done,
    from the rate since the first calibration and the time left; then the plan is kept.

    The first calibration never comes after the provisional plan's last step (a run planned for fewer
    than `calibration_steps` steps would end before it, and ignore the budget), nor after
    `calibration_time_fraction` of the budget (slow steps: 20 steps of 49 s overrun a 10-minute
    budget); `due_by_time` says when the latter is reached."""

    def __init__(self, limit_s: float, calibration_steps: int = 20, refine_fraction: float = 0.1,
                 provisional_steps: Optional[int] = None, calibration_time_fraction: float = 0.1):
        self.limit_s = float(limit_s)
        self.calibration_steps = max(1, min(calibration_steps, provisional_steps or calibration_steps))
        self.refine_fraction = refine_fraction
        self.calibration_time_fraction = calibration_time_fraction
        self.next_step: Optional[int] = self.calibration_steps   # None once the plan is final
        self._first: Optional[tuple[int, float]] = None      # (steps, train seconds) at the first calibration

    def due(self, steps_done: int) -> bool:
        return self.next_step is not None and steps_done >= self.next_step

    @property
    def first_pending(self) -> bool:
        """The first calibration has not been made yet."""
        return self._first is None

    def due_by_time(self, train_seconds: float) -> bool:
        """The first calibration is due because the first steps already took a tenth of the budget."""
        return self._first is None and train_seconds >= self.calibration_time_fraction * self.limit_s

    @property
    def final(self) -> bool:
        return self.next_step is None

    def plan_total(self, steps_done: int, train_seconds: float) -> int:
        """Total steps that fit the budget at the rate measured so far (at least one more step):
        over the first steps at the first calibration, over the steps since then at the second."""
        if self._first is None:
            return max(steps_done + 1, int(self.limit_s * steps_done / max(train_seconds, 1e-9)))
        s0, t0 = self._first
        rate = (steps_done - s0) / max(train_seconds - t0, 1e-9)
        return steps_done + max(1, int(max(self.limit_s - train_seconds, 0.0) * rate))

    def commit(self, total: int, steps_done: int, train_seconds: float) -> None:
        """The plan now has `total` steps (the same on every rank): set when to refine it, if ever."""
        if self._first is None:
            self._first = (steps_done, train_seconds)
            refine_at = max(2 * steps_done, int(self.refine_fraction * total))
            self.next_step = refine_at if refine_at < total else None
        else:
            self.next_step = None

    def describe_rate(self, steps_done: int, train_seconds: float) -> str:
        if self._first is None:
            return f"{steps_done / max(train_seconds, 1e-9):.2f} steps/s over the first {steps_done} steps"
        s0, t0 = self._first
        return (f"refined: {(steps_done - s0) / max(train_seconds - t0, 1e-9):.2f} steps/s over steps "
                f"{s0 + 1}-{steps_done}, {max(self.limit_s - train_seconds, 0.0):.0f} s left")
