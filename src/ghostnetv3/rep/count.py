"""Parameter and multiply-accumulate counts, for the train form and the fused form.

MACs count convolutions and linear layers (as thop/the reference tables do); a `RepConv2d`
counts every conv branch of its train form (k×k branches and the 1×1 scale branch; the identity
branch is a BatchNorm, which the reference tables do not count).  This reproduces SPEC §2 exactly."""
from __future__ import annotations

import torch
import torch.nn as nn

from .conv import RepConv2d

__all__ = ["count_params_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_macs(out: torch.Tensor, cin_per_group: int, kh: int, kw: int) -> int:
    return out[0].numel() * cin_per_group * kh * kw


@torch.no_grad()
def count_params_macs(model: nn.Module, input_size=(3, 224, 224)) -> tuple[int, int]:
    """(parameters, MACs for one image of `input_size` = (C, H, W))."""
    macs = [0]

    def hook(m, inp, out):
        if isinstance(m, RepConv2d):
            cig = m.in_channels // m.groups
            macs[0] += m.num_conv_branches * _conv_macs(out, cig, *m.kernel_size)
            macs[0] += _conv_macs(out, cig, 1, 1) if m.has_scale else 0
        elif isinstance(m, nn.Conv2d):
            macs[0] += _conv_macs(out, m.in_channels // m.groups, *m.kernel_size)
        elif isinstance(m, nn.Linear):
            macs[0] += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (RepConv2d, nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(1, *input_size, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None else torch.float32)
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return count_params(model), macs[0]
