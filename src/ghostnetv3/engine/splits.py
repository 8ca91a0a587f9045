"""The train/validation splits a run is given, defined once for every command: the checks made before the first step (a
wrong input fails at start with both numbers named, not at step 1 as an index error or, worse, not
at all), the seeded subsets of --train-subset/--val-subset, and the eval transform.

`eval --val-subset N`, a run's own validation and `quantize --eval-size N` score the same N images
(`val_subset`, `subset_indices`), through the same transform (`eval_aug_config`), and say so
(`describe_subset`, `describe_eval_transform`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ghostnetv3.data.augment import AugConfig
from ghostnetv3.data.inputspec import InputSpec

__all__ = ["check_train_classes", "check_eval_classes", "head_fits", "subset", "subset_indices", "val_subset",
           "val_subset_seed", "describe_subset", "eval_aug_config", "describe_eval_transform"]

# --------------------------------------------------------------------------- subsets


def subset_indices(total: int, n: Optional[int], seed: int) -> Optional[torch.Tensor]:
    """The first n of a seeded permutation of range(total), in order (the same images for the same
    seed); None when n is unset or covers them all."""
    if n is None or n >= total:
        return None
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=g)[:n].sort().values


def subset(ds, n: Optional[int], seed: int):
    """`ds` cut to the images `subset_indices` picks (--train-subset takes seed = the run's --seed)."""
    idx = subset_indices(len(ds.labels), n, seed)
    return ds if idx is None else ds.subset(idx)


def val_subset_seed(run_seed: int) -> int:
    """The seed of a run's validation subset: its --seed + 1 (the training subset takes --seed)."""
    return int(run_seed) + 1


def val_subset(ds, n: Optional[int], run_seed: int):
    """"The validation subset of size N" — what a run validates on, what `eval --val-subset N` and
    `quantize --eval-size N` score: `subset` with `val_subset_seed`. An iterable source is kept whole."""
    return ds if getattr(ds, "iterable", False) else subset(ds, n, val_subset_seed(run_seed))


def describe_subset(scored: int, total: Optional[int], run_seed: int, split: str = "the validation split") -> str:
    """How `eval` and `quantize` name the images they scored, e.g. '256 of 10000 images of the validation
    split (seeded subset: seed 43, the run's --seed 42 + 1)'."""
    if total is None:
        return f"{scored} images of {split}"
    if scored >= total:
        return f"all {total} images of {split}"
    return (f"{scored} of {total} images of {split} (seeded subset: seed {val_subset_seed(run_seed)}, "
            f"the run's --seed {run_seed} + 1)")


# --------------------------------------------------------------------------- the eval transform


def eval_aug_config(cfg: Any, in_chans: int, img_size: Optional[int] = None) -> AugConfig:
    """The eval transform (a run's validation, `eval`, `quantize`'s scoring): the short side resized to
    img_size / eval_crop_pct with `interpolation`, a centre crop of img_size, mean/std. `cfg` is a
    TrainConfig or the dict a checkpoint or exported file keeps; an unset key takes AugConfig's default."""
    return InputSpec.from_config(cfg, in_chans=int(in_chans), img_size=img_size or None).aug_config()


def describe_eval_transform(aug: AugConfig) -> str:
    """e.g. 'bilinear resize of the short side to 32 px, centre crop 32 px (crop_pct 1), mean (0.449,)
    std (0.226,)' (data.InputSpec.describe)."""
    return InputSpec.from_aug_config(aug).describe()


# --------------------------------------------------------------------------- classes


def head_fits(n_classes: int, head_width: int) -> bool:
    """The one rule of every command (train, eval, quantize's scoring; export and predict take the head
    as it is): a classifier head at least as wide as the data's classes. Wider is allowed (train
    --num-classes 12 on 10 classes): the extra outputs are classes no image has."""
    return head_width >= n_classes


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
    if num_classes is not None and not head_fits(len(classes), num_classes):
        raise ValueError(f"--num-classes {num_classes} is smaller than the {len(classes)} classes of {data} "
                         f"({_names(classes)}); drop --num-classes (the data's count is the default) or pass "
                         f"--num-classes {len(classes)}")


def check_eval_classes(data: str, val_set, state: dict[str, Any], ckpt_path: str | Path) -> None:
    """The validation classes must be the ones the model was trained on: same names, same order
    (label i means the same class to both), and no more than its head has outputs (`head_fits`)."""
    val = [str(c) for c in (getattr(val_set, "classes", None) or [])]
    if not val:
        return
    if not head_fits(len(val), state["num_classes"]):
        raise ValueError(f"{data} has {len(val)} classes ({_names(val)}) but the model in {ckpt_path} has "
                         f"{state['num_classes']} outputs; point --data at the data it was trained on")
    trained = state.get("classes")
    if trained and [str(c) for c in trained] != val:
        diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(trained, val)) if str(a) != b]
        raise ValueError(f"the classes of {data} are not the ones {ckpt_path} was trained on (label "
                         f"{'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}: model vs data); point --data "
                         f"at a set with the same class folders ({_names(trained)})")
