"""`DistillationTask`: knowledge distillation as a task that wraps the classification task — its data,
model, metric and cross-entropy, plus the teacher's term (timm's `task/distillation.py` does the
same) — and `train(cfg)`, the entry point that trains a classifier with or without a teacher.

The engine does not know distillation exists: it trains whatever task it is given. The CLI
(`ghostnetv3 train`) and Python users call `train` here, which picks the task the config asks for.

    from ghostnetv3.engine import load_config
    from ghostnetv3.distill import train
    summary = train(load_config("recipes/fashion_mnist.yaml", teacher_cache="teacher.kdcache"))
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from ghostnetv3.engine.config import TrainConfig
from ghostnetv3.engine.distributed import Dist
from ghostnetv3.engine.task import ClassificationTask, Task, wants_distillation
from ghostnetv3.engine.train import train as engine_train

from .distiller import Distiller, build_distiller

__all__ = ["DistillationTask", "classification_task", "train"]


class DistillationTask(Task):
    """A ClassificationTask whose loss adds the teacher's: ce_weight x CE + kd_weight x KD (`Distiller`).
    With a teacher cache the loader replays, for each sample, a view the cache holds targets for."""

    name = "distillation"
    layout_probe = True

    def __init__(self, base: Optional[ClassificationTask] = None):
        self.base = base if base is not None else ClassificationTask()
        self.distiller: Optional[Distiller] = None

    @property
    def mixup_fn(self):
        return self.base.mixup_fn

    def check_config(self, cfg: TrainConfig) -> None:
        if not wants_distillation(cfg):
            raise ValueError("distillation needs --teacher or --teacher-cache")

    def resolve_config(self, cfg: TrainConfig) -> TrainConfig:
        return self.base.resolve_config(cfg)

    def load_datasets(self, cfg: TrainConfig):
        return self.base.load_datasets(cfg)

    def check_datasets(self, cfg: TrainConfig, train_set) -> None:
        self.base.check_datasets(cfg, train_set)

    def eval_metric(self, cfg: TrainConfig) -> str:
        return self.base.eval_metric(cfg)

    def build_model(self, cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
        return self.base.build_model(cfg, num_classes, in_chans)

    def setup(self, cfg: TrainConfig, train_set, in_chans: int, num_classes: int, device: torch.device) -> None:
        self.base.setup(cfg, train_set, in_chans, num_classes, device)
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise ValueError("distillation with Mixup/CutMix is not supported; set --mixup 0 --cutmix 0")
        self.distiller = build_distiller(cfg, train_set, self.base.augment, device)

    def train_loader(self, cfg: TrainConfig, train_set, d: Dist, device: torch.device):
        return self.base.train_loader(cfg, train_set, d, device, view_fn=self.distiller.view_fn)

    def val_loader(self, cfg: TrainConfig, val_set, device: torch.device):
        return self.base.val_loader(cfg, val_set, device)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.base.forward(model, batch)
        return self.distiller(logits, batch, self.base.criterion(logits, batch.labels))

    def evaluate(self, model: nn.Module, loader, device: torch.device, amp: str = "none") -> dict[str, Any]:
        return self.base.evaluate(model, loader, device, amp)

    def describe(self, cfg: TrainConfig) -> str:
        return f"KD from {cfg.teacher_cache or cfg.teacher} ({cfg.kd_loss}, weight {cfg.kd_weight:g}) | "

    def plan_note(self, model: nn.Module, total_steps: int) -> str:
        return self.base.plan_note(model, total_steps)


def classification_task(cfg: TrainConfig) -> Task:
    """The task a classification config asks for: distillation when it names a teacher (or a cache)."""
    return DistillationTask() if wants_distillation(cfg) else ClassificationTask()


def train(cfg: TrainConfig, *, train_set=None, val_set=None, resumed=None) -> dict[str, Any]:
    """Train a classifier as `cfg` says — distilling from its teacher when it names one — through the
    engine (`ghostnetv3.engine.train.train`; `resumed`: the Run of `cfg.resume`, already opened);
    returns the run's summary."""
    return engine_train(cfg, train_set=train_set, val_set=val_set, task=classification_task(cfg),
                        resumed=resumed)
