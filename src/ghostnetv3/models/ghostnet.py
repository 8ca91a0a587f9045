"""GhostNetV3 (and GhostNetV2, the same network without branches).

Paper: "GhostNetV3: Exploring the Training Strategies for Compact Models", Liu et al., 2024
(arXiv 2404.11202).  Original code: huawei-noah/Efficient-AI-Backbones, ghostnetv3_pytorch;
timm port: timm/models/ghostnet.py.  Block table, widths and branch placement follow the
reference code (SPEC §2); every re-parameterized conv is a `RepConv2d`, so V2 is simply V3 with
one conv branch and no scale/identity branches.

Differences from the reference, on purpose:
- works at any input ≥32×32 (the DFC attention pools with a window that fits the map; the
  reference fails when a stage's map is 1 pixel wide) and at batch size 1;
- `stem_stride=1` (a knob for tiny images such as 28–32 px Fashion-MNIST): the network then
  downsamples 16× instead of 32×, so the last stage is not 1×1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..rep import RepConv2d

__all__ = ["GhostNet", "GhostModule", "GhostBottleneck", "BLOCK_CFGS", "make_divisible"]

# (kernel, expansion, out, SE ratio, stride) per bottleneck; one list per stage (as in the reference).
BLOCK_CFGS = [
    [[3, 16, 16, 0, 1]],
    [[3, 48, 24, 0, 2]],
    [[3, 72, 24, 0, 1]],
    [[5, 72, 40, 0.25, 2]],
    [[5, 120, 40, 0.25, 1]],
    [[3, 240, 80, 0, 2]],
    [[3, 200, 80, 0, 1], [3, 184, 80, 0, 1], [3, 184, 80, 0, 1], [3, 480, 112, 0.25, 1],
     [3, 672, 112, 0.25, 1]],
    [[5, 672, 160, 0.25, 2]],
    [[5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1], [5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1]],
]


def make_divisible(v: float, divisor: int = 4, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # do not round down by more than 10%
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class BranchConfig:
    """What each re-parameterized conv carries during training (the paper's knobs)."""
    num_conv_branches: int = 3
    scale_branch: bool = True
    identity_branch: bool = True
    linear_branches: bool = False

    def conv(self, cin, cout, k, stride=1, groups=1, **kw) -> RepConv2d:
        return RepConv2d(cin, cout, k, stride, groups=groups, num_conv_branches=self.num_conv_branches,
                         scale_branch=self.scale_branch, identity_branch=self.identity_branch,
                         linear_branches=self.linear_branches, **kw)


class ConvBnAct(nn.Module):
    """Plain conv + BN + ReLU (stem-like layers that are never re-parameterized)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn1(self.conv(x)))


class DFCAttention(nn.Module):
    """Decoupled fully-connected attention (GhostNetV2) on the ghost module's input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.short_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
            nn.Conv2d(cout, cout, (1, 5), 1, (0, 2), groups=cout, bias=False), nn.BatchNorm2d(cout),
            nn.Conv2d(cout, cout, (5, 1), 1, (2, 0), groups=cout, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        # The reference pools 2×2 unconditionally and breaks on 1-pixel maps; a window that fits
        # gives the same result wherever the reference works.
        kernel = (min(2, int(x.shape[-2])), min(2, int(x.shape[-1])))  # ints: ONNX export needs constants
        gate = torch.sigmoid(self.short_conv(F.avg_pool2d(x, kernel, kernel)))
        return F.interpolate(gate, size=tuple(size), mode="nearest")


class GhostModule(nn.Module):
    """Primary 1×1 conv → half the channels; cheap depthwise conv → the other half."""

    def __init__(self, cin: int, cout: int, act: bool = True, dfc: bool = False, dw_size: int = 3,
                 branches: BranchConfig = BranchConfig()):
        super().__init__()
        self.out_chs = cout
        init_chs = math.ceil(cout / 2)
        self.primary = branches.conv(cin, init_chs, 1)
        self.primary_act = nn.ReLU(inplace=True) if act else nn.Identity()
        self.cheap = branches.conv(init_chs, init_chs, dw_size, groups=init_chs)
        self.cheap_act = nn.ReLU(inplace=True) if act else nn.Identity()
        self.dfc = DFCAttention(cin, cout) if dfc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_act(self.primary(x))
        x2 = self.cheap_act(self.cheap(x1))
        out = torch.cat([x1, x2], dim=1)[:, : self.out_chs]
        if self.dfc is not None:
            out = out * self.dfc(x, out.shape[-2:])
        return out


class SqueezeExcite(nn.Module):
    """SE with a hard-sigmoid gate (as in GhostNet)."""

    def __init__(self, chs: int, rd_ratio: float):
        super().__init__()
        rd = make_divisible(chs * rd_ratio, 4)
        self.conv_reduce = nn.Conv2d(chs, rd, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd, chs, 1, bias=True)

    def forward(self, x):
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(s)


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int = 3, stride: int = 1, se_ratio: float = 0.0,
                 dfc: bool = False, branches: BranchConfig = BranchConfig()):
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(cin, mid, act=True, dfc=dfc, branches=branches)
        self.dw = branches.conv(mid, mid, k, stride, groups=mid) if stride > 1 else None
        self.se = SqueezeExcite(mid, se_ratio) if se_ratio else None
        self.ghost2 = GhostModule(mid, cout, act=False, dfc=False, branches=branches)
        if cin == cout and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cin, k, stride, (k - 1) // 2, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost1(x)
        if self.dw is not None:
            y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)


class GhostNet(nn.Module):
    """GhostNetV3 (train form with branches; `ghostnetv3.reparameterize` gives the deploy form).

    The timm model surface: `forward_features`, `forward_head`, `reset_classifier`,
    `num_classes`, `num_features`, `feature_info`, and `forward_intermediates` /
    `features_only=True` for multi-scale maps (strides 2…32 with the default stem)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0,
                 num_conv_branches: int = 3, scale_branch: bool = True, identity_branch: bool = True,
                 linear_branches: bool = False, drop_rate: float = 0.2, stem_stride: int = 2, cfgs=None, features_only: bool = False,
                 out_indices: Sequence[int] = (1, 2, 3, 4)):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        branches = BranchConfig(num_conv_branches, scale_branch, identity_branch, linear_branches)
        self.num_classes, self.in_chans, self.width = num_classes, in_chans, width
        self.drop_rate = drop_rate
        self.branch_config = branches
        self.cfgs = cfgs or BLOCK_CFGS
        self.min_input_size = 32

        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=stem_chs, reduction=stem_stride, module="act1")]

        stages, prev, layer_idx, reduction = [], stem_chs, 0, stem_stride
        for cfg in self.cfgs:
            layers = []
            for k, exp, c, se, s in cfg:
                out, mid = make_divisible(c * width, 4), make_divisible(exp * width, 4)
                layers.append(GhostBottleneck(prev, mid, out, k, s, se, dfc=layer_idx > 1, branches=branches))
                prev = out
                layer_idx += 1
            if s > 1:
                reduction *= 2
                self.feature_info.append(dict(num_chs=prev, reduction=reduction, module=f"blocks.{len(stages)}"))
            stages.append(nn.Sequential(*layers))
        out = make_divisible(self.cfgs[-1][-1][1] * width, 4)
        stages.append(nn.Sequential(ConvBnAct(prev, out, 1)))
        self.blocks = nn.Sequential(*stages)
        # feature_info[i] is taken at the end of stage stage_ends[i]; the last one after the 1×1 conv.
        self.stage_ends = [-1] + [int(f["module"].split(".")[-1]) for f in self.feature_info[1:]]
        self.stage_ends[-1] = len(stages) - 1
        self.feature_info[-1] = dict(num_chs=out, reduction=reduction, module=f"blocks.{len(stages) - 1}")
        self.num_features = out
        self.head_hidden_size = 1280
        self.conv_head = nn.Conv2d(out, self.head_hidden_size, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # -------------------------------------------------------------- timm-like surface
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        dev = self.conv_head.weight.device
        self.classifier = nn.Linear(self.head_hidden_size, num_classes, device=dev) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.normal_(self.classifier.weight, 0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input [N, {self.in_chans}, H, W], got {list(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f"input {x.shape[-2]}×{x.shape[-1]} is smaller than the supported "
                             f"{self.min_input_size}×{self.min_input_size}; resize or pad the images")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act2(self.conv_head(x.mean((2, 3), keepdim=True))).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Feature maps at the ends of the stages listed in `feature_info` (default: all)."""
        self._check_input(x)
        indices = list(range(len(self.feature_info))) if indices is None else list(indices)
        wanted = {self.stage_ends[i]: i for i in indices}
        feats = {}
        x = self.act1(self.bn1(self.conv_stem(x)))
        if -1 in wanted:
            feats[wanted[-1]] = x
        last = max(wanted)
        for i, stage in enumerate(self.blocks):
            if i > last:
                break
            x = stage(x)
            if i in wanted:
                feats[wanted[i]] = x
        return [feats[i] for i in indices]

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices)
        return self.forward_head(self.forward_features(x))
