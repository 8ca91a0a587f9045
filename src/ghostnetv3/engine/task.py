"""What a run trains: a task supplies the data, the model, the loss and the metric; the engine
(`engine.train.train`) supplies everything else — optimizer, schedule, EMA, checkpoints, exact
resume, DDP, signals, logging. timm keeps forward + loss in task objects the same way
(`timm/task/classification.py`, `distillation.py`).

- `Task`: the protocol, with the defaults a task may keep;
- `ClassificationTask`: image classification (the engine's default);
- `ghostnetv3.distill.DistillationTask` wraps a ClassificationTask with a teacher's term;
- `ghostnetv3.detect.DetectionTask` trains a detector.

The engine calls, in this order: `check_config`, `resolve_config`, `load_datasets` (unless the sets
are given), `check_datasets`, `eval_metric`, `build_model`, `setup`, `train_loader`, `val_loader`;
then each (micro-)batch `loss(model, batch)` -> (loss, {name: part}) under autocast (the batch
carries the Mixup-mixed images and targets when `mixup_fn` is set); each epoch
`evaluate(model, val_loader, device, amp)` -> {metric: value, ...}.
"""
from __future__ import annotations

import abc

from typing import Any, Optional

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ghostnetv3.data import BatchAugment
from ghostnetv3.errors import UserError

from .advice import branch_budget_note
from .config import TrainConfig
from .datasets import aug_config, load_datasets
from .distributed import Dist
from .splits import check_train_classes
from .layout import resolve_layout
from .loaders import train_loader, val_loader
from .loop import validate
from .model_factory import build_model

__all__ = ["Task", "ClassificationTask", "wants_distillation", "make_criterion"]


def wants_distillation(cfg: TrainConfig) -> bool:
    """The config names a teacher (online) or a teacher cache: knowledge distillation."""
    return bool(cfg.teacher or cfg.teacher_cache)


class Task(abc.ABC):
    """The protocol a task follows, with the defaults a task may keep (see the module docstring); a
    task that lacks one of the abstract methods cannot be made (TypeError naming it)."""

    name = "task"
    metric = "top1"          # the key of `evaluate`'s dict that picks best.pt
    layout_probe = False     # `channels_last: auto` may time train steps of the model on random data
    mixup_fn = None          # applied to each whole batch before it is split into micro-batches

    def check_config(self, cfg: TrainConfig) -> None:
        """Refuse, before any work, a config this task cannot train."""

    def resolve_config(self, cfg: TrainConfig) -> TrainConfig:
        """`cfg` with the decisions this task makes once and saves with the run."""
        return cfg

    @abc.abstractmethod
    def load_datasets(self, cfg: TrainConfig):
        """(train set, validation set) the config names."""

    def check_datasets(self, cfg: TrainConfig, train_set) -> None:
        """Refuse a training set this task cannot learn from."""

    def eval_metric(self, cfg: TrainConfig) -> str:
        return self.metric

    @abc.abstractmethod
    def build_model(self, cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
        """The network this task trains."""

    def setup(self, cfg: TrainConfig, train_set, in_chans: int, num_classes: int, device: torch.device) -> None:
        """What the loss and the loaders need, made once the data and the model are known."""

    @abc.abstractmethod
    def train_loader(self, cfg: TrainConfig, train_set, d: Dist, device: torch.device):
        """The training batches, resumable mid-epoch (`iter_from`, `set_epoch`)."""

    @abc.abstractmethod
    def val_loader(self, cfg: TrainConfig, val_set, device: torch.device):
        """The validation batches."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss of one batch, its named parts for the log)."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, loader, device: torch.device, amp: str = "none") -> dict[str, Any]:
        """The validation metrics of `model` on `loader` (holds `self.metric`)."""

    def describe(self, cfg: TrainConfig) -> str:
        """A part of the start-up line ('' for none; ends with ' | ')."""
        return ""

    def plan_note(self, model: nn.Module, total_steps: int) -> str:
        """Advice printed under the plan line ('' for none)."""
        return ""


def make_criterion(cfg: TrainConfig, num_classes: int) -> tuple[Optional[Mixup], nn.Module]:
    """(Mixup/CutMix or None, the loss of the logits against the targets), as timm's train.py picks them."""
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                         label_smoothing=cfg.smoothing, num_classes=num_classes)
        return mixup_fn, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(cfg.smoothing)
    return None, nn.CrossEntropyLoss()


class ClassificationTask(Task):
    """Image classification: a classifier's cross-entropy (label smoothing, Mixup/CutMix as the config
    says), top-1/top-5 validation, the data paths of engine.loaders."""

    name = "classification"
    layout_probe = True

    def __init__(self):
        self.augment: Optional[BatchAugment] = None
        self.criterion: Optional[nn.Module] = None
        self.mixup_fn: Optional[Mixup] = None
        self.in_chans = 0

    def check_config(self, cfg: TrainConfig) -> None:
        if wants_distillation(cfg):
            what = "teacher_cache" if cfg.teacher_cache else "teacher"
            raise UserError(f"{what} asks for knowledge distillation, which this task does not do; train with "
                            f"ghostnetv3.distill.train(cfg) (or task=ghostnetv3.distill.DistillationTask())")

    def resolve_config(self, cfg: TrainConfig) -> TrainConfig:
        # the layout is decided once and saved with the run (eval/export rebuild it from there)
        stem, out = resolve_layout(cfg.model, cfg.img_size, cfg.stem_stride, cfg.output_stride)
        return cfg.replace(stem_stride=stem, output_stride=out)

    def load_datasets(self, cfg: TrainConfig):
        return load_datasets(cfg)

    def check_datasets(self, cfg: TrainConfig, train_set) -> None:
        check_train_classes(cfg.data, train_set, cfg.num_classes)

    def eval_metric(self, cfg: TrainConfig) -> str:
        return cfg.eval_metric

    def build_model(self, cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
        return build_model(cfg, num_classes, in_chans)

    def setup(self, cfg: TrainConfig, train_set, in_chans: int, num_classes: int, device: torch.device) -> None:
        self.in_chans = in_chans
        self.augment = BatchAugment(aug_config(cfg, in_chans, train=True), seed=cfg.seed)
        self.mixup_fn, self.criterion = make_criterion(cfg, num_classes)

    def train_loader(self, cfg: TrainConfig, train_set, d: Dist, device: torch.device, view_fn=None):
        return train_loader(cfg, train_set, self.in_chans, d, device, self.augment, view_fn)

    def val_loader(self, cfg: TrainConfig, val_set, device: torch.device):
        return val_loader(cfg, val_set, self.in_chans, device)

    def forward(self, model: nn.Module, batch) -> torch.Tensor:
        return model(batch.images)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.criterion(self.forward(model, batch), batch.labels), {}

    def evaluate(self, model: nn.Module, loader, device: torch.device, amp: str = "none") -> dict[str, Any]:
        return validate(model, loader, device, amp)

    def plan_note(self, model: nn.Module, total_steps: int) -> str:
        return branch_budget_note(model, total_steps)
