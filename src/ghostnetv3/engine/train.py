"""`train(cfg)`: the training loop — one process or many (torchrun), CPU or GPU.

The loop is timm's recipe machinery (optimizer and scheduler factories, ModelEmaV3, Mixup,
label smoothing) around our in-memory data path. What we add is exactness: the learning rate is
a function of the global step, augmentation a function of (seed, sample, epoch), and every other
random stream is saved in the checkpoint, so a run killed at any step and resumed ends with the
same weights as one that was never interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ghostnetv3.errors import SaveError, UserError
from ghostnetv3.rep.count import count_params_macs

from . import checkpoint as ckpt_io
from . import rundir
from .advice import branch_budget_note
from .budget import (CHANNELS_LAST_MARGIN, PROBE_MAX_S, RunPlan, TimeBudget, auto_batch_size, build_scheduler,
                     choose_channels_last, drop_last_batch, ema_warmup_gamma, few_steps_warning, make_plan,
                     scaled_lr)
from .config import TrainConfig
from .inputs import check_train_classes, eval_aug_config, subset, val_subset
from .layout import describe_layout, resolve_layout
from .plot import schedule_record

FORMAT = "ghostnetv3-train/1"
# keys that say how to run, not what to compute: changing them on resume keeps it exact
_RUN_KEYS = {"resume", "output", "experiment", "log_interval", "checkpoint_interval", "workers", "device",
             "log_tensorboard", "log_wandb"}


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM: a checkpoint was saved at the current step."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class NonFiniteLoss(UserError):
    pass


# --------------------------------------------------------------------------- building blocks

def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    from ghostnetv3.models import create_model, is_ours

    kwargs: dict[str, Any] = {}
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    model_knobs = {"num_conv_branches": cfg.num_conv_branches, "width": cfg.width, "stem_stride": cfg.stem_stride,
                   "scale_branch": cfg.scale_branch, "identity_branch": cfg.identity_branch}
    set_knobs = {k: v for k, v in model_knobs.items() if v is not None}
    if set_knobs and not is_ours(cfg.model) and not cfg.repify:
        raise ValueError(f"{', '.join(set_knobs)} apply to ghostnetv3_*/ghostnetv2_* models, not '{cfg.model}'")
    if is_ours(cfg.model):  # ghostnetv3_100 or timm's name gnv3_100
        stem, out = resolve_layout(cfg.model, cfg.img_size, cfg.stem_stride, cfg.output_stride)
        kwargs.update(set_knobs, rep_init=cfg.rep_init, linear_branches=cfg.linear_branches, output_stride=out)
        if stem is not None:
            kwargs["stem_stride"] = stem
    elif cfg.output_stride not in (None, 32) or cfg.linear_branches:
        knob = "linear_branches" if cfg.linear_branches else "output_stride"
        raise ValueError(f"{knob} applies to ghostnetv3_*/ghostnetv2_* models, not '{cfg.model}'")
    model = create_model(cfg.model, num_classes=num_classes, in_chans=in_chans, pretrained=cfg.pretrained, **kwargs)
    if cfg.repify:
        try:
            from ghostnetv3.rep import repify
        except ImportError as e:
            raise UserError("--repify needs ghostnetv3.rep.repify, which this install lacks") from e
        # rep_init reference, and a model that starts from trained weights (pretrained or
        # init_checkpoint), keep repify's function-preserving start (new branches silent):
        # restarting its BNs would throw that training away
        fresh = cfg.rep_init == "scaled" and not cfg.pretrained and not cfg.init_checkpoint
        model = repify(model, num_conv_branches=cfg.num_conv_branches or 3,
                       scale_branch=cfg.scale_branch is not False, identity_branch=cfg.identity_branch is not False,
                       rep_init="scaled" if fresh else "preserve")
    if cfg.init_checkpoint:
        from ghostnetv3.models import load_checkpoint
        load_checkpoint(model, cfg.init_checkpoint, use_ema=True, reset_head=cfg.reset_head)
    return model


def layout_line(model: nn.Module, img_size: int, in_chans: int) -> str:
    """'layout: stem stride 2, output stride 8 (maps ...) | fused 1.58M params, 7.0M MACs' (GhostNet)."""
    layout = describe_layout(model, img_size)
    if not layout:
        return ""
    params, macs = count_params_macs(reparameterize(model), (in_chans, img_size, img_size))
    return f"layout: {layout} | fused {params / 1e6:.2f}M params, {macs / 1e6:.1f}M MACs per image"


def reparameterize(model: nn.Module) -> nn.Module:
    """The fused (deploy) copy of a model; the model itself keeps its mode."""
    from ghostnetv3.rep import reparameterize as fuse
    was_training = model.training
    model.eval()
    fused = fuse(model, inplace=False)
    model.train(was_training)
    return fused.eval()


def eval_form(model: nn.Module) -> nn.Module:
    """The fused copy when the model has re-parameterization branches: the same function (tested in
    tests/rep), and the number a deployment gets."""
    from ghostnetv3.rep import has_branches
    return reparameterize(model) if has_branches(model) else model


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none",
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


def aug_config(cfg: TrainConfig, in_chans: int, train: bool):
    from ghostnetv3.data import AugConfig

    if not train:
        return eval_aug_config(cfg, in_chans)  # one eval transform for validation, eval and quantize
    kwargs = dict(image_size=cfg.img_size, in_chans=in_chans, train=train, scale=cfg.scale, ratio=cfg.ratio,
                  crop_mode=cfg.crop_mode, padding=cfg.padding, hflip=cfg.hflip, vflip=cfg.vflip,
                  color_jitter=cfg.color_jitter, reprob=cfg.reprob, interpolation=cfg.interpolation)
    for key in ("mean", "std", "eval_crop_pct"):  # None: the data layer's default
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    return AugConfig(**kwargs)


def load_datasets(cfg: TrainConfig, *, val_only: bool = False):
    """(train, val): ImageSets decoded into memory, or StreamSets read per sample (data_mode).
    `val_only`: (None, val) without reading the training split (evaluation)."""
    from ghostnetv3.data import load_dataset
    from ghostnetv3.data.stream import choose_data_mode, open_stream_set

    mode, why = choose_data_mode(cfg.data, cfg.data_mode, seed=cfg.data_split_seed, val_fraction=cfg.val_fraction,
                                 limit_gb=cfg.data_memory_limit_gb)
    if why and os.environ.get("RANK", "0") == "0":
        print(why, flush=True)
    if mode == "stream":
        if cfg.teacher_cache and not val_only:
            raise ValueError("--teacher-cache replays views of in-memory images; use --data-mode memory, "
                             "or distill online with --teacher")
        common = dict(seed=cfg.data_split_seed, val_fraction=cfg.val_fraction, num_classes=cfg.num_classes)
        val_set = open_stream_set(cfg.data, "val", **common)
        if val_only:
            return None, val_subset(val_set, cfg.val_subset, cfg.seed)
        train_set = open_stream_set(cfg.data, "train", num_samples=cfg.train_num_samples, **common)
        if train_set.iterable:
            return train_set, val_set
        return subset(train_set, cfg.train_subset, cfg.seed), val_subset(val_set, cfg.val_subset, cfg.seed)
    common = dict(seed=cfg.data_split_seed, val_fraction=cfg.val_fraction, on_bad_image=cfg.on_bad_image,
                  image_size=cfg.img_size, in_chans=cfg.in_chans)
    val_set = val_subset(load_dataset(cfg.data, split="val", **common), cfg.val_subset, cfg.seed)
    if val_only:
        return None, val_set
    return subset(load_dataset(cfg.data, split="train", **common), cfg.train_subset, cfg.seed), val_set


# --------------------------------------------------------------------------- distributed

@dataclasses.dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    want = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and d.enabled:
        want = f"cuda:{d.local_rank}"
    device = torch.device(want)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.batch_size is not None and cfg.batch_size % d.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly "
                         f"over {d.world_size} processes")
    return d, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- run directory

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


def trim_metrics(path: Path, epoch: int, step: int) -> None:
    """On resume, forget log lines written after the checkpoint (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if rec.get("type") == "diverged" or (rec.get("type") == "epoch" and rec["epoch"] > epoch):
            continue
        if rec.get("type") == "step" and (rec["epoch"], rec["step"]) > (epoch + 1, step):
            continue
        keep.append(line)
    ckpt_io.atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def tensorboard_writer_class(want: Optional[bool]):
    """torch's SummaryWriter, or None: `want` None (auto) when tensorboard is installed, True requires
    it (one line saying how to install it), False never."""
    if want is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is an optional package
    except ImportError:
        if want:
            raise UserError("--log-tensorboard needs the tensorboard package, which is not installed: "
                            "pip install tensorboard (or drop --log-tensorboard)") from None
        return None
    return SummaryWriter


def wandb_module(want: bool):
    """The wandb module when --log-wandb asks for it (one line saying how to install it when missing)."""
    if not want:
        return None
    try:
        import wandb  # lazy: wandb is an optional package
    except ImportError:
        raise UserError("--log-wandb needs the wandb package, which is not installed: pip install wandb "
                        "(or drop --log-wandb)") from None
    return wandb


def _wandb_run_id(run_dir: Path) -> str:
    """One W&B run per run directory: a resumed run logs into the run it started."""
    path = run_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    ckpt_io.atomic_write_text(path, run_id + "\n")
    return run_id


class MetricsLog:
    """metrics.jsonl, and the same numbers to TensorBoard (RUN/tb) and W&B when asked (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard=None, wandb=None,
                 config: Optional[dict[str, Any]] = None):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = tensorboard(str(run_dir / "tb")) if enabled and tensorboard is not None else None
        self.wandb = None
        if enabled and wandb is not None:
            self.wandb = wandb.init(name=run_dir.name, dir=str(run_dir), config=config, id=_wandb_run_id(run_dir),
                                    resume="allow")

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        ckpt_io.append_line(self.path, json.dumps(rec))
        x = rec.get("global_step", rec.get("epoch", 0))
        scalars = {f"{rec['type']}/{k}": v for k, v in rec.items() if isinstance(v, (int, float))
                   and not isinstance(v, bool) and k not in ("epoch", "step", "global_step")}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, x)
        if self.wandb is not None:
            self.wandb.log(scalars, step=x)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# --------------------------------------------------------------------------- signals

class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint after the current step."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum:  # second signal: the user insists
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- the loop

def _stream_loader(cfg, ds, in_chans, device, train: bool, d: Optional[Dist] = None):
    """Per-sample timm transforms in DataLoader workers over a StreamSet (ghostnetv3.data.stream)."""
    from ghostnetv3.data import timm_transform
    from ghostnetv3.data.stream import IterableLoader, PerSampleLoader, SeededTransformDataset

    if train and cfg.crop_mode != "rrc":
        raise ValueError(f"--data-mode stream crops with timm's RandomResizedCrop; set --crop-mode rrc "
                         f"(got {cfg.crop_mode!r}), or use --data-mode memory")
    d = d or Dist()
    tf = timm_transform(aug_config(cfg, in_chans, train=train), auto_augment=cfg.aa if train else None)
    bs, rank, ws = (cfg.batch_size // d.world_size, d.rank, d.world_size) if train else (eval_batch_size(cfg), 0, 1)
    common = dict(seed=cfg.seed, rank=rank, world_size=ws, workers=cfg.workers, device=device,
                  channels_last=cfg.channels_last)
    if ds.iterable:
        return IterableLoader(ds, tf, bs, train=train, in_chans=in_chans, **common)
    dataset = SeededTransformDataset(ds.read, tf, seed=cfg.seed, in_chans=in_chans, name=ds.file_name)
    return PerSampleLoader(dataset, len(ds), bs, shuffle=train, drop_last=train, on_bad_image=cfg.on_bad_image,
                           skipped=ds.skipped, fixed_key=None if train else 0, verbose=d.main, **common)


def eval_batch_size(cfg: TrainConfig) -> int:
    """The validation batch: the training batch, at least 256 (`batch_size: auto` in a saved config: 256)."""
    return max(cfg.batch_size or 0, 256)


def _train_loader(cfg, train_set, in_chans, d: Dist, device, augment, view_fn):
    if getattr(train_set, "streaming", False):
        return _stream_loader(cfg, train_set, in_chans, device, train=True, d=d)
    if cfg.aa:  # RandAugment is per-sample PIL work: timm's transform pipeline in DataLoader workers
        from .aa_loader import AALoader
        return AALoader(cfg, train_set, in_chans, d, device)
    from ghostnetv3.data import InMemoryLoader
    per_rank = cfg.batch_size // d.world_size
    drop_last = drop_last_batch(len(train_set) // d.world_size, per_rank)  # small sets keep a large remainder
    return InMemoryLoader(train_set, per_rank, augment, shuffle=True, drop_last=drop_last,
                          seed=cfg.seed, rank=d.rank, world_size=d.world_size, device=device,
                          channels_last=cfg.channels_last, view_fn=view_fn,
                          # a batch thread only where the host is otherwise idle (a GPU step): on
                          # the CPU it competes with the step's own threads — the 32-px recipe on
                          # all 60k Fashion-MNIST images ran 287-290 img/s with it, 400-424 without
                          # (2 cores, interleaved); building a batch costs ~3 ms of a ~300 ms step
                          prefetch=device.type != "cpu")


def _val_loader(cfg, val_set, in_chans, device):
    from ghostnetv3.data import BatchAugment, InMemoryLoader

    if getattr(val_set, "streaming", False):
        return _stream_loader(cfg, val_set, in_chans, device, train=False)
    augment = BatchAugment(aug_config(cfg, in_chans, train=False), seed=cfg.seed)
    return InMemoryLoader(val_set, eval_batch_size(cfg), augment, shuffle=False, drop_last=False,
                          seed=cfg.seed, rank=0, world_size=1, device=device, channels_last=cfg.channels_last)


def train(cfg: TrainConfig, *, train_set=None, val_set=None, task=None) -> dict[str, Any]:
    """Train as `cfg` says; returns the summary (see `_train`). The run directory is locked for the
    whole call (engine.rundir); a run that fails before writing anything leaves no directory."""
    before, ok = rundir.held_dirs(), False
    try:
        out = _train(cfg, train_set=train_set, val_set=val_set, task=task)
        ok = True
        return out
    finally:
        rundir.release_since(before, failed=not ok)


def _resolve_channels_last(cfg: TrainConfig, model: nn.Module, saved_plan: Optional[RunPlan], in_chans: int,
                           num_classes: int, d: "Dist", device: torch.device, task) -> bool:
    """`channels_last: auto`: the layout a few timed steps of a copy of the model find faster (on
    resume: the layout the run started with); rank 0 decides for all ranks."""
    if saved_plan is not None:
        return saved_plan.channels_last
    if cfg.channels_last is not None:
        return cfg.channels_last
    if task is not None:  # a task's model needs its own targets to step; keep NCHW
        return False
    choice = [False]
    if d.main:
        print(f"channels_last auto: timing train steps of a copy of the model in each layout (at most "
              f"{PROBE_MAX_S:.0f} s; --channels-last true|false skips this)", flush=True)
        micro = cfg.batch_size // d.world_size // cfg.grad_accum_steps  # what a train step runs at once
        shape = (max(2, micro), in_chans, cfg.img_size, cfg.img_size)
        choice[0], times = choose_channels_last(model, shape, num_classes, device)
        print(f"channels_last auto: {'channels_last' if choice[0] else 'NCHW'} ({_probe_result(times)})", flush=True)
    if d.enabled:
        dist.broadcast_object_list(choice, src=0)
    return bool(choice[0])


def _probe_result(times: dict[str, float]) -> str:
    """What the layout probe measured, in words (see budget.choose_channels_last)."""
    if "first_step" in times:
        return (f"not probed: one train step already takes {times['first_step']:.1f} s; "
                f"--channels-last true to train channels_last")
    if len(times) < 2:
        return f"the probe ran out of its {PROBE_MAX_S:.0f} s before timing both layouts"
    return (f"a step of a copy: channels_last {times['channels_last'] * 1e3:.0f} ms, "
            f"NCHW {times['nchw'] * 1e3:.0f} ms; channels_last only when >= {CHANNELS_LAST_MARGIN:.0%} faster")


def _make_run_plan(cfg: TrainConfig, saved_plan: Optional[RunPlan], steps_per_epoch: int,
                   channels_last: bool) -> RunPlan:
    """The run's plan: a time-budget run keeps the plan it calibrated; an epoch run plans from the
    config (so `--resume --epochs N` extends it as before)."""
    if cfg.time_limit and saved_plan is not None and saved_plan.calibrated \
            and saved_plan.steps_per_epoch == steps_per_epoch:
        return saved_plan
    return make_plan(cfg, steps_per_epoch, channels_last, calibrated=not cfg.time_limit)


def _calibrate_budget(cfg: TrainConfig, budget: TimeBudget, steps_done: int, train_seconds: float,
                      steps_per_epoch: int, channels_last: bool, d: "Dist") -> RunPlan:
    """The time-budget plan from the measured rate (rank 0's, shared with all ranks)."""
    total = [budget.plan_total(steps_done, train_seconds)]
    if d.enabled:
        dist.broadcast_object_list(total, src=0)
    plan = make_plan(cfg, steps_per_epoch, channels_last, total_steps=total[0], calibrated=True)
    if d.main:
        print(f"time budget {cfg.time_limit:g} min: {budget.describe_rate(steps_done, train_seconds)} "
              f"-> schedule of {plan.describe()}", flush=True)
        warning = few_steps_warning(cfg, plan) if budget.first_pending else None
        if warning:
            print(warning, flush=True)
    budget.commit(total[0], steps_done, train_seconds)
    return plan


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


def _micro_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` near-equal consecutive slices of n items (torch.tensor_split's sizes), empty
    ones left out."""
    q, r = divmod(n, parts)
    sizes = [q + 1] * r + [q] * (parts - r)
    ends = list(itertools.accumulate(sizes))
    return [(e - k, e) for e, k in zip(ends, sizes) if k]


def make_step_loss(model: nn.Module, criterion, distiller, task, device: torch.device, amp: str):
    """`loss_fn(x, target, batch)` -> (loss, KD loss parts) of one (micro-)batch, under autocast."""
    def step_loss(x, target, batch):
        with autocast(device, amp):
            if task is not None:  # e.g. detectors, which compute their losses themselves
                return task.loss(model, batch), {}
            logits = model(x)
            loss = criterion(logits, target)
            if distiller is not None:
                return distiller(logits, batch, loss)
            return loss, {}
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
    bounds = _micro_bounds(x.shape[0], accum)
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


def _epoch_line(rec: dict[str, Any], metric: str, epochs: int, seconds: float) -> str:
    """The line printed after each epoch's validation."""
    label, fmt = ("val loss", ".4f") if metric == "loss" else (metric, ".2f")
    ema = f"  ema {label} {rec['ema_' + metric]:{fmt}}" if f"ema_{metric}" in rec else ""
    return (f"epoch {rec['epoch']}/{epochs}  loss {rec['train_loss']:.4f}  {label} {rec['val_' + metric]:{fmt}}{ema}  "
            f"lr {rec['lr']:.2e}  {rec['train_img_s']:.0f} img/s  {seconds:.0f}s")


def _best_start(metric: str) -> float:
    """The best score before any epoch: any real score beats it."""
    return math.inf if metric == "loss" else -1.0


def _better(metric: str, a: float, b: float) -> bool:
    """`a` is a better validation score than `b` (loss: lower is better)."""
    return a < b if metric == "loss" else a > b


def _best_from_state(state: dict[str, Any], metric: str) -> dict[str, Any]:
    """The best score so far, from a checkpoint; a run resumed with another --eval-metric starts afresh."""
    if f"best_{metric}" not in state:
        print(f"note: the run picked best.pt by another metric; from now on by {metric}", flush=True)
        return {"value": _best_start(metric), "epoch": 0, "source": None}
    return {"value": state[f"best_{metric}"], "epoch": state["best_epoch"], "source": state["best_source"]}


def _train(cfg: TrainConfig, *, train_set=None, val_set=None, task=None) -> dict[str, Any]:
    """Train as `cfg` says; returns the summary (also the last line of metrics.jsonl).

    `train_set`/`val_set` (ImageSets) replace `cfg.data` — for tests and notebooks.
    `task` (default: classification) trains another kind of model through this same loop; it
    provides `load_datasets(cfg)`, `build_model(cfg, num_classes, in_chans)`,
    `train_loader(cfg, train_set, dist, device)`, `val_loader(cfg, val_set, device)`,
    `loss(model, batch)`, `evaluate(model, val_loader, device, amp)` -> dict, and `metric`, the
    key of that dict which picks best.pt (see ghostnetv3.detect.task).
    """
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3
    from tqdm import tqdm

    d, device = init_distributed(cfg)
    # the optional loggers asked for are checked before any work (one line when a package is missing)
    tb_writer, wandb = (tensorboard_writer_class(cfg.log_tensorboard), wandb_module(cfg.log_wandb)) if d.main \
        else (None, None)

    # -- resume: the run directory and the state to continue from
    state = None
    if cfg.resume:
        ckpt_path = ckpt_io.find_checkpoint(cfg.resume)
        state = ckpt_io.load(ckpt_path)
        if state.get("format") != FORMAT:
            raise ValueError(f"{ckpt_path} is not a ghostnetv3 training checkpoint (no optimizer state); "
                             f"start a new run with --init-checkpoint {ckpt_path}")
        if state["model_name"] != cfg.model:
            raise ValueError(f"{ckpt_path} was saved from model '{state['model_name']}', not '{cfg.model}'; "
                             f"resume with --model {state['model_name']} or start a new run")
        run_dir = ckpt_path.parent
        if d.main:  # a --resume of a run that is still alive would train alongside it
            rundir.lock_run_dir(run_dir)
            ckpt_io.clean_stale_temp_files(run_dir)
            ckpt_io.report_config_edits(run_dir, state["config"], ckpt_path,
                                        "it is rewritten from it; pass changes as --key value with --resume")
        changed = {k: (v, cfg.to_dict().get(k)) for k, v in state["config"].items()
                   if k not in _RUN_KEYS and cfg.to_dict().get(k, v) != v}
        if changed and d.main:
            print("note: resuming with changed recipe keys (the result will differ from an unbroken run): "
                  + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), flush=True)
    else:
        run_dir = make_run_dir(cfg) if d.main else Path(cfg.output)

    if task is None:  # the layout is decided once and saved with the run (eval/export rebuild it from there)
        stem, out = resolve_layout(cfg.model, cfg.img_size, cfg.stem_stride, cfg.output_stride)
        cfg = cfg.replace(stem_stride=stem, output_stride=out)
    seed_everything(cfg.seed + d.rank)

    # -- data
    if train_set is None:
        train_set, val_set = task.load_datasets(cfg) if task is not None else load_datasets(cfg)
    metric = task.metric if task is not None else cfg.eval_metric  # the validation number that picks best.pt
    if task is None:
        check_train_classes(cfg.data, train_set, cfg.num_classes)
    num_classes = cfg.num_classes or len(train_set.classes)
    in_chans = cfg.in_chans or (3 if getattr(train_set, "streaming", False) else int(train_set.images.shape[1]))
    saved_plan = RunPlan.from_dict(state["plan"]) if state is not None and state.get("plan") else None
    # `cfg` from here on carries the run's decisions; `user_cfg` is what was asked (saved, compared on resume)
    user_cfg, cfg = cfg, _resolve_batch_and_lr(cfg, train_set, saved_plan, d)

    # -- model (built under the same seed on every rank; DDP also broadcasts rank 0's weights)
    torch.manual_seed(cfg.seed)
    model = (task.build_model if task is not None else build_model)(cfg, num_classes, in_chans)
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

    from ghostnetv3.data import BatchAugment
    augment = BatchAugment(aug_config(cfg, in_chans, train=True), seed=cfg.seed)
    distiller = None
    if cfg.teacher or cfg.teacher_cache:
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise ValueError("distillation with Mixup/CutMix is not supported; set --mixup 0 --cutmix 0")
        from ghostnetv3.distill import build_distiller
        distiller = build_distiller(cfg, train_set, augment, device)
    if task is not None:
        loader = task.train_loader(cfg, train_set, d, device)
        val_loader = task.val_loader(cfg, val_set, device) if d.main else None
    else:
        loader = _train_loader(cfg, train_set, in_chans, d, device, augment, getattr(distiller, "view_fn", None))
        val_loader = _val_loader(cfg, val_set, in_chans, device) if d.main else None
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images make no full batch of "
                         f"{cfg.batch_size // d.world_size}; lower --batch-size")

    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    # stepped per optimizer update: the lr is a pure function of the global step, so resume is exact
    plan = _make_run_plan(cfg, saved_plan, steps_per_epoch, channels_last)
    scheduler = build_scheduler(optimizer, cfg, plan)
    budget = TimeBudget(cfg.time_limit * 60.0, provisional_steps=plan.total_steps) \
        if cfg.time_limit and not plan.calibrated else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    ema = None
    if cfg.model_ema and d.main:  # rank 0 keeps the EMA, updated from the unwrapped module
        ema = ModelEmaV3(model, decay=plan.ema_decay, use_warmup=cfg.model_ema_warmup,
                         warmup_gamma=ema_warmup_gamma(plan.ema_decay, cfg.model_ema_decay is None))

    mixup_fn = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                         label_smoothing=cfg.smoothing, num_classes=num_classes)
        criterion = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    start_epoch, start_step, global_step = 0, 0, 0
    best = {"value": _best_start(metric), "epoch": 0, "source": None}
    loss_sum, loss_count, elapsed = 0.0, 0, 0.0
    parts_sum: dict[str, float] = {}  # KD loss parts (rank 0's), summed over the epoch
    if state is not None:
        try:
            model.load_state_dict(state["state_dict"])
        except RuntimeError as e:
            raise ValueError(f"{ckpt_path} does not fit model '{cfg.model}' with this config "
                             f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("state_dict_ema") is not None:
                ema.module.load_state_dict(state["state_dict_ema"])
            else:
                ema = ModelEmaV3(model, decay=plan.ema_decay, use_warmup=cfg.model_ema_warmup,
                         warmup_gamma=ema_warmup_gamma(plan.ema_decay, cfg.model_ema_decay is None))
        start_epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        # the schedule is rebuilt from the config (so --epochs can extend a run) and set to the saved step
        scheduler.step_update(num_updates=global_step)
        best = _best_from_state(state, metric)
        loss_sum, loss_count, elapsed = state["epoch_loss_sum"], state["epoch_loss_count"], state["elapsed"]
        parts_sum = dict(state.get("epoch_parts_sum") or {})
        rngs = state["rng"]
        if len(rngs) == d.world_size:
            ckpt_io.set_rng_state(rngs[d.rank])
        elif d.main:
            print(f"note: checkpoint saved by {len(rngs)} processes, resuming on {d.world_size}: "
                  f"dropout/Mixup randomness will differ from an uninterrupted run")
        if d.main:
            trim_metrics(run_dir / "metrics.jsonl", start_epoch, start_step)

    model_without_ddp = model
    if d.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    step_loss = make_step_loss(model, criterion, distiller, task, device, cfg.amp)

    if d.main:
        user_cfg.save(run_dir / "config.yaml")
        plan.save(run_dir)
        n_params = sum(p.numel() for p in model_without_ddp.parameters())
        # one folder split into train/val: both sets carry the same skipped files; count each file once
        skipped = len(set(getattr(train_set, "skipped", []) or []) | set(getattr(val_set, "skipped", []) or []))
        print(f"{cfg.model} ({n_params / 1e6:.2f}M params, {num_classes} classes, {in_chans} ch) | "
              f"{len(train_set)} train / {len(val_set)} val images"
              + (f", {skipped} unreadable skipped" if skipped else "")
              + f" | {_batch_text(user_cfg, cfg, _num_images(train_set), loader, d.world_size)}"
              + f" | {steps_per_epoch} steps/epoch x {plan.total_steps / steps_per_epoch:.3g} | {d.world_size} x {device} | "
              + (f"KD from {cfg.teacher_cache or cfg.teacher} ({cfg.kd_loss}, weight {cfg.kd_weight:g}) | "
                 if distiller is not None else "")
              + ("resuming at epoch {} step {} | ".format(start_epoch + 1, start_step) if state is not None else "")
              + f"run dir {run_dir}", flush=True)
        layout = layout_line(model_without_ddp, cfg.img_size, in_chans)
        if layout:
            print(layout, flush=True)
        print(f"plan: {plan.describe()}{_lr_text(user_cfg, cfg)}" + (
            f"; the time budget is planned after the first {budget.calibration_steps} steps (sooner if they "
            f"take {budget.calibration_time_fraction:.0%} of it)" if budget is not None else ""), flush=True)
        note = branch_budget_note(model_without_ddp, plan.total_steps) if task is None and plan.calibrated else ""
        if note:
            print(note, flush=True)
        warning = few_steps_warning(cfg, plan) if plan.calibrated else None
        if warning:
            print(warning, flush=True)
    log = MetricsLog(run_dir, d.main, tb_writer, wandb, user_cfg.to_dict())
    log.write(schedule_record(cfg, plan, global_step))  # the lr schedule from here on (plot draws what ran)

    def save(path_name: str, epoch: int, step: int) -> None:
        rng = ckpt_io.rng_state()
        rngs = [rng]
        if d.enabled:
            rngs = [None] * d.world_size
            dist.all_gather_object(rngs, rng)
        if not d.main:
            return
        ckpt_io.atomic_save({
            "format": FORMAT, "model_name": cfg.model,
            "state_dict": ckpt_io.strip_module_prefix(model_without_ddp.state_dict()),
            "state_dict_ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rngs,
            "epoch": epoch, "step": step, "global_step": global_step,
            "epoch_loss_sum": loss_sum, "epoch_loss_count": loss_count, "epoch_parts_sum": parts_sum,
            f"best_{metric}": best["value"], "best_epoch": best["epoch"], "best_source": best["source"],
            "elapsed": elapsed + (time.perf_counter() - t_start),
            "num_classes": num_classes, "in_chans": in_chans, "classes": list(map(str, train_set.classes)),
            "config": user_cfg.to_dict(), "plan": plan.to_dict(),
        }, run_dir / path_name)

    summary: dict[str, Any] = {}
    t_start = time.perf_counter()
    train_time = 0.0  # seconds in training steps this process (evaluation excluded): what a time budget counts
    try:
        with StopFlag() as stop:
            for epoch in itertools.count(start_epoch):
                if epoch >= plan.epochs:  # the plan may shrink or grow once a time budget is calibrated
                    break
                loader.set_epoch(epoch)
                model.train()
                first = start_step if epoch == start_epoch else 0
                if first == 0:
                    loss_sum, loss_count, parts_sum = 0.0, 0, {}
                bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{plan.epochs}",
                           disable=not d.main, mininterval=1.0, dynamic_ncols=True, leave=False)
                t_epoch, seen = time.perf_counter(), 0
                for step, batch in enumerate(loader.iter_from(first), start=first):
                    time_due = d.main and budget is not None and budget.due_by_time(
                        train_time + time.perf_counter() - t_epoch)
                    optimizer.zero_grad(set_to_none=True)
                    loss, parts = forward_backward(model, batch, step_loss, accum=cfg.grad_accum_steps, scaler=scaler,
                                                   no_sync=model.no_sync if d.enabled else None, mixup_fn=mixup_fn)
                    for k, v in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + v
                    # one collective per step: any rank's bad loss or signal stops all ranks together, the
                    # logged loss is the mean over ranks, and rank 0's clock says when to plan a time budget
                    flags = torch.stack([(~torch.isfinite(loss)).float(),
                                         torch.tensor(float(stop.signum == signal.SIGINT), device=device),
                                         torch.tensor(float(stop.signum == signal.SIGTERM), device=device),
                                         loss / d.world_size, torch.tensor(float(time_due), device=device)])
                    if d.enabled:
                        dist.all_reduce(flags)
                    if flags[0] > 0:
                        kept = run_dir / ckpt_io.LAST
                        bad_loss = flags[3].item()
                        # on record, so a harness (ablate) can tell a diverged run from a crashed one
                        log.write({"type": "diverged", "epoch": epoch + 1, "step": step + 1,
                                   "global_step": global_step + 1, "loss": bad_loss,
                                   "last_good_checkpoint": kept.exists()})
                        raise NonFiniteLoss(
                            f"loss became {bad_loss:g} at epoch {epoch + 1} step {step + 1}/{steps_per_epoch} "
                            f"(global step {global_step + 1}); stopped before updating the weights. "
                            + (f"last good checkpoint: {kept}. " if kept.exists() else "no checkpoint saved yet. ")
                            + "try a lower --lr, --clip-grad 1.0, or --amp none")
                    if cfg.clip_grad:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model_without_ddp.parameters(), cfg.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    lr = optimizer.param_groups[0]["lr"]  # the lr this step used
                    global_step += 1
                    scheduler.step_update(num_updates=global_step)
                    if ema is not None:
                        ema.update(model_without_ddp, step=global_step)
                    if budget is not None and (budget.due(global_step) or flags[4] > 0):
                        plan = _calibrate_budget(cfg, budget, global_step, train_time + time.perf_counter() - t_epoch,
                                                 steps_per_epoch, channels_last, d)
                        scheduler = build_scheduler(optimizer, cfg, plan)
                        scheduler.step_update(num_updates=global_step)
                        if ema is not None:
                            ema.decay = plan.ema_decay
                            ema.warmup_gamma = ema_warmup_gamma(plan.ema_decay, cfg.model_ema_decay is None)
                        if d.main:
                            plan.save(run_dir)
                        log.write(schedule_record(cfg, plan, global_step))
                        if budget.final:
                            budget = None

                    loss_val = flags[3].item()
                    loss_sum += loss_val
                    loss_count += 1
                    seen += len(batch[0]) * d.world_size
                    if d.main:
                        bar.update(1)
                        rate = seen / max(time.perf_counter() - t_epoch, 1e-9)
                        bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
                        if cfg.log_interval and (step + 1) % cfg.log_interval == 0:
                            log.write({"type": "step", "epoch": epoch + 1, "step": step + 1,
                                       "global_step": global_step, "loss": loss_val, "lr": lr})
                    if flags[1] > 0 or flags[2] > 0:
                        save(ckpt_io.LAST, epoch, step + 1)
                        signum = signal.SIGINT if flags[1] > 0 else signal.SIGTERM
                        raise TrainingInterrupted(
                            f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1} step {step + 1}; "
                            f"checkpoint saved — continue with: ghostnetv3 train --resume {run_dir}", signum)
                    if cfg.checkpoint_interval and global_step % cfg.checkpoint_interval == 0 \
                            and step + 1 < steps_per_epoch:
                        save(ckpt_io.LAST, epoch, step + 1)
                    if global_step >= plan.total_steps and step + 1 < steps_per_epoch:
                        break  # the schedule ends inside this epoch (at its end the loader finishes its pass)
                bar.close()
                epoch_time = time.perf_counter() - t_epoch
                train_time += epoch_time

                # -- evaluate on rank 0 over the whole validation set (exact, no padding)
                rec: dict[str, Any] = {"type": "epoch", "epoch": epoch + 1, "global_step": global_step,
                                       "train_loss": loss_sum / max(loss_count, 1),
                                       **{f"train_{k}": v / max(loss_count, 1) for k, v in parts_sum.items()},
                                       "lr": optimizer.param_groups[0]["lr"],
                                       "train_img_s": seen / max(epoch_time, 1e-9)}
                if d.main:
                    evaluate_fn = task.evaluate if task is not None else evaluate
                    raw = evaluate_fn(eval_form(model_without_ddp), val_loader, device, cfg.amp)
                    rec.update({f"val_{k}": v for k, v in raw.items() if k != "n"})
                    candidates = {"raw": raw[metric]}
                    if ema is not None:
                        ema_m = evaluate_fn(eval_form(ema.module), val_loader, device, cfg.amp)
                        rec.update({f"ema_{k}": v for k, v in ema_m.items() if k != "n"})
                        candidates["ema"] = ema_m[metric]
                    source = (min if metric == "loss" else max)(candidates, key=candidates.get)
                    rec["elapsed_s"] = elapsed + (time.perf_counter() - t_start)
                    rec["train_s"] = train_time  # training steps only (this process), what --time-limit counts
                    improved = _better(metric, candidates[source], best["value"])
                    if improved:
                        best = {"value": candidates[source], "epoch": epoch + 1, "source": source}
                    rec.update({f"best_{metric}": best["value"], "best_epoch": best["epoch"], "best_source": best["source"]})
                    log.write(rec)
                    print(_epoch_line(rec, metric, plan.epochs, epoch_time), flush=True)
                    summary = rec
                model.train()
                loss_sum, loss_count, parts_sum = 0.0, 0, {}
                save(ckpt_io.LAST, epoch + 1, 0)
                if d.main and summary.get("best_epoch") == epoch + 1:
                    ckpt_io.atomic_save({
                        "format": "ghostnetv3-weights/1", "model_name": cfg.model,
                        "state_dict": ckpt_io.strip_module_prefix(model_without_ddp.state_dict()),
                        "state_dict_ema": ema.module.state_dict() if ema is not None else None,
                        "best_source": best["source"], "epoch": epoch + 1, "metrics": {
                            k: v for k, v in summary.items() if isinstance(v, (int, float))},
                        "num_classes": num_classes, "in_chans": in_chans,
                        "classes": list(map(str, train_set.classes)), "config": user_cfg.to_dict(),
                        "plan": plan.to_dict(),
                    }, run_dir / ckpt_io.BEST)
    except BaseException:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may be gone
        raise
    finally:
        log.close()
    if d.enabled:
        dist.barrier()
        dist.destroy_process_group()

    return dict(summary, run_dir=str(run_dir), eval_metric=metric) if d.main else {}
