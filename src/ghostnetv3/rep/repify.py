"""`repify`: give any compact CNN the GhostNetV3 re-parameterization branches.

Placement follows the paper: a depthwise k×k conv gets `num_conv_branches` k×k branches, a 1×1
scale branch and an identity BN branch where shapes allow; a 1×1 conv gets 1×1 branches and an
identity branch where shapes allow.  Other convs (dense k×k stems, grouped convs) stay as they are.

A conv+BN site is a `nn.Conv2d` followed, in its parent's registration order, by a BatchNorm2d
over its outputs (what nn.Sequential blocks, torchvision and timm blocks all do).  The site's
trained conv and BN become branch 0; the new branches start with BN γ=β=0, so the model computes
exactly what it computed before, in eval and in train mode, and learns the branches from there.
`reparameterize` then writes each site back in the original layout (a bias-free conv and a BN
holding the fused bias), so the fused weights load into the unmodified model class.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn as nn

from .conv import REP_INITS, RepConv2d
from .fold import bn_tail

__all__ = ["repify"]


def _site_kind(conv: nn.Module) -> str | None:
    if type(conv) is not nn.Conv2d or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return None
    if isinstance(conv.padding, str):
        return None
    if conv.kernel_size == (1, 1) and conv.groups == 1 and conv.stride == (1, 1) and conv.padding == (0, 0):
        return "pointwise"
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if depthwise and conv.kernel_size != (1, 1):
        return "depthwise"
    return None


def _is_bn_for(bn: nn.Module, conv: nn.Conv2d) -> bool:
    return (isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
            and bn.affine and bn.track_running_stats)


@torch.no_grad()
def _convert(conv: nn.Conv2d, bn: nn.BatchNorm2d, num_conv_branches: int, scale_branch: bool,
             identity_branch: bool) -> RepConv2d:
    rep = RepConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=conv.groups, num_conv_branches=num_conv_branches, scale_branch=scale_branch,
                    identity_branch=identity_branch, eps=bn.eps, momentum=bn.momentum,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    cout = conv.out_channels
    rep.weight[:cout].copy_(conv.weight)                         # branch 0 = the trained site
    rep.bn_weight.zero_(), rep.bn_bias.zero_()                   # new branches start silent
    rep.bn_weight[0].copy_(bn.weight), rep.bn_bias[0].copy_(bn.bias)
    mean = bn.running_mean - (conv.bias if conv.bias is not None else 0.0)  # absorb a conv bias
    rep.bn_running_mean[0].copy_(mean), rep.bn_running_var[0].copy_(bn.running_var)
    rep.num_batches_tracked.copy_(bn.num_batches_tracked)
    for prefix in rep.bn_prefixes()[1:]:
        getattr(rep, f"{prefix}_weight").zero_()
    rep.repify_origin = {"bn": copy.deepcopy(bn), "conv_bias": conv.bias is not None}
    return rep


@torch.no_grad()
def _restart_branch_bns(rep: RepConv2d, rep_init: str) -> None:
    """Every branch BN as a fresh RepConv2d's (running statistics and γ, β); the kernels stay."""
    rep.rep_init = rep_init
    gamma = 1.0 if rep_init == "reference" else 1.0 / math.sqrt(rep.num_branches)
    for prefix in rep.bn_prefixes():
        mean, var, weight, bias = rep._bn(prefix)
        mean.zero_(), var.fill_(1.0), weight.fill_(gamma), bias.zero_()
    rep.num_batches_tracked.zero_()


def restore_layout(rep: RepConv2d) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A repified site fused back into its original layout: conv (no BN folding) + BN = fused."""
    kernel, bias = rep.get_kernel_bias()
    origin = rep.repify_origin
    conv = nn.Conv2d(rep.in_channels, rep.out_channels, rep.kernel_size, rep.stride, rep.padding,
                     groups=rep.groups, bias=origin["conv_bias"], device=kernel.device, dtype=kernel.dtype)
    bn = copy.deepcopy(origin["bn"])
    with torch.no_grad():
        conv.weight.copy_(kernel)
        if conv.bias is not None:
            conv.bias.zero_()
        # BN(y) = (y − 0)/√((1−ε)+ε)·1 + bias = y + bias, exactly
        bn.weight.fill_(1.0), bn.bias.copy_(bias)
        bn.running_mean.zero_(), bn.running_var.fill_(1.0 - bn.eps)
    return conv.eval(), bn.eval()


def repify(model: nn.Module, num_conv_branches: int = 3, scale_branch: bool = True,
           identity_branch: bool = True, inplace: bool = False, rep_init: str = "preserve") -> nn.Module:
    """Convert the conv+BN sites of `model` into `RepConv2d` (see the module docstring).

    `rep_init`: "preserve" (default) keeps the model's function (branch 0 is the trained site, the
    new branches start silent); "reference" or "scaled" start every branch BN as `RepConv2d` does
    (γ = 1 or 1/√n; for training from scratch — the model's function changes)."""
    if rep_init not in ("preserve",) + REP_INITS:
        raise ValueError(f"rep_init must be one of preserve, {', '.join(REP_INITS)}, got {rep_init!r}")
    if num_conv_branches < 1:
        raise ValueError(f"num_conv_branches must be >= 1, got {num_conv_branches}")
    if not inplace:
        model = copy.deepcopy(model)
    converted = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (cname, conv), (bname, bn) in zip(children, children[1:]):
            if _site_kind(conv) is None or not _is_bn_for(bn, conv):
                continue
            rep = _convert(conv, bn, num_conv_branches, scale_branch, identity_branch)
            if rep_init != "preserve":
                _restart_branch_bns(rep, rep_init)
            rep.repify_origin["bn_name"] = bname
            rep.train(conv.training)
            setattr(parent, cname, rep)
            setattr(parent, bname, bn_tail(bn))
            converted += 1
    if not converted:
        warnings.warn(f"repify: {type(model).__name__} has no depthwise or 1×1 conv followed by a "
                      "BatchNorm; returned unchanged", stacklevel=2)
    return model
