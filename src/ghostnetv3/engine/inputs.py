"""Checks of what a run is given, made before the first step: a wrong input fails at start with
both numbers named, not at step 1 as an index error or, worse, not at all."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["check_train_classes", "check_eval_classes"]


def _names(classes: Sequence[Any], n: int = 6) -> str:
    shown = ", ".join(map(str, list(classes)[:n]))
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > n else "")


def check_train_classes(data: str, train_set, num_classes: Optional[int]) -> None:
    """A classifier needs two classes or more, and a head at least as wide as the data's classes."""
    classes = getattr(train_set, "classes", None)
    if not classes:
        return  # an iterable source: its class count is --num-classes itself
    if len(classes) < 2:
        raise ValueError(f"{data} has one class ({_names(classes)}): a classifier learns nothing from it "
                         f"(loss 0, top-1 100%); add a folder per class, at least two")
    if num_classes is not None and num_classes < len(classes):
        raise ValueError(f"--num-classes {num_classes} is smaller than the {len(classes)} classes of {data} "
                         f"({_names(classes)}); drop --num-classes (the data's count is the default) or pass "
                         f"--num-classes {len(classes)}")


def check_eval_classes(data: str, val_set, state: dict[str, Any], ckpt_path: str | Path) -> None:
    """The validation classes must be the ones the model was trained on: same count, same names,
    same order (label i means the same class to both)."""
    val = [str(c) for c in (getattr(val_set, "classes", None) or [])]
    if not val:
        return
    if len(val) != state["num_classes"]:
        raise ValueError(f"{data} has {len(val)} classes but {ckpt_path} was trained for {state['num_classes']}")
    trained = state.get("classes")
    if trained and [str(c) for c in trained] != val:
        diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(trained, val)) if str(a) != b]
        raise ValueError(f"the classes of {data} are not the ones {ckpt_path} was trained on (label "
                         f"{'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}: model vs data); point --data "
                         f"at a set with the same class folders ({_names(trained)})")
