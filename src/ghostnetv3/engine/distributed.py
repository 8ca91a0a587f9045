"""One process or many (torchrun): which rank this is, its device, the seeds, and autocast.

torchvision's `references/classification/utils.py` keeps these beside the loop; so do we. Rank 0
(`Dist.main`) prints, logs, evaluates and writes; every rank steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .config import TrainConfig

__all__ = ["Dist", "init_distributed", "seed_everything", "autocast", "broadcast_from_main", "gather_objects"]


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
    """This process's rank (torchrun's environment) and device; the process group when there are many."""
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


def autocast(device: torch.device, amp: str):
    """The mixed-precision context of `--amp` (none | bf16 | fp16)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def broadcast_from_main(value: Any, d: Dist) -> Any:
    """Rank 0's `value` on every rank (a decision one rank makes for all)."""
    box = [value]
    if d.enabled:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any, d: Dist) -> list[Any]:
    """Every rank's `value`, in rank order (on every rank)."""
    if not d.enabled:
        return [value]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, value)
    return out
