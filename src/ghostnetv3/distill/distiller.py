"""What the training loop calls each step: `total, parts = distiller(student_logits, batch, ce_loss)`.

Two sources of teacher targets, one loss:
  online — the teacher runs on the student's batch (converted to its input) every step;
  cached — no teacher runs: the loader augments each sample with a view id picked by `view_fn`,
           and the targets for (index, view) are read from the memory-mapped cache.
"""
from __future__ import annotations

import abc
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import TeacherCache
from .losses import KD_LOSSES, TeacherOutput, kd_loss
from .teachers import create_teacher

__all__ = ["Distiller", "OnlineDistiller", "CachedDistiller", "build_distiller"]


class Distiller(abc.ABC):
    """total = ce_weight × CE + kd_weight × KD(student, teacher targets)."""

    view_fn: Optional[Callable[[Tensor, int], Tensor]] = None

    def __init__(self, kind: str = "soft-ce", temperature: float = 1.0, kd_weight: float = 1.0,
                 ce_weight: float = 1.0, smoothing: float = 0.0):
        if kind not in KD_LOSSES:
            raise ValueError(f"kd_loss: {kind!r} is not one of {', '.join(KD_LOSSES)}")
        if temperature <= 0:
            raise ValueError(f"kd_temperature must be positive, got {temperature}")
        self.kind, self.temperature = kind, float(temperature)
        self.kd_weight, self.ce_weight, self.smoothing = float(kd_weight), float(ce_weight), float(smoothing)

    @abc.abstractmethod
    def teacher_output(self, batch) -> TeacherOutput:
        """The teacher's targets for this batch (online forward or cached lookup)."""

    def __call__(self, student_logits: Tensor, batch, ce_loss: Optional[Tensor] = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """`ce_loss`: the loop's (label-smoothed) CE of this batch; computed here when None."""
        if ce_loss is None:
            ce_loss = F.cross_entropy(student_logits.float(), batch.labels, label_smoothing=self.smoothing)
        target = self.teacher_output(batch)
        kd = kd_loss(student_logits, target, self.kind, self.temperature)
        total = self.ce_weight * ce_loss + self.kd_weight * kd
        return total, {"ce": ce_loss.detach(), "kd": kd.detach()}


class OnlineDistiller(Distiller):
    def __init__(self, teacher, student_mean, student_std, **loss_kw):
        super().__init__(**loss_kw)
        self.teacher, self.mean, self.std = teacher, tuple(student_mean), tuple(student_std)

    def teacher_output(self, batch) -> TeacherOutput:
        return TeacherOutput(logits=self.teacher.predict(batch.images, self.mean, self.std))

    def __repr__(self) -> str:
        return f"OnlineDistiller({self.teacher!r}, kd_loss={self.kind}, T={self.temperature})"


class CachedDistiller(Distiller):
    def __init__(self, cache, seed: int, device=None, **loss_kw):
        super().__init__(**loss_kw)
        self.cache, self.device = cache, device
        self.view_fn = cache.view_fn(seed)

    def teacher_output(self, batch) -> TeacherOutput:
        return self.cache.targets(batch.indices, batch.keys, self.device)

    def __repr__(self) -> str:
        return f"CachedDistiller({self.cache!r}, kd_loss={self.kind}, T={self.temperature})"


def build_distiller(cfg, train_set, augment, device) -> Distiller:
    """The distiller a TrainConfig asks for (`teacher_cache` wins over an online `teacher`).

    Pass `distiller.view_fn` to the training loader: with a cache it makes each sample replay one
    of its cached views; online it is None (the teacher sees whatever the student sees).
    """
    loss_kw = dict(kind=cfg.kd_loss, temperature=cfg.kd_temperature, kd_weight=cfg.kd_weight,
                   ce_weight=cfg.ce_weight, smoothing=cfg.smoothing)
    num_classes = cfg.num_classes or len(train_set.classes)
    if getattr(cfg, "mixup", 0) > 0 or getattr(cfg, "cutmix", 0) > 0:
        raise ValueError("distillation with Mixup/CutMix is not supported (the paper finds they hurt compact "
                         "models); set --mixup 0 --cutmix 0")
    if cfg.teacher_cache:
        if getattr(cfg, "aa", None):
            raise ValueError("--teacher-cache replays views of the batched augmentation; --aa (RandAugment) "
                             "takes another path. Drop --aa, or distill online with --teacher")
        cache = TeacherCache(cfg.teacher_cache)
        teacher = None
        if cfg.teacher:  # named too: it must be the teacher the cache was built with
            teacher = _teacher(cfg, num_classes, "cpu")
        cache.check(train_set=train_set, augment=augment, teacher=teacher, num_classes=num_classes)
        return CachedDistiller(cache, seed=cfg.seed, device=device, **loss_kw)
    if not cfg.teacher:
        raise ValueError("distillation needs --teacher or --teacher-cache")
    teacher = _teacher(cfg, num_classes, device)
    mean, std = augment.cfg.norm_stats()
    return OnlineDistiller(teacher, mean, std, **loss_kw)


def _teacher(cfg, num_classes: int, device):
    amp = cfg.amp if getattr(cfg, "amp", "none") != "none" else None  # None: bf16/fp16 on CUDA, fp32 on CPU
    return create_teacher(cfg.teacher, num_classes=num_classes, checkpoint=cfg.teacher_checkpoint, device=device,
                          pretrained=cfg.teacher_pretrained, input_size=cfg.teacher_input_size, amp=amp)
