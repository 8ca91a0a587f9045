"""A run's images: the training and validation sets a config names (`load_datasets`) and the
augmentation it asks for (`aug_config`). Training, `eval`, `quantize` and `cache-teacher` read data here.
"""
from __future__ import annotations

import os

from ghostnetv3 import data
from ghostnetv3.data import AugConfig
from ghostnetv3.data.stream import choose_data_mode, open_stream_set

from .config import TrainConfig
from .splits import eval_aug_config, subset, val_subset

__all__ = ["aug_config", "load_datasets"]


def aug_config(cfg: TrainConfig, in_chans: int, train: bool) -> AugConfig:
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
    mode, why = choose_data_mode(cfg.data, cfg.data_mode, seed=cfg.data_split_seed, val_fraction=cfg.val_fraction,
                                 limit_gb=cfg.data_memory_limit_gb)
    if why and os.environ.get("RANK", "0") == "0":
        print(why, flush=True)
    if mode == "stream":
        return _stream_sets(cfg, val_only)
    common = dict(seed=cfg.data_split_seed, val_fraction=cfg.val_fraction, on_bad_image=cfg.on_bad_image,
                  image_size=cfg.img_size, in_chans=cfg.in_chans)
    # through the package attribute, so a test can stand in for the decoder
    val_set = val_subset(data.load_dataset(cfg.data, split="val", **common), cfg.val_subset, cfg.seed)
    if val_only:
        return None, val_set
    return subset(data.load_dataset(cfg.data, split="train", **common), cfg.train_subset, cfg.seed), val_set


def _stream_sets(cfg: TrainConfig, val_only: bool):
    """(train, val) StreamSets, read per sample."""
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
