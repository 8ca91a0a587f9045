"""Distillation losses: what the student is pulled towards, given the teacher's output.

The teacher's output reaches a loss in one of two forms: full logits (online teacher, or a
cache that stores them) or a sparse top-k distribution (probabilities of the k most likely
classes and the mass left over, from a cache). `teacher_probs` turns either into the tempered
teacher distribution the losses need, so every loss works on both.

total = ce_weight × CE(label-smoothed) + kd_weight × KD, with KD one of
  kl      : T² · KL(softmax(t/T) ‖ softmax(s/T))           (Hinton et al.)
  soft-ce : T² · Σ −softmax(t/T) · log_softmax(s/T)        (the reference code's form; at its
            T = 1 it is exactly the reference loss. It differs from kl by the teacher's entropy,
            a constant, so both give the same gradients.)
  hard    : CE(s, argmax t)                                (temperature plays no part)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KD_LOSSES", "TeacherOutput", "teacher_probs", "kd_loss", "total_loss"]

KD_LOSSES = ("kl", "soft-ce", "hard")


@dataclass
class TeacherOutput:
    """The teacher's opinion on a batch: `logits` [B, C], or top-k `probs`/`index` [B, k] + `rest` [B]."""
    logits: Optional[Tensor] = None
    probs: Optional[Tensor] = None
    index: Optional[Tensor] = None
    rest: Optional[Tensor] = None
    num_classes: Optional[int] = None

    def __post_init__(self) -> None:
        if self.logits is None and (self.probs is None or self.index is None):
            raise ValueError("TeacherOutput needs logits, or top-k probs and index")
        if self.num_classes is None and self.logits is not None:
            self.num_classes = self.logits.shape[-1]

    def argmax(self) -> Tensor:
        if self.logits is not None:
            return self.logits.argmax(-1)
        return self.index.gather(-1, self.probs.argmax(-1, keepdim=True)).squeeze(-1).long()


def teacher_probs(t: TeacherOutput, temperature: float = 1.0) -> Tensor:
    """The teacher's distribution softmax(t / T) as a dense float32 [B, C] tensor.

    From top-k probabilities p (stored at T = 1): softmax(z/T)_i ∝ p_i^(1/T), exact on the
    stored classes. The classes outside the top k are unknown individually; their mass `rest`
    is spread evenly over them, which is exact at T = 1 and a close approximation otherwise.
    """
    if t.logits is not None:
        return F.softmax(t.logits.float() / temperature, dim=-1)
    probs, index = t.probs.float(), t.index.long()
    b, k = probs.shape
    c = t.num_classes
    if c is None:
        raise ValueError("top-k teacher output needs num_classes")
    rest = t.rest.float() if t.rest is not None else (1.0 - probs.sum(-1)).clamp_min(0)
    tail = (rest / max(c - k, 1)).clamp_min(0)
    dense = tail[:, None].expand(b, c).clone() if c > k else probs.new_zeros(b, c)
    dense.scatter_(1, index, probs)
    if temperature != 1.0:
        dense = dense.clamp_min(0).pow(1.0 / temperature)
    return dense / dense.sum(-1, keepdim=True).clamp_min(1e-12)


def kd_loss(student_logits: Tensor, teacher: TeacherOutput | Tensor, kind: str = "soft-ce",
            temperature: float = 1.0) -> Tensor:
    """Mean over the batch of the distillation loss `kind` (see module docstring)."""
    if isinstance(teacher, Tensor):
        teacher = TeacherOutput(logits=teacher)
    if teacher.num_classes is not None and teacher.num_classes != student_logits.shape[-1]:
        raise ValueError(f"teacher gives {teacher.num_classes} classes, student {student_logits.shape[-1]}")
    s = student_logits.float()
    if kind == "hard":
        return F.cross_entropy(s, teacher.argmax().to(s.device))
    T = float(temperature)
    if T <= 0:
        raise ValueError(f"kd_temperature must be positive, got {T}")
    p = teacher_probs(teacher, T).to(s.device)
    log_q = F.log_softmax(s / T, dim=-1)
    if kind == "soft-ce":
        loss = -(p * log_q).sum(-1)
    elif kind == "kl":
        loss = (torch.xlogy(p, p) - p * log_q).sum(-1)
    else:
        raise ValueError(f"kd_loss: {kind!r} is not one of {', '.join(KD_LOSSES)}")
    return loss.mean() * (T * T)


def total_loss(student_logits: Tensor, labels: Tensor, teacher: TeacherOutput | Tensor, *,
               kind: str = "soft-ce", temperature: float = 1.0, kd_weight: float = 1.0,
               ce_weight: float = 1.0, smoothing: float = 0.0,
               ce: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
    """ce_weight × CE(label-smoothed) + kd_weight × KD; `ce` reuses a CE the caller computed.

    The parts come back detached but as tensors: turning them into floats every step would
    make a GPU wait for the step to finish.
    """
    if ce is None:
        ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=smoothing) \
            if ce_weight else student_logits.new_zeros(())
    kd = kd_loss(student_logits, teacher, kind, temperature) if kd_weight else student_logits.new_zeros(())
    total = ce_weight * ce + kd_weight * kd
    return total, {"ce": ce.detach(), "kd": kd.detach()}
