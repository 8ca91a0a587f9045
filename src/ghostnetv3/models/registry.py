"""Model names: ours (GhostNetV3 / V2 at registered widths) first, then anything timm knows."""
from __future__ import annotations

import difflib

import torch.nn as nn

from .ghostnet import GhostNet

__all__ = ["create_model", "list_models", "is_ours"]

_WIDTHS = {"050": 0.5, "100": 1.0, "130": 1.3, "160": 1.6}
# V2 is V3 without re-parameterization branches: one conv+BN per site.
_V2 = dict(num_conv_branches=1, scale_branch=False, identity_branch=False)
_REGISTRY: dict[str, dict] = {}
for _tag, _w in _WIDTHS.items():
    _REGISTRY[f"ghostnetv3_{_tag}"] = dict(width=_w)
    _REGISTRY[f"ghostnetv2_{_tag}"] = dict(width=_w, **_V2)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_ours(name: str) -> bool:
    return name in _REGISTRY


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, pretrained: bool = False,
                 checkpoint_path: str | None = None, **kwargs) -> nn.Module:
    """Build `name`: ghostnetv3_050/100/130/160 and ghostnetv2_* are ours (any width via
    `width=`); any other name is built by timm (no downloads: `pretrained` needs internet)."""
    if name in _REGISTRY:
        if pretrained:
            raise ValueError(f"{name}: no built-in weights are shipped; pass checkpoint_path= "
                             "(the public .pth/.pt/.safetensors files load directly)")
        model = GhostNet(num_classes=num_classes, in_chans=in_chans, **{**_REGISTRY[name], **kwargs})
        model.default_cfg = {"architecture": name, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    else:
        import timm
        if not timm.is_model(name):
            known = list_models()
            near = difflib.get_close_matches(name, known + timm.list_models(), n=3)
            raise ValueError(f"unknown model '{name}'" + (f" (did you mean {', '.join(near)}?)" if near else "")
                             + f"; ours: {', '.join(known)}; or any name from timm.list_models()")
        for ours_only in ("num_conv_branches", "scale_branch", "identity_branch", "width", "stem_stride"):
            if kwargs.pop(ours_only, None) not in (None, 1.0, 1) and ours_only != "width":
                raise ValueError(f"{ours_only} applies to GhostNetV3 models; for '{name}' use repify")
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if checkpoint_path:
        from .checkpoint import load_checkpoint
        load_checkpoint(model, checkpoint_path)
    return model
