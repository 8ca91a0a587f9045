"""`ghostnetv3 plot RUN_DIR`: training curves from metrics.jsonl as one PNG.

The lr panel is the schedule the run followed, recomputed for every optimizer step (the lr is a pure
function of the global step), so it does not depend on --log-interval. A run writes a `schedule`
record each time it (re)builds its schedule — at the start, at every `--resume` (`--epochs 2` on a
finished 1-epoch run: epoch 1 ran a 1-epoch cosine, epoch 2 the rest of a 2-epoch one, and the lr
jumps back up) and when a time budget re-plans — and each stretch of steps is drawn with the
schedule it ran under. Runs older than these records get the schedule of config.yaml/plan.json.
Losses are on a log axis: one early spike (a validation loss of 155) must not flatten the rest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from .checkpoint import CONFIG_FILE, METRICS_FILE, PLAN_FILE
from .plan import RunPlan, build_scheduler, make_plan
from .config import TrainConfig, load_config

# the keys of the config that shape the lr schedule (with the plan's steps and warmup)
SCHEDULE_KEYS = ("sched", "lr", "min_lr", "warmup_lr")


def schedule_record(cfg: TrainConfig, plan: RunPlan, global_step: int) -> dict[str, Any]:
    """The metrics.jsonl record of a schedule the run follows from optimizer step `global_step` on (its
    numbers nested, so TensorBoard and W&B do not chart them as metrics)."""
    return {"type": "schedule", "global_step": int(global_step), "plan": plan.to_dict(),
            "schedule": {k: getattr(cfg, k) for k in SCHEDULE_KEYS}}


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}; is it a `ghostnetv3 train` run directory?")
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return recs


def schedule_segments(recs: list[dict]) -> list[dict]:
    """The schedule records in force, by starting step: a record replaces those it starts at or before
    (a resume from a checkpoint older than a later record)."""
    out: list[dict] = []
    for r in recs:
        if r.get("type") == "schedule" and isinstance(r.get("plan"), dict) and isinstance(r.get("schedule"), dict):
            out = [s for s in out if s["global_step"] < r["global_step"]] + [r]
    return out


def _segments_from_config(run_dir: Path, steps_per_epoch: int) -> list[dict]:
    """One segment from config.yaml and plan.json: a run logged before schedule records existed."""
    path = run_dir / CONFIG_FILE
    if not path.is_file() or steps_per_epoch < 1:
        return []
    cfg = load_config(path)
    plan_path = run_dir / PLAN_FILE  # the schedule the run followed (auto warmup, time budget)
    plan = (RunPlan.from_dict(json.loads(plan_path.read_text())) if plan_path.is_file()
            else make_plan(cfg, steps_per_epoch, False))
    return [schedule_record(cfg, plan, 0)]


def _lr_at(segment: dict, steps: list[int]) -> list[float]:
    """The lr of optimizer step `s` (0-based, the lr it used) under one schedule record."""
    cfg = TrainConfig(**{k: v for k, v in segment["schedule"].items() if k in SCHEDULE_KEYS})
    peak = segment["plan"].get("lr")  # the peak lr the run resolved (from --lr-base), when the plan has it
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr if peak is None else peak)
    sched = build_scheduler(opt, cfg, RunPlan.from_dict(segment["plan"]))
    out = []
    for step in steps:
        sched.step_update(num_updates=step)
        out.append(opt.param_groups[0]["lr"])
    return out


def _segments(run_dir: Path, steps_per_epoch: int, recs: Optional[list[dict]]) -> list[dict]:
    segments = schedule_segments(read_metrics(run_dir) if recs is None else recs)
    return segments or _segments_from_config(run_dir, steps_per_epoch)


def schedule_changes(run_dir: str | Path, steps_per_epoch: int, recs: Optional[list[dict]] = None) -> list[float]:
    """Epoch positions where the run rebuilt its schedule (a --resume that changed it, a re-planned budget)."""
    segments = _segments(Path(run_dir), steps_per_epoch, recs)
    return [int(s["global_step"]) / int(s["plan"].get("steps_per_epoch") or steps_per_epoch) for s in segments[1:]]


def lr_per_step(run_dir: str | Path, steps_per_epoch: int, max_points: int = 4000,
                recs: Optional[list[dict]] = None) -> tuple[list[float], list[float]]:
    """(epoch positions, lr) of the lr the run used at up to `max_points` optimizer steps (and on both
    sides of every schedule change); ([], []) when the run says nothing of its schedule."""
    segments = _segments(Path(run_dir), steps_per_epoch, recs)
    if not segments:
        return [], []
    spe = int(segments[-1]["plan"].get("steps_per_epoch") or steps_per_epoch)
    total = int(segments[-1]["plan"]["total_steps"])
    starts = [int(s["global_step"]) for s in segments] + [total]
    picked = set(range(0, total, max(1, total // max_points))) | {total - 1}
    picked |= {b for s in starts[1:-1] for b in (s - 1, s)}
    xs, lrs = [], []
    for seg, lo, hi in zip(segments, starts, starts[1:]):
        steps = sorted(s for s in picked if lo <= s < hi)
        xs += [s / spe for s in steps]
        lrs += _lr_at(seg, steps)
    return xs, lrs


def plot_run(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    import matplotlib  # lazy: only `plot` needs it, and the training loop imports this module
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    recs = read_metrics(run_dir)
    epochs = [r for r in recs if r.get("type") == "epoch"]
    steps = [r for r in recs if r.get("type") == "step"]
    if not epochs and not steps:
        raise ValueError(f"{run_dir}/metrics.jsonl has no finished step or epoch yet")
    fig, (ax_loss, ax_lr, ax_acc) = plt.subplots(1, 3, figsize=(15, 4))

    # steps per epoch, for an epoch x-axis: exact once an epoch has finished
    spe = epochs[0]["global_step"] / epochs[0]["epoch"] if epochs else max(r["step"] for r in steps)
    ex = [r["epoch"] for r in epochs]
    if steps:
        sx = [r["epoch"] - 1 + r["step"] / spe for r in steps]
        ax_loss.plot(sx, [r["loss"] for r in steps], lw=0.8, alpha=0.5, label="train (step)")
    if epochs:
        ax_loss.plot(ex, [r["train_loss"] for r in epochs], "o-", label="train (epoch mean)")
        if "val_loss" in epochs[0]:
            ax_loss.plot(ex, [r["val_loss"] for r in epochs], "s-", label="val raw")
        ax_acc.plot(ex, [r.get("val_top1") for r in epochs], "o-", label="raw")
        if "ema_top1" in epochs[0]:
            ax_acc.plot(ex, [r.get("ema_top1") for r in epochs], "s-", label="EMA")
    xs, lrs = lr_per_step(run_dir, int(round(spe)), recs=recs)
    if xs:
        ax_lr.plot(xs, lrs, drawstyle="steps-post", label="lr used (schedule, every step)")
    # where a --resume changed the schedule (e.g. --epochs) or a time budget re-planned it
    for i, x in enumerate(schedule_changes(run_dir, int(round(spe)), recs)):
        ax_lr.axvline(x, color="grey", ls=":", lw=1, label="schedule rebuilt (--resume / budget)" if i == 0 else None)
    if steps:
        # a step record holds the lr that step used: the schedule at the step before it
        ax_lr.plot([x - 1 / spe for x in sx], [r["lr"] for r in steps], ".", ms=4, label="lr (logged steps)")
    elif epochs and not xs:
        ax_lr.plot(ex, [r["lr"] for r in epochs], "o-", label="lr (end of epoch)")
    ax_loss.set(title="loss (log scale)", xlabel="epoch", yscale="log")
    ax_lr.set(title="learning rate", xlabel="epoch")
    ax_acc.set(title="val top-1 (%)", xlabel="epoch")
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(Path(run_dir).resolve().name)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
