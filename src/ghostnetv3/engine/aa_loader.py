"""Per-sample timm augmentation (RandAugment `aa` recipes) behind the InMemoryLoader interface.

RandAugment is PIL work one image at a time, so it runs in DataLoader workers through timm's
transform — the streaming path's `PerSampleLoader` over the in-memory images. The sample order is
the InMemoryLoader's (seeded by epoch, split over ranks) and every random draw of a sample's
transform is seeded from (seed, epoch, index), so a resumed epoch — mid-way too — sees the same
images with the same augmentations as an unbroken one, whatever the worker count.
"""
from __future__ import annotations

import torch

from ghostnetv3.data import TimmTransformDataset, timm_transform
from ghostnetv3.data.stream import PerSampleLoader, SeededTransformDataset

from .datasets import aug_config


class AALoader(PerSampleLoader):
    def __init__(self, cfg, train_set, in_chans: int, d, device: torch.device):
        images = TimmTransformDataset(train_set, None, in_chans)  # index -> (PIL image, label)
        transform = timm_transform(aug_config(cfg, in_chans, train=True), auto_augment=cfg.aa)
        super().__init__(SeededTransformDataset(images.__getitem__, transform, seed=cfg.seed, in_chans=in_chans),
                         len(train_set), cfg.batch_size // d.world_size, shuffle=True, drop_last=True,
                         seed=cfg.seed, rank=d.rank, world_size=d.world_size, workers=cfg.workers,
                         device=device, channels_last=cfg.channels_last)
