"""The classifier a config asks for (`build_model`), and its fused form (`reparameterize`, `eval_form`).

Training, `eval`, export and the teacher loader all build a run's model here, so a checkpoint always
meets the architecture it was saved from.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ghostnetv3.models import create_model, is_ours, load_checkpoint
from ghostnetv3.rep import has_branches, repify
from ghostnetv3.rep import reparameterize as fuse
from ghostnetv3.rep.count import count_params_macs

from .config import TrainConfig
from .layout import describe_layout, resolve_layout

__all__ = ["build_model", "reparameterize", "eval_form", "layout_line"]


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    model_knobs = {"num_conv_branches": cfg.num_conv_branches, "width": cfg.width, "stem_stride": cfg.stem_stride,
                   "scale_branch": cfg.scale_branch, "identity_branch": cfg.identity_branch}
    set_knobs = {k: v for k, v in model_knobs.items() if v is not None}
    if set_knobs and not is_ours(cfg.model) and not cfg.repify:
        raise ValueError(f"{', '.join(set_knobs)} apply to ghostnetv3_*/ghostnetv2_* models, not '{cfg.model}'")
    if is_ours(cfg.model):  # ghostnetv3_100 or timm's name gnv3_100
        stem, out = resolve_layout(cfg.model, cfg.img_size, cfg.stem_stride, cfg.output_stride)
        kwargs.update(set_knobs, rep_init=cfg.rep_init, linear_branches=cfg.linear_branches, output_stride=out)
        if stem is not None:
            kwargs["stem_stride"] = stem
    elif cfg.output_stride not in (None, 32) or cfg.linear_branches:
        knob = "linear_branches" if cfg.linear_branches else "output_stride"
        raise ValueError(f"{knob} applies to ghostnetv3_*/ghostnetv2_* models, not '{cfg.model}'")
    model = create_model(cfg.model, num_classes=num_classes, in_chans=in_chans, pretrained=cfg.pretrained, **kwargs)
    if cfg.repify:
        model = _repify(model, cfg)
    if cfg.init_checkpoint:
        load_checkpoint(model, cfg.init_checkpoint, use_ema=True, reset_head=cfg.reset_head)
    return model


def _repify(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """--repify: branches added to any CNN's k x k and 1 x 1 conv+BN sites."""
    # rep_init reference, and a model that starts from trained weights (pretrained or
    # init_checkpoint), keep repify's function-preserving start (new branches silent):
    # restarting its BNs would throw that training away
    fresh = cfg.rep_init == "scaled" and not cfg.pretrained and not cfg.init_checkpoint
    return repify(model, num_conv_branches=cfg.num_conv_branches or 3,
                  scale_branch=cfg.scale_branch is not False, identity_branch=cfg.identity_branch is not False,
                  rep_init="scaled" if fresh else "preserve")


def reparameterize(model: nn.Module) -> nn.Module:
    """The fused (deploy) copy of a model; the model itself keeps its mode."""
    was_training = model.training
    model.eval()
    fused = fuse(model, inplace=False)
    model.train(was_training)
    return fused.eval()


def eval_form(model: nn.Module) -> nn.Module:
    """The fused copy when the model has re-parameterization branches: the same function (tested in
    tests/rep), and the number a deployment gets."""
    return reparameterize(model) if has_branches(model) else model


def layout_line(model: nn.Module, img_size: int, in_chans: int) -> str:
    """'layout: stem stride 2, output stride 8 (maps ...) | fused 1.58M params, 7.0M MACs' (GhostNet)."""
    layout = describe_layout(model, img_size)
    if not layout:
        return ""
    params, macs = count_params_macs(reparameterize(model), (in_chans, img_size, img_size))
    return f"layout: {layout} | fused {params / 1e6:.2f}M params, {macs / 1e6:.1f}M MACs per image"
