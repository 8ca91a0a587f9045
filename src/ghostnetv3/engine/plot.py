"""`ghostnetv3 plot RUN_DIR`: training curves from metrics.jsonl as one PNG.

The lr panel is the schedule itself, recomputed for every optimizer step from the run's config (the
lr is a pure function of the global step), so it does not depend on --log-interval. Losses are on a
log axis: one early spike (a validation loss of 155) must not flatten the rest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}; is it a `ghostnetv3 train` run directory?")
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return recs


def lr_per_step(run_dir: str | Path, steps_per_epoch: int, max_points: int = 4000) -> tuple[list[float], list[float]]:
    """(epoch positions, lr) of the run's schedule at up to `max_points` optimizer steps; ([], []) when the
    run has no config.yaml."""
    import torch
    from .budget import PLAN_FILE, RunPlan, build_scheduler, make_plan
    from .config import load_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file() or steps_per_epoch < 1:
        return [], []
    cfg = load_config(path)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    plan_path = Path(run_dir) / PLAN_FILE  # the schedule the run followed (auto warmup, time budget)
    plan = (RunPlan.from_dict(json.loads(plan_path.read_text())) if plan_path.is_file()
            else make_plan(cfg, steps_per_epoch, False))
    sched = build_scheduler(opt, cfg, plan)
    total = plan.total_steps
    stride = max(1, total // max_points)
    xs, lrs = [], []
    for step in range(0, total, stride):
        sched.step_update(num_updates=step)
        xs.append(step / steps_per_epoch)
        lrs.append(opt.param_groups[0]["lr"])
    return xs, lrs


def plot_run(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    xs, lrs = lr_per_step(run_dir, int(round(spe)))
    if xs:
        ax_lr.plot(xs, lrs, label="lr (schedule, every step)")
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
