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
- `output_stride` (timm's name; 32 = the paper's layout): the total downsampling.  Below
  `16 × stem_stride` the last downsampling stages keep their stride-2 modules but run them at
  stride 1 (no dilation, which is slow for depthwise convs on CPU), so every parameter keeps its
  name and shape: the official checkpoints load into any layout and fusion stays exact.
  `auto_layout(img_size)` is the rule the engine uses when the user does not say.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..rep import RepConv2d, reparameterize
from ..rep.crop import CropConv2d

__all__ = ["GhostNet", "create_ghostnet", "GhostModule", "GhostBottleneck", "BLOCK_CFGS", "make_divisible",
           "auto_layout", "auto_output_stride", "stage_strides", "MIN_FINAL_MAP", "pretrained_cfg_for"]

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


# The layout rule (the engine's default when the user sets neither stride): keep the paper's layout
# (stem stride 2, output stride 32) while the last stage still sees maps of at least MIN_FINAL_MAP
# pixels a side; below that, give up downsampling where it costs the most detail first — the stem's
# stride (the first stages then see the full image), then the last stages' — until it does.  On
# Fashion-MNIST at 32 px the stem stride was worth far more than the late strides at equal steps
# (docs/layouts.md: 85.47% after 468 steps with stem 1 / output stride 16 vs 79.12% with stem 2 /
# output stride 8).
MIN_FINAL_MAP = 2
OUTPUT_STRIDES = (2, 4, 8, 16, 32)


def auto_layout(img_size: int, stem_stride: int | None = None) -> tuple[int, int]:
    """(stem_stride, output_stride) for square inputs of `img_size` px: the first of (2, 32), (1, 16),
    (1, 8), (1, 4), (1, 2) whose last maps, ceil(img_size / output_stride), are >= MIN_FINAL_MAP; with
    `stem_stride` given, the largest output stride reachable with it that passes."""
    options = [(2, 32), (1, 16), (1, 8), (1, 4), (1, 2)]
    if stem_stride is not None:
        options = [(stem_stride, stem_stride * 2 ** k) for k in range(4, -1, -1)]
    for stem, out in options:
        if math.ceil(img_size / out) >= MIN_FINAL_MAP:
            return stem, out
    return options[-1]


def auto_output_stride(img_size: int, stem_stride: int = 2) -> int:
    """The output stride `auto_layout` picks for a given stem stride."""
    return auto_layout(img_size, stem_stride)[1]


def stage_strides(output_stride: int, stem_stride: int = 2, num_downsampling: int = 4) -> list[int]:
    """Stride of each downsampling stage for a total `output_stride`: the first ones keep 2, the
    last ones run at 1."""
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    allowed = [stem_stride * 2 ** k for k in range(num_downsampling + 1)]
    if output_stride not in allowed:
        raise ValueError(f"output_stride={output_stride} is not reachable with stem_stride={stem_stride}; "
                         f"use one of {', '.join(map(str, allowed))}")
    kept = allowed.index(output_stride)
    return [2] * kept + [1] * (num_downsampling - kept)


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
    rep_init: str = "scaled"             # branch BN γ: 1/√n (scaled) or 1 (reference); see RepConv2d

    def conv(self, cin, cout, k, stride=1, groups=1, identity: bool = True, **kw) -> RepConv2d:
        return RepConv2d(cin, cout, k, stride, groups=groups, num_conv_branches=self.num_conv_branches,
                         scale_branch=self.scale_branch, identity_branch=self.identity_branch and identity,
                         linear_branches=self.linear_branches, rep_init=self.rep_init, **kw)


class ConvBnAct(nn.Module):
    """Plain conv + BN + ReLU (stem-like layers that are never re-parameterized)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, act: bool = True):
        super().__init__()
        self.conv = CropConv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn1(self.conv(x)))


class DFCAttention(nn.Module):
    """Decoupled fully-connected attention (GhostNetV2) on the ghost module's input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.short_conv = nn.Sequential(
            CropConv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
            CropConv2d(cout, cout, (1, 5), 1, (0, 2), groups=cout, bias=False), nn.BatchNorm2d(cout),
            CropConv2d(cout, cout, (5, 1), 1, (2, 0), groups=cout, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor, size: List[int]) -> torch.Tensor:  # List: TorchScript has no Sequence
        # The reference pools 2×2 unconditionally and breaks on 1-pixel maps; a window that fits
        # gives the same result wherever the reference works.
        kernel = (min(2, int(x.shape[-2])), min(2, int(x.shape[-1])))  # ints: ONNX export needs constants
        gate = torch.sigmoid(self.short_conv(F.avg_pool2d(x, kernel, kernel)))
        return F.interpolate(gate, size=list(size), mode="nearest")


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
        self.conv_reduce = CropConv2d(chs, rd, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = CropConv2d(rd, chs, 1, bias=True)

    def forward(self, x):
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(s)


class GhostBottleneck(nn.Module):
    """`stride` is the block table's; `run_stride` (default: `stride`) the one it runs at.  A
    downsampling block run at stride 1 (a smaller output stride) keeps its depthwise conv and its
    shortcut convs, so its parameters are the same as in the paper's layout."""

    def __init__(self, cin: int, mid: int, cout: int, k: int = 3, stride: int = 1, se_ratio: float = 0.0,
                 dfc: bool = False, branches: BranchConfig = BranchConfig(), run_stride: int | None = None):
        super().__init__()
        run_stride = stride if run_stride is None else run_stride
        self.stride = run_stride
        self.ghost1 = GhostModule(cin, mid, act=True, dfc=dfc, branches=branches)
        # no identity branch at a downsampling site, whatever it runs at (as in the paper's layout)
        self.dw = branches.conv(mid, mid, k, run_stride, groups=mid, identity=False) if stride > 1 else None
        self.se = SqueezeExcite(mid, se_ratio) if se_ratio else None
        self.ghost2 = GhostModule(mid, cout, act=False, dfc=False, branches=branches)
        if cin == cout and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                CropConv2d(cin, cin, k, run_stride, (k - 1) // 2, groups=cin, bias=False), nn.BatchNorm2d(cin),
                CropConv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout))

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
    `num_classes`, `num_features`, `feature_info`, `forward_intermediates` /
    `prune_intermediate_layers`, `set_grad_checkpointing`, `group_matcher`, `pretrained_cfg`.
    `features_only=True` returns this model pruned after the last tap, its forward giving the maps
    at `out_indices` and its `feature_info` a timm `FeatureInfo` (strides 2…32 with the default stem).

    Feature taps (`feature_info`): the stem after its ReLU (`act1`), the ends of the stride-4/8/16
    stages, and at stride 32 the output of the final 1×1 ConvBnAct (960·w channels).  timm's own
    ghostnet taps the stem conv before its BN and stride 32 before the 1×1 conv (160·w channels)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0,
                 num_conv_branches: int = 3, scale_branch: bool = True, identity_branch: bool = True,
                 linear_branches: bool = False, drop_rate: float = 0.2, stem_stride: int = 2, cfgs=None,
                 features_only: bool = False, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4),
                 output_stride: int | None = None, global_pool: str = "avg", drop_path_rate: float = 0.0,
                 rep_init: str = "scaled"):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.cfgs = cfgs or BLOCK_CFGS
        num_down = sum(1 for cfg in self.cfgs if any(b[4] > 1 for b in cfg))
        self.output_stride = int(output_stride or stem_stride * 2 ** num_down)
        run_strides = iter(stage_strides(self.output_stride, stem_stride, num_down))
        self.stem_stride = stem_stride
        if global_pool != "avg":
            raise ValueError(f"global_pool={global_pool!r}: the GhostNet head pools by average only; use 'avg'")
        if drop_path_rate:
            raise ValueError(f"drop_path_rate={drop_path_rate}: GhostNet has no stochastic depth; use drop_rate")
        branches = BranchConfig(num_conv_branches, scale_branch, identity_branch, linear_branches, rep_init)
        self.num_classes, self.in_chans, self.width = num_classes, in_chans, width
        self.drop_rate = drop_rate
        self.branch_config = branches
        self.min_input_size = 32
        self.grad_checkpointing = False

        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = CropConv2d(in_chans, stem_chs, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=stem_chs, reduction=stem_stride, module="act1")]

        stages, prev, layer_idx, reduction = [], stem_chs, 0, stem_stride
        for cfg in self.cfgs:
            layers = []
            for k, exp, c, se, s in cfg:
                out, mid = make_divisible(c * width, 4), make_divisible(exp * width, 4)
                run = next(run_strides) if s > 1 else 1
                layers.append(GhostBottleneck(prev, mid, out, k, s, se, dfc=layer_idx > 1, branches=branches,
                                              run_stride=run))
                prev = out
                layer_idx += 1
                reduction *= run
            if s > 1:  # a tap at the end of each downsampling stage (its true reduction)
                self.feature_info.append(dict(num_chs=prev, reduction=reduction, module=f"blocks.{len(stages)}"))
            stages.append(nn.Sequential(*layers))
        out = make_divisible(self.cfgs[-1][-1][1] * width, 4)
        stages.append(nn.Sequential(ConvBnAct(prev, out, 1)))
        self.blocks = nn.Sequential(*stages)
        # feature_info[i] is taken at the end of stage stage_ends[i] (-1: the stem); the last one
        # after the final 1×1 conv.
        self.stage_ends = [-1] + [int(f["module"].split(".")[-1]) for f in self.feature_info[1:]]
        self.stage_ends[-1] = len(stages) - 1
        self.feature_info[-1] = dict(num_chs=out, reduction=reduction, module=f"blocks.{len(stages) - 1}")
        self.num_features = out
        self.head_hidden_size = 1280
        self.conv_head = CropConv2d(out, self.head_hidden_size, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        self.features_only = bool(features_only)
        self.out_indices = _take_indices(len(self.feature_info), out_indices)[0]
        if self.features_only:  # as timm's FeatureGetterNet: drop what no tap needs; names stay
            from timm.models import FeatureInfo  # lazy: `import ghostnetv3` does not load timm

            self.out_indices = self.prune_intermediate_layers(self.out_indices)
            self.feature_info = FeatureInfo(self.feature_info, self.out_indices)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # -------------------------------------------------------------- timm model surface
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (`timm.optim`), as timm's ghostnet names them."""
        return dict(stem=r"^conv_stem|bn1",
                    blocks=[(r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None),
                            (r"conv_head", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward instead of storing its activations.  BatchNorm
        running statistics are then updated twice per step (the recompute runs the forward again),
        as with every checkpointed BatchNorm model in PyTorch/timm."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg", ""):
            raise ValueError(f"global_pool={global_pool!r}: the GhostNet head pools by average only")
        self.num_classes = num_classes
        dev = next(self.parameters()).device
        self.classifier = (nn.Linear(self.head_hidden_size, num_classes, device=dev) if num_classes > 0
                           else nn.Identity())
        if num_classes > 0:
            nn.init.normal_(self.classifier.weight, 0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    @torch.jit.ignore
    def convert_to_deploy(self) -> None:
        """In place: fuse every branch (timm's name; `ghostnetv3.reparameterize` returns a copy)."""
        reparameterize(self, inplace=True)

    def __prepare_scriptable__(self):
        if self.features_only:  # its forward returns a list; the classifier's a tensor
            raise RuntimeError("a features_only GhostNet cannot be scripted; use torch.export.export or "
                               "torch.jit.trace (or script the classification model)")
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        """Clear errors for wrong shapes in eager mode; a no-op while FX / torch.export / jit trace."""
        if _tracing(x):
            return
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input [N, {self.in_chans}, H, W], got {list(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f"input {x.shape[-2]}×{x.shape[-1]} is smaller than the supported "
                             f"{self.min_input_size}×{self.min_input_size}; resize or pad the images")

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x)
        return self.act1(self.bn1(self.conv_stem(x)))

    @torch.jit.ignore
    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            for stage in self.blocks:
                x = self._run_stage(stage, x)
            return x
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act2(self.conv_head(x.mean((2, 3), keepdim=True))).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's convention: `(final_features, [maps at indices])`, or only the list with
        `intermediates_only=True`.  `indices`: None = every `feature_info` entry, an int n = the
        last n, a sequence = those (negative from the end).  `norm` has no effect (no final norm)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: GhostNet gives NCHW maps only")
        take, max_index = _take_indices(len(self.stage_ends), indices)
        ends = {self.stage_ends[i]: n for n, i in enumerate(take)}
        last = self.stage_ends[max_index] if stop_early else len(self.blocks) - 1
        maps: list = [None] * len(take)
        x = self._stem(x)
        if -1 in ends:
            maps[ends[-1]] = x
        for i, stage in enumerate(self.blocks):
            if i > last:
                break
            x = self._run_stage(stage, x)
            if i in ends:
                maps[ends[i]] = x
        for i, e in enumerate(take):  # a tap listed twice
            if maps[i] is None:
                maps[i] = maps[take.index(e)]
        return maps if intermediates_only else (x, maps)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last tap in `indices` and, with `prune_head`, the head (timm's
        convention; parameter names of what is kept do not change).  Returns the absolute indices."""
        take, max_index = _take_indices(len(self.stage_ends), indices)
        last = self.stage_ends[max_index]
        if not (prune_head or last < self.stage_ends[-1]):
            return take
        self.blocks = self.blocks[: last + 1]
        self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        self.conv_head, self.act2 = nn.Identity(), nn.Identity()
        self.reset_classifier(0)
        return take

    def forward(self, x: torch.Tensor):
        if self.features_only and not torch.jit.is_scripting():
            return self.forward_intermediates(x, self.out_indices, intermediates_only=True)
        return self.forward_head(self.forward_features(x))


def _tracing(x) -> bool:
    """True while torch.fx, torch.export / dynamo export or torch.jit.trace records a graph."""
    return (isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_exporting())


def _take_indices(num: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's `feature_take_indices`: None = all, int n = the last n, a sequence = those (negative
    from the end); returns the absolute indices and their maximum."""
    if indices is None:
        indices = num
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f"last-n indices={indices} is out of range (1 to {num})")
        take = list(range(num - indices, num))
    else:
        take = []
        for i in indices:
            if not -num <= int(i) < num:
                raise ValueError(f"feature index {i} is out of range (0 to {num - 1}, or negative from the end)")
            take.append(int(i) % num)
    if not take:
        raise ValueError("indices is empty; give at least one feature index")
    return take, max(take)


def pretrained_cfg_for(variant: str, in_chans: int = 3, **overrides) -> dict:
    """timm's pretrained_cfg for an untrained GhostNet (timm's ghostnet defaults: ImageNet 224 px,
    crop 0.875, bicubic); a gray (1-channel) model gets the RGB statistics averaged, as our data
    pipeline normalizes gray images."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if in_chans != 3:
        mean, std = (sum(mean) / 3,) * in_chans, (sum(std) / 3,) * in_chans
    cfg = dict(url="", architecture=variant, tag=None, num_classes=1000, input_size=(in_chans, 224, 224),
               min_input_size=(in_chans, 32, 32), pool_size=(7, 7), crop_pct=0.875, crop_mode="center",
               interpolation="bicubic", mean=mean, std=std, first_conv="conv_stem", classifier="classifier",
               license="apache-2.0")
    cfg.update(overrides)
    return cfg


def create_ghostnet(variant: str, pretrained: bool = False, *, features_only: bool = False,
                    feature_cls: str | None = None, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4),
                    pretrained_cfg=None, pretrained_cfg_overlay: dict | None = None, cache_dir=None,
                    device=None, dtype=None, **kwargs) -> nn.Module:
    """The one builder (our `create_model` and timm's registry both use it).

    `features_only=True` gives this model pruned after the last tap (parameter names unchanged, so a
    classification checkpoint loads into it); `feature_cls='list'|'dict'|'hook'|'fx'|'getter'` wraps
    it in timm's extractor of that name instead, exactly as timm's build_model_with_cfg does."""
    if pretrained:
        raise ValueError(f"{variant}: no built-in weights are shipped; pass checkpoint_path= "
                         "(the public .pth/.pt/.safetensors files load directly)")
    cfg = pretrained_cfg_for(variant, kwargs.get("in_chans", 3), num_classes=kwargs.get("num_classes", 1000))
    if isinstance(pretrained_cfg, dict):
        cfg.update(pretrained_cfg)
    cfg.update(pretrained_cfg_overlay or {})
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if features_only and feature_cls is not None:
            from timm.models import build_model_with_cfg  # lazy: timm loads only for its wrappers

            model = build_model_with_cfg(GhostNet, variant, False, pretrained_cfg=cfg, features_only=True,
                                         feature_cls=feature_cls, out_indices=out_indices,
                                         feature_cfg=dict(flatten_sequential=True), **kwargs)
        else:
            model = GhostNet(features_only=features_only, out_indices=out_indices, **kwargs)
            if features_only:  # what timm's pretrained_cfg_for_features keeps
                cfg = {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier", "global_pool")}
            model.pretrained_cfg = cfg
            model.default_cfg = model.pretrained_cfg  # timm's alias
    if dtype is not None:
        model.to(dtype=dtype)
    return model
