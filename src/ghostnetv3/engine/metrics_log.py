"""A run's record: metrics.jsonl (one JSON object per line), and the same numbers to TensorBoard and
Weights & Biases when asked. On resume the lines written after the checkpoint are dropped
(`trim_metrics`): the resumed run writes them again.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, Optional

from ghostnetv3.errors import UserError

from . import checkpoint as ckpt_io

__all__ = ["MetricsLog", "tensorboard_writer_class", "wandb_module", "wandb_run_id", "trim_metrics"]


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


def wandb_run_id(run_dir: Path) -> str:
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
        self.path = run_dir / ckpt_io.METRICS_FILE
        self.enabled = enabled
        self.tb = tensorboard(str(run_dir / "tb")) if enabled and tensorboard is not None else None
        self.wandb = None
        if enabled and wandb is not None:
            self.wandb = wandb.init(name=run_dir.name, dir=str(run_dir), config=config, id=wandb_run_id(run_dir),
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
