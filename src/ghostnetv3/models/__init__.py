"""Model registry. (Being written: GhostNetV3/V2 of our own; other names come from timm.)"""
from __future__ import annotations

import timm
import torch.nn as nn


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, pretrained: bool = False,
                 **kwargs) -> nn.Module:
    kwargs.pop("num_conv_branches", None)
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
