"""The batches a classification run steps and validates on, for each data path:

- in memory (`InMemoryLoader`): the whole set as uint8 tensors, augmented in batches (the default);
- RandAugment (`--aa`): timm's per-sample transform in DataLoader workers (`aa_loader.AALoader`);
- streamed (`--data-mode stream`): timm transforms per sample over a StreamSet (`stream_loader`).

Every path orders, shards over ranks and augments as a function of (seed, epoch, sample), so a run
resumed mid-epoch sees the batches an unbroken one would.
"""
from __future__ import annotations

from typing import Optional

import torch

from ghostnetv3.data import BatchAugment, InMemoryLoader, timm_transform
from ghostnetv3.data.stream import IterableLoader, PerSampleLoader, SeededTransformDataset

from .aa_loader import AALoader
from .plan import drop_last_batch
from .config import TrainConfig
from .datasets import aug_config
from .distributed import Dist

__all__ = ["eval_batch_size", "stream_loader", "train_loader", "val_loader"]


def eval_batch_size(cfg: TrainConfig) -> int:
    """The validation batch: the training batch, at least 256 (`batch_size: auto` in a saved config: 256)."""
    return max(cfg.batch_size or 0, 256)


def stream_loader(cfg: TrainConfig, ds, in_chans: int, device: torch.device, train: bool,
                  d: Optional[Dist] = None):
    """Per-sample timm transforms in DataLoader workers over a StreamSet (ghostnetv3.data.stream)."""
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


def train_loader(cfg: TrainConfig, train_set, in_chans: int, d: Dist, device: torch.device,
                 augment: BatchAugment, view_fn=None):
    """The training batches of this rank; `view_fn` (cached distillation) picks each sample's view."""
    if getattr(train_set, "streaming", False):
        return stream_loader(cfg, train_set, in_chans, device, train=True, d=d)
    if cfg.aa:  # RandAugment is per-sample PIL work: timm's transform pipeline in DataLoader workers
        return AALoader(cfg, train_set, in_chans, d, device)
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


def val_loader(cfg: TrainConfig, val_set, in_chans: int, device: torch.device):
    """Every validation image once, in order, through the eval transform (rank 0 validates)."""
    if getattr(val_set, "streaming", False):
        return stream_loader(cfg, val_set, in_chans, device, train=False)
    augment = BatchAugment(aug_config(cfg, in_chans, train=False), seed=cfg.seed)
    return InMemoryLoader(val_set, eval_batch_size(cfg), augment, shuffle=False, drop_last=False,
                          seed=cfg.seed, rank=0, world_size=1, device=device, channels_last=cfg.channels_last)
