"""`train(cfg)`: the training loop — one process or many (torchrun), CPU or GPU.

The loop is timm's recipe machinery (optimizer and scheduler factories, ModelEmaV3, Mixup,
label smoothing) around our in-memory data path. What we add is exactness: the learning rate is
a function of the global step, augmentation a function of (seed, sample, epoch), and every other
random stream is saved in the checkpoint, so a run killed at any step and resumed ends with the
same weights as one that was never interrupted.

`train` sets the run up and calls the parts timm and torchvision name the same way:
`engine.loop.train_one_epoch` and `engine.loop.validate`, through a task (`engine.task`) that supplies
data, model, loss and metric; `engine.state.TrainState` saves and resumes. Knowledge distillation is
a task above the engine: `ghostnetv3.distill.train(cfg)` trains a classifier with or without it.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from ghostnetv3.errors import SaveError

from . import checkpoint as ckpt_io
from . import rundir
from .plan import (CHANNELS_LAST_MARGIN, PROBE_MAX_S, RunPlan, TimeBudget, auto_batch_size, build_scheduler,
                     choose_channels_last, ema_warmup_gamma, few_steps_warning, make_plan, scaled_lr)
from .config import TrainConfig
from .distributed import Dist, broadcast_from_main, init_distributed, seed_everything
from .loop import (NonFiniteLoss, Trainer, TrainingInterrupted, end_epoch, make_step_loss, train_one_epoch)
from .metrics_log import MetricsLog, tensorboard_writer_class, trim_metrics, wandb_module
from .model_factory import layout_line
from .plot import schedule_record
from .signals import StopFlag
from .state import RunInfo, TrainState, open_resume, restore_training
from .task import ClassificationTask

__all__ = ["train", "make_run_dir", "make_run_plan", "TrainingInterrupted", "NonFiniteLoss"]


def train(cfg: TrainConfig, *, train_set=None, val_set=None, task=None, resumed=None) -> dict[str, Any]:
    """Train as `cfg` says; returns the summary (also the last line of metrics.jsonl; {} on ranks other
    than 0).

    `train_set`/`val_set` (ImageSets) replace `cfg.data` — for tests and notebooks. `task` (default: a
    `ClassificationTask`) supplies data, model, loss and metric (engine.task; e.g.
    ghostnetv3.detect.DetectionTask); a config with a teacher trains through
    `ghostnetv3.distill.train(cfg)`. `resumed`: the engine.run.Run of `cfg.resume` when the caller
    has opened it already (its last.pt is then not read again). The run directory is locked for the whole call (engine.rundir); a
    run that fails before writing anything leaves no directory.
    """
    task = ClassificationTask() if task is None else task
    task.check_config(cfg)
    before, ok = rundir.held_dirs(), False
    try:
        trainer, state = _setup(cfg, task, train_set, val_set, resumed)
        out = _fit(trainer, state)
        ok = True
        return out
    finally:
        rundir.release_since(before, failed=not ok)


# --------------------------------------------------------------------------- set-up

def _setup(cfg: TrainConfig, task, train_set, val_set, resumed=None) -> tuple[Trainer, TrainState]:
    """Everything the loop needs, in the order that keeps a run's random streams (and so its resume) exact."""
    d, device = init_distributed(cfg)
    # the optional loggers asked for are checked before any work (one line when a package is missing)
    loggers = (tensorboard_writer_class(cfg.log_tensorboard), wandb_module(cfg.log_wandb)) if d.main \
        else (None, None)
    ckpt_path, ckpt = open_resume(cfg, d, resumed) if cfg.resume else (None, None)
    if ckpt_path is not None:
        run_dir = ckpt_path.parent
    else:
        run_dir = make_run_dir(cfg) if d.main else Path(cfg.output)
    cfg = task.resolve_config(cfg)
    seed_everything(cfg.seed + d.rank)

    if train_set is None:
        train_set, val_set = task.load_datasets(cfg)
    metric = task.eval_metric(cfg)  # the validation number that picks best.pt
    task.check_datasets(cfg, train_set)
    num_classes = cfg.num_classes or len(train_set.classes)
    in_chans = cfg.in_chans or (3 if getattr(train_set, "streaming", False) else int(train_set.images.shape[1]))
    saved_plan = RunPlan.from_dict(ckpt["plan"]) if ckpt is not None and ckpt.get("plan") else None
    # `cfg` from here on carries the run's decisions; `user_cfg` is what was asked (saved, compared on resume)
    user_cfg, cfg = cfg, _resolve_batch_and_lr(cfg, train_set, saved_plan, d)
    model, cfg = _build_model(cfg, task, saved_plan, num_classes, in_chans, d, device)

    task.setup(cfg, train_set, in_chans, num_classes, device)
    loader = task.train_loader(cfg, train_set, d, device)
    val_loader = task.val_loader(cfg, val_set, device) if d.main else None
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images make no full batch of "
                         f"{cfg.batch_size // d.world_size}; lower --batch-size")
    info = RunInfo(cfg.model, num_classes, in_chans, list(map(str, train_set.classes)), user_cfg.to_dict())
    t = _make_trainer(cfg, task, d, device, run_dir, info, model, (loader, val_loader, steps_per_epoch), saved_plan)

    state = TrainState(metric)
    if ckpt is not None:
        state = _resume(t, ckpt, ckpt_path, metric)
    _wrap_model(t)
    if d.main:
        _announce(t, state, user_cfg, train_set, val_set)
    t.log = MetricsLog(run_dir, d.main, *loggers, user_cfg.to_dict())
    t.log.write(schedule_record(cfg, t.plan, state.global_step))  # the lr schedule from here on (plot draws what ran)
    return t, state


def _build_model(cfg: TrainConfig, task, saved_plan: Optional[RunPlan], num_classes: int, in_chans: int,
                 d: Dist, device: torch.device) -> tuple[nn.Module, TrainConfig]:
    """(the model on its device in its memory layout, `cfg` with that layout). Built under the same seed on
    every rank (DDP also broadcasts rank 0's weights)."""
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg, num_classes, in_chans)
    if cfg.sync_bn and d.enabled:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm is GPU-only); on CPU each rank "
                             "normalises with its own batch statistics")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    channels_last = _resolve_channels_last(cfg, model, saved_plan, in_chans, num_classes, d, device, task)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = dataclasses.replace(cfg, channels_last=channels_last)
    torch.manual_seed(cfg.seed + d.rank)
    return model, cfg


def _make_ema(cfg: TrainConfig, model: nn.Module, plan: RunPlan) -> ModelEmaV3:
    return ModelEmaV3(model, decay=plan.ema_decay, use_warmup=cfg.model_ema_warmup,
                      warmup_gamma=ema_warmup_gamma(plan.ema_decay, cfg.model_ema_decay is None))


def _make_trainer(cfg: TrainConfig, task, d: Dist, device: torch.device, run_dir: Path, info: RunInfo,
                  model: nn.Module, loaders: tuple, saved_plan: Optional[RunPlan]) -> Trainer:
    """The optimizer, the plan and its schedule (stepped per optimizer update: the lr is a pure function of
    the global step, so resume is exact), the time budget, the grad scaler and the EMA (rank 0's)."""
    loader, val_loader, steps_per_epoch = loaders
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    plan = make_run_plan(cfg, saved_plan, steps_per_epoch, cfg.channels_last)
    scheduler = build_scheduler(optimizer, cfg, plan)
    budget = TimeBudget(cfg.time_limit * 60.0, provisional_steps=plan.total_steps) \
        if cfg.time_limit and not plan.calibrated else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    # rank 0 keeps the EMA, updated from the unwrapped module
    ema = _make_ema(cfg, model, plan) if cfg.model_ema and d.main else None
    return Trainer(cfg=cfg, task=task, d=d, device=device, run_dir=run_dir, info=info, model=model, module=model,
                   loader=loader, val_loader=val_loader, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   ema=ema, plan=plan, budget=budget, steps_per_epoch=steps_per_epoch,
                   channels_last=cfg.channels_last)


def _resume(t: Trainer, ckpt: dict[str, Any], ckpt_path: Path, metric: str) -> TrainState:
    """The weights, optimizer, EMA, schedule, counters and random streams of the checkpoint, put back."""
    t.ema = restore_training(ckpt, ckpt_path, t.cfg.model, model=t.module, optimizer=t.optimizer, scaler=t.scaler,
                             ema=t.ema, make_ema=lambda m: _make_ema(t.cfg, m, t.plan))
    # the schedule is rebuilt from the config (so --epochs can extend a run) and set to the saved step
    t.scheduler.step_update(num_updates=ckpt["global_step"])
    state = TrainState.from_checkpoint(ckpt, metric)
    state.restore_rng(t.d)
    if t.d.main:
        trim_metrics(t.run_dir / ckpt_io.METRICS_FILE, state.epoch, state.step)
    return state


def _wrap_model(t: Trainer) -> None:
    """DDP and torch.compile around the model; the loss of a step goes through the wrapped one."""
    if t.d.enabled:
        t.model = nn.parallel.DistributedDataParallel(
            t.model, device_ids=[t.device.index] if t.device.type == "cuda" else None)
    if t.cfg.compile:
        t.model = torch.compile(t.model)
    t.step_loss = make_step_loss(t.model, t.task, t.device, t.cfg.amp)


# --------------------------------------------------------------------------- the epochs

def _fit(t: Trainer, state: TrainState) -> dict[str, Any]:
    """Epochs until the plan's end (it may shrink or grow once a time budget is calibrated); a signal
    saves and stops after the current step."""
    summary: dict[str, Any] = {}
    state.start_clock()
    try:
        with StopFlag() as stop:
            while state.epoch < t.plan.epochs:
                clock = train_one_epoch(t, state, stop)
                summary = end_epoch(t, state, clock, summary)
    except BaseException:
        if t.d.enabled and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may be gone
        raise
    finally:
        t.log.close()
    if t.d.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return dict(summary, run_dir=str(t.run_dir), eval_metric=state.metric) if t.d.main else {}


# --------------------------------------------------------------------------- the run directory

def make_run_dir(cfg: TrainConfig) -> Path:
    """Create (or reuse) the run directory and take its lock (engine.rundir) for this process."""
    if cfg.experiment:
        run_dir = Path(cfg.output) / cfg.experiment
    else:
        data_name = Path(cfg.data.rstrip("/")).name or cfg.data
        run_dir = Path(cfg.output) / f"{cfg.model.replace('/', '_')}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    created = not run_dir.exists()
    held_before = rundir.held_dirs()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = rundir.lock_run_dir(run_dir, created=created)
    except OSError as e:  # read-only or full disk, a file where the directory should be
        raise SaveError(f"cannot write the run directory {run_dir} ({e.strerror or e}); pick a writable "
                        f"--output") from e
    # checked under the lock: a twin started at the same moment cannot pass it too
    if cfg.experiment and (run_dir / ckpt_io.LAST).exists():
        if lock.key not in held_before:  # refused: the lock taken here is not kept
            lock.release()
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                         f"or pick another --experiment")
    stale = ckpt_io.clean_unfinished_run(run_dir)
    if stale:
        print(f"note: {run_dir} held a run stopped before its first checkpoint; starting afresh "
              f"(removed {', '.join(stale)})", flush=True)
    return run_dir


# --------------------------------------------------------------------------- the run's decisions

def _resolve_channels_last(cfg: TrainConfig, model: nn.Module, saved_plan: Optional[RunPlan], in_chans: int,
                           num_classes: int, d: Dist, device: torch.device, task) -> bool:
    """`channels_last: auto`: the layout a few timed steps of a copy of the model find faster (on
    resume: the layout the run started with); rank 0 decides for all ranks."""
    if saved_plan is not None:
        return saved_plan.channels_last
    if cfg.channels_last is not None:
        return cfg.channels_last
    if not task.layout_probe:  # a task's model that needs its own targets to step: keep NCHW
        return False
    choice = False
    if d.main:
        print(f"channels_last auto: timing train steps of a copy of the model in each layout (at most "
              f"{PROBE_MAX_S:.0f} s; --channels-last true|false skips this)", flush=True)
        micro = cfg.batch_size // d.world_size // cfg.grad_accum_steps  # what a train step runs at once
        shape = (max(2, micro), in_chans, cfg.img_size, cfg.img_size)
        choice, times = choose_channels_last(model, shape, num_classes, device)
        print(f"channels_last auto: {'channels_last' if choice else 'NCHW'} ({_probe_result(times)})", flush=True)
    return bool(broadcast_from_main(choice, d))


def _probe_result(times: dict[str, float]) -> str:
    """What the layout probe measured, in words (see plan.choose_channels_last)."""
    if "first_step" in times:
        return (f"not probed: one train step already takes {times['first_step']:.1f} s; "
                f"--channels-last true to train channels_last")
    if len(times) < 2:
        return f"the probe ran out of its {PROBE_MAX_S:.0f} s before timing both layouts"
    return (f"a step of a copy: channels_last {times['channels_last'] * 1e3:.0f} ms, "
            f"NCHW {times['nchw'] * 1e3:.0f} ms; channels_last only when >= {CHANNELS_LAST_MARGIN:.0%} faster")


def make_run_plan(cfg: TrainConfig, saved_plan: Optional[RunPlan], steps_per_epoch: int,
                  channels_last: bool) -> RunPlan:
    """The run's plan: a time-budget run keeps the plan it calibrated; an epoch run plans from the
    config (so `--resume --epochs N` extends it as before)."""
    if cfg.time_limit and saved_plan is not None and saved_plan.calibrated \
            and saved_plan.steps_per_epoch == steps_per_epoch:
        return saved_plan
    return make_plan(cfg, steps_per_epoch, channels_last, calibrated=not cfg.time_limit)


def _num_images(ds) -> int:
    """The training set's size, 0 when unknown (an iterable source without --train-num-samples)."""
    try:
        return len(ds)
    except TypeError:
        return 0


def _resolve_batch_and_lr(cfg: TrainConfig, train_set, saved_plan: Optional[RunPlan], d: Dist) -> TrainConfig:
    """`cfg` with the run's batch and peak lr: `batch_size: auto` follows the training set's size (on
    resume: the batch the run started with); with no lr given, timm's lr_base x batch / lr_base_size."""
    batch = cfg.batch_size
    if batch is None:
        batch = saved_plan.batch_size if saved_plan is not None and saved_plan.batch_size else \
            auto_batch_size(_num_images(train_set), d.world_size)
    per_rank = batch // d.world_size
    if cfg.grad_accum_steps > per_rank:
        raise ValueError(f"--grad-accum-steps {cfg.grad_accum_steps} splits each batch of {per_rank} images "
                         f"(per process) into micro-batches; give at most {per_rank}, or a larger --batch-size")
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.lr_base, batch, cfg.lr_base_size)
    return dataclasses.replace(cfg, batch_size=batch, lr=lr)


# --------------------------------------------------------------------------- what the run says at start

def _announce(t: Trainer, state: TrainState, user_cfg: TrainConfig, train_set, val_set) -> None:
    """Rank 0: config.yaml and plan.json, then the start-up lines (the run, its layout, its plan, advice)."""
    cfg, d, info = t.cfg, t.d, t.info
    user_cfg.save(t.run_dir / ckpt_io.CONFIG_FILE)
    t.plan.save(t.run_dir)
    n_params = sum(p.numel() for p in t.module.parameters())
    # one folder split into train/val: both sets carry the same skipped files; count each file once
    skipped = len(set(getattr(train_set, "skipped", []) or []) | set(getattr(val_set, "skipped", []) or []))
    print(f"{cfg.model} ({n_params / 1e6:.2f}M params, {info.num_classes} classes, {info.in_chans} ch) | "
          f"{len(train_set)} train / {len(val_set)} val images"
          + (f", {skipped} unreadable skipped" if skipped else "")
          + f" | {_batch_text(user_cfg, cfg, _num_images(train_set), t.loader, d.world_size)}"
          + f" | {t.steps_per_epoch} steps/epoch x {t.plan.total_steps / t.steps_per_epoch:.3g} | "
            f"{d.world_size} x {t.device} | "
          + t.task.describe(cfg)
          + ("resuming at epoch {} step {} | ".format(state.epoch + 1, state.step) if cfg.resume else "")
          + f"run dir {t.run_dir}", flush=True)
    layout = layout_line(t.module, cfg.img_size, info.in_chans)
    if layout:
        print(layout, flush=True)
    budget = t.budget
    print(f"plan: {t.plan.describe()}{_lr_text(user_cfg, cfg)}" + (
        f"; the time budget is planned after the first {budget.calibration_steps} steps (sooner if they "
        f"take {budget.calibration_time_fraction:.0%} of it)" if budget is not None else ""), flush=True)
    note = t.task.plan_note(t.module, t.plan.total_steps) if t.plan.calibrated else ""
    if note:
        print(note, flush=True)
    warning = few_steps_warning(cfg, t.plan) if t.plan.calibrated else None
    if warning:
        print(warning, flush=True)


def _batch_text(asked: TrainConfig, cfg: TrainConfig, num_train: int, loader, world_size: int) -> str:
    """The start-up line's batch: how it was chosen, the last batch, the micro-batches."""
    text = f"batch {cfg.batch_size}"
    if asked.batch_size is None:
        full = auto_batch_size(0, world_size)
        text += " (auto)" if cfg.batch_size >= full else \
            f" (auto: {full} halved so that an epoch of {num_train} images has {len(loader)} steps)"
    per_rank, n = cfg.batch_size // world_size, num_train // world_size
    if cfg.grad_accum_steps > 1:
        text += f" as {cfg.grad_accum_steps} micro-batches of ~{per_rank // cfg.grad_accum_steps}"
    rest = n % per_rank if n else 0
    if rest and not getattr(loader, "drop_last", True):
        text += f", last batch of {rest} kept"
    return text


def _lr_text(asked: TrainConfig, cfg: TrainConfig) -> str:
    """The plan line's note on the lr when it comes from --lr-base (or --lr-base is overruled)."""
    if asked.lr_base is None:
        return ""
    if asked.lr is not None:
        return f"; --lr {asked.lr:g} given, --lr-base not used"
    return f"; lr {cfg.lr:.4g} (--lr-base {cfg.lr_base:g} x batch {cfg.batch_size} / {cfg.lr_base_size})"
