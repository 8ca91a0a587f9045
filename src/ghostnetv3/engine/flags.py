"""The recipe keys as command-line flags: one-line help, allowed values, groups, and timm's spellings.

The help text of a key is its comment in config.py (one source of truth); `_HELP` fills in the keys
that have none. The groups are config.py's own section comments, with the EMA keys pulled out of
"optimisation" into their own group.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from functools import lru_cache

from .config import CHOICES, TrainConfig  # CHOICES: the allowed values, kept once in config.py

__all__ = ["CHOICES", "ALIASES", "EMA_GROUP", "help_text", "group_of", "group_order"]

# keys config.py leaves without a comment
_HELP = {
    "model": "architecture: ghostnetv3_050/100/130/160, ghostnetv2_*, torchvision/<name> or any timm name "
             "(`ghostnetv3 models`)",
    "num_classes": "number of classes",
    "in_chans": "input channels",
    "width": "width multiplier (GhostNet models)",
    "mean": "per-channel normalisation mean",
    "eval_crop_pct": "evaluation centre-crop fraction (timm's --crop-pct)",
    "val_subset": "score only N validation images (seeded); None: all of them",
    "clip_grad": "gradient clipping",
    "device": "cpu, cuda, cuda:1, ...",
    "experiment": "run directory name",
    "pretrained": "start from timm's pretrained weights (needs internet; offline use --init-checkpoint)",
    "img_size": "training and evaluation image side in pixels",
    "scale": "RandomResizedCrop area range (two numbers)",
    "ratio": "RandomResizedCrop aspect-ratio range (two numbers)",
    "hflip": "horizontal flip probability",
    "vflip": "vertical flip probability",
    "color_jitter": "brightness/contrast/saturation jitter strength (0: off)",
    "std": "per-channel normalisation std; None: the data layer's default",
    "interpolation": "resize interpolation (bilinear, bicubic, nearest)",
    "cutmix": "CutMix alpha (0: off; the paper finds it hurts compact models)",
    "mixup_prob": "probability of applying Mixup/CutMix to a batch",
    "epochs": "number of training epochs",
    "opt": "optimizer, any timm name (sgd, momentum, adamw, lamb, ...)",
    "lr": "peak learning rate (after warmup)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "sched": "lr schedule, any timm name (cosine, step, plateau, ...)",
    "warmup_epochs": "epochs of linear warmup from --warmup-lr (fractions allowed)",
    "warmup_lr": "learning rate at the start of warmup",
    "min_lr": "lowest learning rate of the schedule",
    "smoothing": "label smoothing",
    "model_ema": "keep an exponential moving average of the weights (evaluated every epoch)",
    "model_ema_decay": "EMA decay per optimizer step",
    "teacher": "KD teacher: a timm name, a run directory, a checkpoint, or efficientnet_lite0/1/2",
    "teacher_checkpoint": "weights for --teacher (any layout models.load_checkpoint reads)",
    "teacher_pretrained": "load timm's pretrained weights for --teacher (needs internet)",
    "teacher_input_size": "image side the teacher sees (student batches are resized); None: the teacher's own",
    "teacher_cache": "teacher outputs precomputed by `ghostnetv3 cache-teacher` (no teacher runs in training)",
    "kd_temperature": "KD softmax temperature",
    "kd_weight": "weight of the KD loss term",
    "ce_weight": "weight of the cross-entropy term",
    "channels_last": "NHWC memory format (faster depthwise convs on CPU)",
    "compile": "torch.compile the model (slow to compile on CPU)",
    "seed": "random seed (weights, augmentation, subsets)",
    "log_interval": "write a step record to metrics.jsonl every N steps",
}

# timm train.py spellings with the same meaning: alias -> key (or a special handler in cli.py)
ALIASES = {
    "-b": "batch_size",
    "-j": "workers",
    "--initial-checkpoint": "init_checkpoint",
    "--drop": "drop_rate",
    "--crop-pct": "eval_crop_pct",
    "--data-dir": "data",
    "--train-interpolation": "interpolation",
}

_GROUP_TITLES = {  # config.py's section comment (its first words) -> group title
    "what to train": "model",
    "data and augmentation": "data and augmentation",
    "optimisation": "optimisation",
    "knowledge distillation": "knowledge distillation (KD)",
    "execution": "run",
}
EMA_GROUP = "EMA (exponential moving average of the weights)"


@lru_cache(maxsize=None)
def _source_notes() -> tuple[dict[str, str], dict[str, str]]:
    """({key: comment}, {key: group title}) read from TrainConfig's source."""
    comments, groups = {}, {}
    group = "other"
    for line in inspect.getsource(TrainConfig).splitlines():
        s = line.strip()
        m = re.match(r"#\s*---\s*(.+?)\s*(\(.*\))?\s*---", s)
        if m:
            title = m.group(1)
            group = next((v for k, v in _GROUP_TITLES.items() if title.startswith(k)), title)
            continue
        m = re.match(r"(\w+)\s*:[^=]+=[^#]*(?:#\s*(.*))?$", s)
        if m and m.group(1) in {f.name for f in dataclasses.fields(TrainConfig)}:
            name = m.group(1)
            if m.group(2):
                comments[name] = m.group(2).strip()
            groups[name] = EMA_GROUP if name.startswith("model_ema") else group
    return comments, groups


def help_text(name: str) -> str:
    """The key's comment in config.py; a comment that only explains None gets the key's meaning first."""
    comment = _source_notes()[0].get(name)
    base = _HELP.get(name)
    if comment and base and comment.startswith("None"):
        return f"{base}; {comment}"
    return comment or base or name.replace("_", " ")


def group_of(name: str) -> str:
    return _source_notes()[1].get(name, "other")


def group_order() -> list[str]:
    seen: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        g = group_of(f.name)
        if g not in seen:
            seen.append(g)
    if EMA_GROUP in seen and "optimisation" in seen:  # EMA right after optimisation
        seen.remove(EMA_GROUP)
        seen.insert(seen.index("optimisation") + 1, EMA_GROUP)
    return seen
