"""`fold_batchnorm`: the inference form of a plain CNN — every eval-mode BatchNorm that follows a conv
folded into that conv's weights and bias (a teacher runs ~1.5× faster on CPU without its BN passes;
docs/benchmarks.md, "Teacher inference").

A conv+BN site is found as `repify` finds it: an `nn.Conv2d` (or our `CropConv2d`) followed, in its parent's registration
order, by a BatchNorm2d over its outputs. Registration order is not data flow, so `fold_batchnorm`
checks the folded model against the original on a probe input and returns the original unchanged
(with the reason) when they differ.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

from .conv import fold_bn
from .crop import CropConv2d

__all__ = ["bn_tail", "fold_batchnorm"]


def bn_tail(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays in a folded BN's slot: nothing, or the activation of timm's BatchNormAct2d."""
    tail = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    tail = [m for m in tail if not isinstance(m, nn.Identity)]
    return nn.Sequential(*tail) if tail else nn.Identity()


_CONVS = (nn.Conv2d, CropConv2d)  # exactly these: a subclass may transform its weights (timm's StdConv2d)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) in _CONVS and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
            and bn.track_running_stats and bn.running_mean is not None)


@torch.no_grad()
def _fold_sites(model: nn.Module) -> int:
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (cname, conv), (bname, bn) in zip(children, children[1:]):
            if not _foldable(conv, bn) or getattr(parent, bname) is not bn:  # already folded this pass
                continue
            gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
            beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            kernel, bias = fold_bn(conv.weight, bn.running_mean, bn.running_var, gamma, beta, bn.eps)
            if conv.bias is not None:
                bias = bias + conv.bias * gamma / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.copy_(kernel)
            conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=conv.weight.requires_grad)
            setattr(parent, bname, bn_tail(bn))
            folded += 1
    return folded


@torch.no_grad()
def fold_batchnorm(model: nn.Module, probe: torch.Tensor, rtol: float = 1e-4) -> tuple[nn.Module, Optional[str]]:
    """(folded copy of `model` in eval mode, None), or (`model` itself, why not) when it has no conv+BN
    site or the folded copy's outputs on `probe` differ from the original's by more than `rtol` × their
    largest magnitude (a BN registered after a conv that it does not follow)."""
    model.eval()
    folded = copy.deepcopy(model)
    n = _fold_sites(folded)
    if not n:
        return model, "no conv followed by a BatchNorm"
    ref, out = model(probe), folded(probe)
    diff = float((out.float() - ref.float()).abs().max())
    scale = max(float(ref.float().abs().max()), 1.0)
    if not diff <= rtol * scale:
        return model, f"folding {n} conv+BN sites changed the outputs by {diff:.3g} (a BN not after its conv)"
    return folded.eval(), None
