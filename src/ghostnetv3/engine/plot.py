"""`ghostnetv3 plot RUN_DIR`: training curves from metrics.jsonl as one PNG."""
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

    if steps:
        # steps per epoch, for an epoch x-axis: exact once an epoch has finished
        spe = epochs[0]["global_step"] / epochs[0]["epoch"] if epochs else max(r["step"] for r in steps)
        ax_loss.plot([r["epoch"] - 1 + r["step"] / spe for r in steps], [r["loss"] for r in steps],
                     lw=0.8, alpha=0.5, label="train (step)")
        ax_lr.plot([r["epoch"] - 1 + r["step"] / spe for r in steps], [r["lr"] for r in steps], label="lr")
    ex = [r["epoch"] for r in epochs]
    if epochs:
        ax_loss.plot(ex, [r["train_loss"] for r in epochs], "o-", label="train (epoch mean)")
        if "val_loss" in epochs[0]:
            ax_loss.plot(ex, [r["val_loss"] for r in epochs], "s-", label="val raw")
        if not steps:
            ax_lr.plot(ex, [r["lr"] for r in epochs], "o-", label="lr")
        ax_acc.plot(ex, [r.get("val_top1") for r in epochs], "o-", label="raw")
        if "ema_top1" in epochs[0]:
            ax_acc.plot(ex, [r.get("ema_top1") for r in epochs], "s-", label="EMA")
    ax_loss.set(title="loss", xlabel="epoch")
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
