"""Bring any model into deploy form: eval mode, branches fused, checked against the original.

Users report "outputs differ after fusion" when a model is fused in train mode (BatchNorm
folds its running statistics, which train mode does not use), so every deploy path goes
through `to_deploy_form`, which switches to eval mode first and says so.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..rep import reparameterize, verify_fusion

__all__ = ["to_deploy_form", "num_params"]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_deploy_form(model: nn.Module, sample: Optional[torch.Tensor] = None,
                   log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """(fused eval-mode copy, info). The input model is not modified.

    info: was_training, was_train_form, params_before, params_after, fusion_max_diff (on
    `sample`, when given). Fusion is detected by the parameter count dropping, which holds for
    every branch type (each branch carries its own kernel and BatchNorm).
    """
    was_training = model.training
    if was_training:
        log("model was in train mode: switched to eval mode before fusing "
            "(BatchNorm folds its running statistics)")
    reference = model.eval() if not was_training else _eval_copy(model)
    before = num_params(reference)
    fused = reparameterize(reference, inplace=False).eval()
    after = num_params(fused)
    info = {"was_training": was_training, "was_train_form": after < before,
            "params_before": before, "params_after": after, "fusion_max_diff": None}
    if after < before:
        log(f"model was in train form: fused re-parameterization branches "
            f"({before / 1e6:.3f}M -> {after / 1e6:.3f}M params)")
    if sample is not None:
        info["fusion_max_diff"] = float(verify_fusion(reference, fused, sample))
        if after < before:
            log(f"fusion check: max |train form - fused| = {info['fusion_max_diff']:.3g}")
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused, info


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()
