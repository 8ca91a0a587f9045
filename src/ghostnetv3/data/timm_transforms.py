"""Per-sample timm paths: RandAugment-style recipes and datasets too big for memory.

These are slower than InMemoryLoader + BatchAugment (one PIL image at a time, worker
processes needed to keep up) and not replayable by (index, key); use them when a recipe needs
what the batched path lacks (auto_augment strings such as "rand-m9-mstd0.5") or for streaming
data (HF datasets, webdataset, tar) at scale.
"""

from __future__ import annotations

import os
from typing import Callable

from PIL import Image
from timm.data import create_dataset, create_transform
from torch.utils.data import Dataset

from .augment import AugConfig
from .datasets import ImageSet

__all__ = ["TimmTransformDataset", "timm_transform", "load_streaming_dataset"]


class TimmTransformDataset(Dataset):
    """An ImageSet seen through a per-sample (PIL) transform, for a standard DataLoader."""

    def __init__(self, ds: ImageSet, transform: Callable | None, in_chans: int = 3):
        self.ds, self.transform = ds, transform
        self.mode = "RGB" if in_chans == 3 else "L"

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x = self.ds.images[i]
        img = Image.fromarray(x[0].numpy(), "L") if x.shape[0] == 1 else Image.fromarray(x.permute(1, 2, 0).numpy(), "RGB")
        if img.mode != self.mode:
            img = img.convert(self.mode)
        return (self.transform(img) if self.transform else img), int(self.ds.labels[i])


def timm_transform(cfg: AugConfig, auto_augment: str | None = None):
    """timm.data.create_transform with the same settings as an AugConfig (plus auto_augment)."""
    mean, std = cfg.norm_stats()
    kw = {}
    if cfg.train:
        kw = dict(scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, vflip=cfg.vflip,
                  color_jitter=cfg.color_jitter, auto_augment=auto_augment,
                  re_prob=cfg.reprob, re_mode=cfg.remode)
    else:
        kw = dict(crop_pct=cfg.eval_crop_pct)
    return create_transform(input_size=(cfg.in_chans, *cfg.out_hw), is_training=cfg.train,
                            interpolation=cfg.interpolation, mean=mean, std=std, **kw)


def load_streaming_dataset(name: str, split: str = "train", transform: Callable | None = None, *,
                           root: str | None = None, is_training: bool | None = None, **kwargs):
    """timm.data.create_dataset passthrough: "hfds/...", "wds/...", "tfds/...", a folder or a .tar.

    A bare path as `name` is read as a folder or tar (timm's name "" with root=path).
    """
    if root is None and os.path.exists(name):
        name, root = "", name
    if is_training is None:
        is_training = split == "train"
    ds = create_dataset(name, root=root, split=split, is_training=is_training, **kwargs)
    ds.transform = transform
    return ds
