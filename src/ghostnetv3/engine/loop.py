"""The parts of a training run a reader looks for, as timm and torchvision split them:

- `train_one_epoch`: the optimizer steps of one epoch (forward/backward as micro-batches, the
  collective that stops every rank together, clipping, the scheduler, EMA, the time-budget plan,
  mid-epoch checkpoints);
- `validate`: the metric loop (top-1/top-5 and mean cross-entropy over a loader);
- `end_epoch`: rank 0 validates the raw and EMA weights, keeps the best, logs and saves.

`Trainer` holds what `engine.train.train` built; `TrainState` (engine.state) where the run stands.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ghostnetv3.errors import UserError

from . import checkpoint as ckpt_io
from .plan import RunPlan, TimeBudget, build_scheduler, ema_warmup_gamma, few_steps_warning, make_plan
from .config import TrainConfig
from .distributed import Dist, autocast, broadcast_from_main
from .metrics_log import MetricsLog
from .model_factory import eval_form
from .plot import schedule_record
from .signals import StopFlag
from .state import RunInfo, TrainState, save_training_checkpoint, save_weights

__all__ = ["TrainingInterrupted", "NonFiniteLoss", "Trainer", "EpochStats", "validate", "micro_bounds",
           "forward_backward", "make_step_loss", "train_one_epoch", "end_epoch", "calibrate_budget", "recalibrate"]


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM: a checkpoint was saved at the current step."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class NonFiniteLoss(UserError):
    pass


@torch.no_grad()
def validate(model: nn.Module, loader, device: torch.device, amp: str = "none",
             confusion: bool = False) -> dict[str, Any]:
    """Top-1/top-5 (%) and mean cross-entropy over every image of the loader; with `confusion`, also
    the confusion matrix (rows: true class, columns: predicted) as nested lists."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    cm = None
    for batch in loader:
        x, y = batch.images, batch.labels.to(device)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == y[:, None]
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(dim=1).sum().item()
        n += y.numel()
        if confusion:
            k = logits.shape[1]
            counts = torch.bincount(y * k + top[:, 0], minlength=k * k).view(k, k).cpu()
            cm = counts if cm is None else cm + counts
    if n == 0:
        raise ValueError("the validation set is empty")
    out = {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "n": n}
    if confusion:
        out["confusion"] = cm.tolist()
    return out


# --------------------------------------------------------------------------- one step's gradients

def micro_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` near-equal consecutive slices of n items (torch.tensor_split's sizes), empty
    ones left out."""
    q, r = divmod(n, parts)
    sizes = [q + 1] * r + [q] * (parts - r)
    ends = list(itertools.accumulate(sizes))
    return [(e - k, e) for e, k in zip(ends, sizes) if k]


def make_step_loss(model: nn.Module, task, device: torch.device, amp: str):
    """`loss_fn(x, target, batch)` -> (loss, loss parts) of one (micro-)batch: the task's loss under
    autocast, on the batch with its (Mixup-mixed) images and targets."""
    def step_loss(x, target, batch):
        if target is not None:  # a classification batch: its images and targets as Mixup left them
            batch = batch._replace(images=x, labels=target)
        with autocast(device, amp):
            return task.loss(model, batch)
    return step_loss


def forward_backward(model: nn.Module, batch, loss_fn, *, accum: int, scaler, no_sync=None,
                     mixup_fn=None) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward and backward of one optimizer step's batch as `accum` micro-batches, so the gradients add up
    to the whole batch's: each micro-batch's loss is weighted by its share of the images (and Mixup mixes
    the whole batch first). `loss_fn(x, target, part)` -> (loss, KD parts); DDP syncs gradients on the
    last micro-batch only (`no_sync`). Returns (the batch's mean loss, detached; its KD parts)."""
    x, target = batch.images, getattr(batch, "labels", None)
    if mixup_fn is not None:
        x, target = mixup_fn(x, target)
    bounds = micro_bounds(x.shape[0], accum)
    total, parts_sum = None, {}
    for i, (a, b) in enumerate(bounds):
        whole = len(bounds) == 1
        part = batch if whole else type(batch)(*(f[a:b] for f in batch))
        share = 1.0 if whole else (b - a) / x.shape[0]
        sync = no_sync() if no_sync is not None and i < len(bounds) - 1 else contextlib.nullcontext()
        with sync:
            loss, parts = loss_fn(x if whole else x[a:b], target if whole or target is None else target[a:b], part)
            scaler.scale(loss if whole else loss * share).backward()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * share
        value = loss.detach().float() if whole else loss.detach().float() * share
        total = value if total is None else total + value
    return total, parts_sum


# --------------------------------------------------------------------------- the run's working set

@dataclasses.dataclass
class Trainer:
    """What `engine.train.train` built for the loop. `plan`, `scheduler`, `budget` and the EMA's decay
    change once when a time budget is calibrated."""
    cfg: TrainConfig          # the run's decisions (batch, lr, layout); `info.config` is what was asked
    task: Any
    d: Dist
    device: torch.device
    run_dir: Path
    info: RunInfo
    model: nn.Module          # what steps: DDP- and/or compile-wrapped
    module: nn.Module         # the model itself: saved, EMA-updated, validated
    loader: Any
    val_loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: Any
    plan: RunPlan
    budget: Optional[TimeBudget]
    steps_per_epoch: int
    channels_last: bool
    log: Optional[MetricsLog] = None
    step_loss: Optional[Callable] = None
    train_time: float = 0.0   # seconds in training steps this process (evaluation excluded): what a budget counts

    def save_last(self, state: TrainState) -> None:
        """last.pt at where `state` stands (all ranks call: RNG states are gathered)."""
        save_training_checkpoint(self.run_dir / ckpt_io.LAST, state, self.info, self.d, module=self.module,
                                 ema=self.ema, optimizer=self.optimizer, scheduler=self.scheduler,
                                 scaler=self.scaler, plan=self.plan)


@dataclasses.dataclass
class EpochStats:
    """An epoch's mean training loss (over its steps, and over ranks), timing and throughput."""
    start: float = dataclasses.field(default_factory=time.perf_counter)
    seen: int = 0  # images stepped on, all ranks
    end: Optional[float] = None
    loss: float = 0.0

    def stop(self) -> None:
        self.end = time.perf_counter()

    def seconds(self) -> float:
        """Seconds since the epoch started (until `stop`)."""
        return (self.end if self.end is not None else time.perf_counter()) - self.start


# --------------------------------------------------------------------------- one epoch

def train_one_epoch(t: Trainer, state: TrainState, stop: StopFlag) -> EpochStats:
    """The optimizer steps of epoch `state.epoch`, from step `state.step` (a resumed epoch) to its end or
    to the end of the schedule; returns the epoch's mean loss, timing and throughput."""
    epoch, first = state.epoch, state.step
    t.loader.set_epoch(epoch)
    t.model.train()
    if first == 0:
        state.reset_epoch_sums()
    bar = tqdm(total=t.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{t.plan.epochs}",
               disable=not t.d.main, mininterval=1.0, dynamic_ncols=True, leave=False)
    clock = EpochStats()
    for step, batch in enumerate(t.loader.iter_from(first), start=first):
        flags, lr = _optimizer_step(t, state, batch, stop, clock)
        state.step = step + 1
        loss_val = flags[3].item()
        state.loss_sum += loss_val
        state.loss_count += 1
        clock.seen += len(batch[0]) * t.d.world_size
        if t.d.main:
            _report_step(t, state, bar, clock, loss_val, lr)
        _checkpoint_if_due(t, state, flags)
        if state.global_step >= t.plan.total_steps and step + 1 < t.steps_per_epoch:
            break  # the schedule ends inside this epoch (at its end the loader finishes its pass)
    bar.close()
    clock.stop()
    t.train_time += clock.seconds()
    clock.loss = state.loss_sum / max(state.loss_count, 1)  # a resumed epoch: its steps before the stop too
    return clock


def _optimizer_step(t: Trainer, state: TrainState, batch, stop: StopFlag, clock: EpochStats):
    """One optimizer step on `batch`; returns (the step's all-reduced flags, the lr it used)."""
    d, device = t.d, t.device
    time_due = d.main and t.budget is not None and t.budget.due_by_time(t.train_time + clock.seconds())
    t.optimizer.zero_grad(set_to_none=True)
    loss, parts = forward_backward(t.model, batch, t.step_loss, accum=t.cfg.grad_accum_steps, scaler=t.scaler,
                                   no_sync=t.model.no_sync if d.enabled else None, mixup_fn=t.task.mixup_fn)
    for k, v in parts.items():
        state.parts_sum[k] = state.parts_sum.get(k, 0.0) + v
    # one collective per step: any rank's bad loss or signal stops all ranks together, the
    # logged loss is the mean over ranks, and rank 0's clock says when to plan a time budget
    flags = torch.stack([(~torch.isfinite(loss)).float(),
                         torch.tensor(float(stop.signum == signal.SIGINT), device=device),
                         torch.tensor(float(stop.signum == signal.SIGTERM), device=device),
                         loss / d.world_size, torch.tensor(float(time_due), device=device)])
    if d.enabled:
        dist.all_reduce(flags)
    if flags[0] > 0:
        _diverged(t, state, flags[3].item())
    if t.cfg.clip_grad:
        t.scaler.unscale_(t.optimizer)
        nn.utils.clip_grad_norm_(t.module.parameters(), t.cfg.clip_grad)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    lr = t.optimizer.param_groups[0]["lr"]  # the lr this step used
    state.global_step += 1
    t.scheduler.step_update(num_updates=state.global_step)
    if t.ema is not None:
        t.ema.update(t.module, step=state.global_step)
    if t.budget is not None and (t.budget.due(state.global_step) or flags[4] > 0):
        recalibrate(t, state.global_step, t.train_time + clock.seconds())
    return flags, lr


def _diverged(t: Trainer, state: TrainState, bad_loss: float):
    """A non-finite loss: on record (so a harness such as ablate tells a diverged run from a crashed one),
    then one line saying where and what to try; the weights are not updated."""
    kept = t.run_dir / ckpt_io.LAST
    epoch, step = state.epoch + 1, state.step + 1
    t.log.write({"type": "diverged", "epoch": epoch, "step": step, "global_step": state.global_step + 1,
                 "loss": bad_loss, "last_good_checkpoint": kept.exists()})
    raise NonFiniteLoss(
        f"loss became {bad_loss:g} at epoch {epoch} step {step}/{t.steps_per_epoch} "
        f"(global step {state.global_step + 1}); stopped before updating the weights. "
        + (f"last good checkpoint: {kept}. " if kept.exists() else "no checkpoint saved yet. ")
        + "try a lower --lr, --clip-grad 1.0, or --amp none")


def _report_step(t: Trainer, state: TrainState, bar, clock: EpochStats, loss_val: float, lr: float) -> None:
    """Rank 0: the progress bar, and a `step` line every --log-interval steps."""
    bar.update(1)
    rate = clock.seen / max(clock.seconds(), 1e-9)
    bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
    if t.cfg.log_interval and state.step % t.cfg.log_interval == 0:
        t.log.write({"type": "step", "epoch": state.epoch + 1, "step": state.step,
                     "global_step": state.global_step, "loss": loss_val, "lr": lr})


def _checkpoint_if_due(t: Trainer, state: TrainState, flags: torch.Tensor) -> None:
    """A signal: save and stop; --checkpoint-interval: save (the epoch's end saves anyway)."""
    if flags[1] > 0 or flags[2] > 0:
        t.save_last(state)
        signum = signal.SIGINT if flags[1] > 0 else signal.SIGTERM
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at epoch {state.epoch + 1} step {state.step}; "
            f"checkpoint saved — continue with: ghostnetv3 train --resume {t.run_dir}", signum)
    if t.cfg.checkpoint_interval and state.global_step % t.cfg.checkpoint_interval == 0 \
            and state.step < t.steps_per_epoch:
        t.save_last(state)


# --------------------------------------------------------------------------- a time budget's plan

def calibrate_budget(cfg: TrainConfig, budget: TimeBudget, steps_done: int, train_seconds: float,
                     steps_per_epoch: int, channels_last: bool, d: Dist) -> RunPlan:
    """The time-budget plan from the measured rate (rank 0's, shared with all ranks)."""
    total = broadcast_from_main(budget.plan_total(steps_done, train_seconds), d)
    plan = make_plan(cfg, steps_per_epoch, channels_last, total_steps=total, calibrated=True)
    if d.main:
        print(f"time budget {cfg.time_limit:g} min: {budget.describe_rate(steps_done, train_seconds)} "
              f"-> schedule of {plan.describe()}", flush=True)
        warning = few_steps_warning(cfg, plan) if budget.first_pending else None
        if warning:
            print(warning, flush=True)
    budget.commit(total, steps_done, train_seconds)
    return plan


def recalibrate(t: Trainer, global_step: int, train_seconds: float) -> None:
    """The plan, schedule and EMA decay for the measured rate, from this step on (saved and logged)."""
    t.plan = calibrate_budget(t.cfg, t.budget, global_step, train_seconds, t.steps_per_epoch, t.channels_last, t.d)
    t.scheduler = build_scheduler(t.optimizer, t.cfg, t.plan)
    t.scheduler.step_update(num_updates=global_step)
    if t.ema is not None:
        t.ema.decay = t.plan.ema_decay
        t.ema.warmup_gamma = ema_warmup_gamma(t.plan.ema_decay, t.cfg.model_ema_decay is None)
    if t.d.main:
        t.plan.save(t.run_dir)
    t.log.write(schedule_record(t.cfg, t.plan, global_step))
    if t.budget.final:
        t.budget = None


# --------------------------------------------------------------------------- the epoch's end

def epoch_line(rec: dict[str, Any], metric: str, epochs: int, seconds: float) -> str:
    """The line printed after each epoch's validation."""
    label, fmt = ("val loss", ".4f") if metric == "loss" else (metric, ".2f")
    ema = f"  ema {label} {rec['ema_' + metric]:{fmt}}" if f"ema_{metric}" in rec else ""
    return (f"epoch {rec['epoch']}/{epochs}  loss {rec['train_loss']:.4f}  {label} {rec['val_' + metric]:{fmt}}{ema}  "
            f"lr {rec['lr']:.2e}  {rec['train_img_s']:.0f} img/s  {seconds:.0f}s")


def _validate_epoch(t: Trainer, state: TrainState, rec: dict[str, Any], epoch_time: float) -> dict[str, Any]:
    """Rank 0 validates the raw and EMA weights over the whole validation set (exact, no padding), keeps the
    best, logs and prints the epoch; returns the epoch's record."""
    metric = state.metric
    raw = t.task.evaluate(eval_form(t.module), t.val_loader, t.device, t.cfg.amp)
    rec.update({f"val_{k}": v for k, v in raw.items() if k != "n"})
    candidates = {"raw": raw[metric]}
    if t.ema is not None:
        ema_m = t.task.evaluate(eval_form(t.ema.module), t.val_loader, t.device, t.cfg.amp)
        rec.update({f"ema_{k}": v for k, v in ema_m.items() if k != "n"})
        candidates["ema"] = ema_m[metric]
    rec["elapsed_s"] = state.elapsed_s()
    rec["train_s"] = t.train_time  # training steps only (this process), what --time-limit counts
    state.consider(candidates, rec["epoch"])
    rec.update(state.best_record())
    t.log.write(rec)
    print(epoch_line(rec, metric, t.plan.epochs, epoch_time), flush=True)
    return rec


def end_epoch(t: Trainer, state: TrainState, clock: EpochStats, summary: dict[str, Any]) -> dict[str, Any]:
    """Validate (rank 0), save last.pt — and best.pt when this epoch is the best so far; returns the
    summary (the last epoch record)."""
    epoch_time = clock.seconds()
    rec: dict[str, Any] = {"type": "epoch", "epoch": state.epoch + 1, "global_step": state.global_step,
                           "train_loss": clock.loss,
                           **{f"train_{k}": v / max(state.loss_count, 1) for k, v in state.parts_sum.items()},
                           "lr": t.optimizer.param_groups[0]["lr"],
                           "train_img_s": clock.seen / max(epoch_time, 1e-9)}
    if t.d.main:
        summary = _validate_epoch(t, state, rec, epoch_time)
    t.model.train()
    state.reset_epoch_sums()
    state.epoch, state.step = state.epoch + 1, 0
    t.save_last(state)
    if t.d.main and summary.get("best_epoch") == state.epoch:
        save_weights(t.run_dir / ckpt_io.BEST, state, t.info, state.epoch, summary, module=t.module, ema=t.ema,
                     plan=t.plan)
    return summary
