"""Shared pieces for the distillation tests: a small synthetic dataset, a tiny frozen teacher,
and the augmentation a student would train with (gray 28 px → 3-channel 32 px, RandomResizedCrop)."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn



def make_set(n: int = 96, classes: int = 10, seed: int = 0, name: str = "toy"):
    from ghostnetv3.data import ImageSet
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)], name)


def make_augment(seed: int = 3, **kw):
    from ghostnetv3.data import AugConfig, BatchAugment
    cfg = dict(image_size=32, in_chans=3, crop_mode="rrc", scale=(0.35, 1.0), color_jitter=0.4)
    return BatchAugment(AugConfig(**{**cfg, **kw}), seed=seed)


def make_teacher(classes: int = 10, seed: int = 0, input_size: int = 40):
    """A small BN conv net, frozen, with its own normalization and input size."""
    from ghostnetv3.distill.teachers import Teacher, weights_hash
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))
    with torch.no_grad():  # non-trivial running statistics and a confident head
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        net[-1].weight.mul_(20)
    net.eval().requires_grad_(False)
    return Teacher(net, f"toy{seed}", weights_hash(net), classes, input_size=input_size,
                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).eval()


@pytest.fixture
def toy_set():
    return make_set()


@pytest.fixture
def augment():
    return make_augment()


@pytest.fixture
def teacher():
    return make_teacher()
