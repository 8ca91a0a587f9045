"""Shared helpers: a tiny GhostNetV3 (0.5x, 10 classes) and a run directory shaped like the
ones `ghostnetv3 train` writes, so every deploy test runs in seconds on 2 CPU cores."""
from __future__ import annotations

import torch

MODEL = "ghostnetv3_050"
# 64 px: every stage keeps a map of >= 2 pixels, and 28-px Fashion-MNIST is upscaled like training does
IMG = 64


def tiny_model(in_chans: int = 3, seed: int = 0) -> torch.nn.Module:
    from ghostnetv3.models import create_model
    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=10, in_chans=in_chans)
    # non-trivial BatchNorm statistics, so fusion and export are tested on more than identities
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model
