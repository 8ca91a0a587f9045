"""Per-sample timm augmentation (RandAugment `aa` recipes) behind the InMemoryLoader interface.

RandAugment is PIL work one image at a time, so it runs in DataLoader workers through timm's
transform. The sample order is the InMemoryLoader's (seeded by epoch, split over ranks) and
`iter_from` skips whole batches, so a resume sees the same images in the same order; the random
augmentation inside workers comes from a generator seeded by (seed, epoch, start batch), so it
is reproducible run to run but a resumed epoch draws different augmentations than an unbroken one.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ghostnetv3.data import Batch, InMemoryLoader, TimmTransformDataset, timm_transform


class AALoader:
    def __init__(self, cfg, train_set, in_chans: int, d, device: torch.device):
        from .train import aug_config

        self.order = InMemoryLoader(train_set, cfg.batch_size // d.world_size, None, shuffle=True, drop_last=True,
                                    seed=cfg.seed, rank=d.rank, world_size=d.world_size)
        self.dataset = TimmTransformDataset(train_set, timm_transform(aug_config(cfg, in_chans, train=True),
                                                                      auto_augment=cfg.aa), in_chans)
        self.batch_size, self.workers, self.seed = self.order.batch_size, cfg.workers, cfg.seed
        self.device, self.channels_last = device, cfg.channels_last

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def iter_from(self, start_batch: int):
        idx = self.order.rank_indices()[start_batch * self.batch_size:len(self) * self.batch_size]
        g = torch.Generator().manual_seed((self.seed * 1000003 + self.order.epoch) * 1009 + start_batch)
        dl = DataLoader(torch.utils.data.Subset(self.dataset, idx.tolist()), batch_size=self.batch_size,
                        shuffle=False, drop_last=True, num_workers=self.workers, generator=g,
                        pin_memory=self.device.type == "cuda", persistent_workers=False)
        for b, (x, y) in enumerate(dl):
            rows = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, y.to(self.device), rows, torch.full_like(rows, self.order.epoch))

    def __iter__(self):
        return self.iter_from(0)
