"""A GhostNetV3 backbone (train form with branches) inside torchvision's FCOS.

The backbone is `create_model(..., features_only=True)` at strides 8/16/32, an FPN on top
(torchvision's), and torchvision's FCOS head, losses and post-processing. Fusing the detector
with `ghostnetv3.reparameterize` fuses the backbone's branches and leaves the rest untouched.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork

from ghostnetv3.models import create_model, is_ours, load_checkpoint

OUT_INDICES = (2, 3, 4)  # feature_info entries at strides 8, 16, 32 (stem stride 2)
FPN_CHANNELS = 64        # small on purpose: the bundled set is 96 px gray canvases on a CPU
HEAD_CONVS = 2           # torchvision's default is 4


class GhostNetFPN(nn.Module):
    """Multi-scale GhostNet features -> FPN maps, the `backbone` interface torchvision's detectors
    expect (an `out_channels` attribute and an OrderedDict of maps)."""

    def __init__(self, body: nn.Module, out_channels: int = FPN_CHANNELS):
        super().__init__()
        self.body = body
        in_chs = [body.feature_info[i]["num_chs"] for i in body.out_indices]
        self.fpn = FeaturePyramidNetwork(in_chs, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_detector(model_name: str, num_classes: int, in_chans: int, *, image_size: int,
                   width: Optional[float] = None, num_conv_branches: Optional[int] = None,
                   scale_branch: Optional[bool] = None, identity_branch: Optional[bool] = None,
                   init_checkpoint: Optional[str] = None, mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None) -> nn.Module:
    """FCOS with a GhostNet backbone for `num_classes` object classes (labels 1..num_classes)."""
    if not is_ours(model_name):  # ghostnetv3_100 or timm's gnv3_100
        raise ValueError(f"detection backbones are ghostnetv3_* / ghostnetv2_* models, not '{model_name}'")
    knobs = {"width": width, "num_conv_branches": num_conv_branches, "scale_branch": scale_branch,
             "identity_branch": identity_branch}
    body = create_model(model_name, num_classes=0, in_chans=in_chans, features_only=True,
                        out_indices=OUT_INDICES, **{k: v for k, v in knobs.items() if v is not None})
    if init_checkpoint:  # a classification run's weights; its classifier is not used here
        load_checkpoint(body, init_checkpoint, use_ema=True, reset_head=True, strict=False)
    backbone = GhostNetFPN(body)
    strides = [body.feature_info[i]["reduction"] for i in OUT_INDICES]
    # FCOS places one anchor point per location; its size only scales the box regression targets
    anchors = AnchorGenerator(sizes=tuple((s,) for s in strides), aspect_ratios=((1.0,),) * len(strides))
    head = FCOSHead(backbone.out_channels, 1, num_classes + 1, num_convs=HEAD_CONVS)
    mean = list(mean) if mean else [0.5] * in_chans
    std = list(std) if std else [0.25] * in_chans
    return FCOS(backbone, num_classes + 1, min_size=image_size, max_size=image_size,
                image_mean=mean, image_std=std, anchor_generator=anchors, head=head,
                score_thresh=0.05, nms_thresh=0.6, detections_per_img=100, topk_candidates=1000)


class DenseOutputs(nn.Module):
    """The detector up to its head, as one tensor [B, locations, classes + 4 + 1] (class logits,
    box regression, centerness): what an exported graph computes. Decoding and NMS are
    torchvision's `FCOS.postprocess_detections`, outside the graph."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head
        mean = torch.tensor(detector.transform.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(detector.transform.image_std).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone((x - self.mean) / self.std).values())
        out = self.head(feats)
        return torch.cat([out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]], dim=-1)
