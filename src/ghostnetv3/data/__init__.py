"""Data: whole datasets in memory as uint8 tensors, replayable batched augmentation, loaders.

    train = load_dataset("fashion-mnist", "train")
    aug = BatchAugment(AugConfig(image_size=32, crop_mode="pad_crop"), seed=0)
    loader = InMemoryLoader(train, 256, aug, shuffle=True, drop_last=True)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels, indices, keys in loader: ...

Per-sample timm paths (RandAugment, streaming datasets) live in `timm_transforms`; `stream` trains
from data too big for memory (folders, tar, timm readers) through them, seeded per sample.
`inputspec.InputSpec` is a model's input contract (size, channels, mean/std, interpolation, crop) and
the eval transform every command feeds images through.
"""

from .augment import AugConfig, BatchAugment
from .datasets import ImageSet, cache_dir, load_dataset, stratified_split
from .loader import Batch, InMemoryLoader, make_loaders
from .rng import counter_normal, counter_uniform
from .timm_transforms import TimmTransformDataset, load_streaming_dataset, timm_transform

__all__ = [
    "AugConfig", "Batch", "BatchAugment", "ImageSet", "InMemoryLoader", "TimmTransformDataset",
    "cache_dir", "counter_normal", "counter_uniform", "load_dataset", "load_streaming_dataset",
    "make_loaders", "stratified_split", "timm_transform",
]
