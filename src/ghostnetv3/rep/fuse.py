"""`reparameterize` (any model → its deploy form) and `verify_fusion`."""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from .conv import RepConv2d
from .repify import restore_layout

__all__ = ["reparameterize", "verify_fusion", "has_branches"]


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, RepConv2d):
            origin = getattr(child, "repify_origin", None)
            if origin is None:
                setattr(module, name, child.fuse())
            else:  # a repified site goes back to its original conv + BN layout
                conv, bn = restore_layout(child)
                setattr(module, name, conv)
                setattr(module, origin["bn_name"], bn)
            continue
        fuse_fn = getattr(child, "reparameterize", None) or getattr(child, "switch_to_deploy", None)
        if callable(fuse_fn):  # timm/MobileOne-style modules fuse themselves
            fuse_fn()
        _fuse_children(child)


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every re-parameterizable module of `model` and return it in eval mode.

    Works on our models, on models converted with `repify`, and on any model whose modules expose
    `reparameterize()` or `switch_to_deploy()` (timm's GhostNetV3, MobileOne, RepVGG, ...)."""
    if model.training:
        where = "it was put in eval mode" if inplace else "the fused copy is in eval mode (the model itself is unchanged)"
        warnings.warn("reparameterize: model was in train mode; fusing uses the BatchNorm running "
                      f"statistics, so {where}", stacklevel=2)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if isinstance(model, RepConv2d):
        return model.fuse().eval()
    _fuse_children(model)
    return model.eval()


def has_branches(model: nn.Module) -> bool:
    """True while any RepConv2d (or a self-fusing module) is left."""
    return any(isinstance(m, RepConv2d) or callable(getattr(m, "reparameterize", None))
               or callable(getattr(m, "switch_to_deploy", None)) for m in model.modules())


@torch.no_grad()
def verify_fusion(model: nn.Module, fused: nn.Module, inputs: torch.Tensor) -> float:
    """Max absolute difference between `model` (eval mode, every branch computed as its own
    conv + BatchNorm) and `fused` on `inputs`."""
    modes = (model.training, fused.training)
    reps = [m for m in model.modules() if isinstance(m, RepConv2d)]
    fast = [m.exact_fast_path for m in reps]
    model.eval(), fused.eval()
    try:
        for m in reps:
            m.exact_fast_path = False
        a, b = model(inputs), fused(inputs)
    finally:
        for m, f in zip(reps, fast):
            m.exact_fast_path = f
        model.train(modes[0]), fused.train(modes[1])
    if isinstance(a, (list, tuple)):
        return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))
    return float((a.float() - b.float()).abs().max())
