"""The images `quantize` (and `bench`) calibrate on and score, and top-1 of runners on them.

Calibration and evaluation images go through the data layer's eval transform and the training
run's split, i.e. exactly what the model saw at validation time; the scored subset of size N is
the one `eval --val-subset N` scores (engine.splits).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ghostnetv3.data import load_dataset
from ghostnetv3.data.inputspec import InputSpec
from ghostnetv3.deploy.runner import fixed_batch
from ghostnetv3.engine.splits import describe_subset, subset_indices, val_subset_seed

__all__ = ["eval_batches", "scored_batches", "top1_of", "runner_top1"]


def eval_batches(name: str, split: str, cfg: dict[str, Any], limit: Optional[int] = None,
                 batch_size: int = 64, seed: int = 0) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int]:
    """(iterator of (float32 NCHW images, int64 labels), count) from a dataset split.

    `limit` takes a seeded random subset (every class represented in proportion), so 512
    calibration images are not 512 images of the first class.
    """
    it, n, _ = _split_batches(name, split, cfg, limit, batch_size, seed)
    return it, n


def scored_batches(name: str, split: str, cfg: dict[str, Any], limit: Optional[int] = None,
                   batch_size: int = 256) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int, str]:
    """(batches, count, which images in words): the images `quantize` scores — for N = `limit`, the
    validation subset of size N that `eval --val-subset N` scores (engine.splits: the run's split, the
    seed of its validation subset, its eval transform)."""
    run_seed = int(cfg.get("seed") or 0)
    it, n, total = _split_batches(name, split, cfg, limit, batch_size, val_subset_seed(run_seed))
    return it, n, describe_subset(n, total, run_seed, f"{name}:{split}")


def _split_batches(name: str, split: str, cfg: dict[str, Any], limit: Optional[int], batch_size: int,
                   seed: int) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int, int]:
    """eval_batches, plus the size of the whole split."""
    # The split and the load-time resize exactly as training made them (engine.load_datasets).
    kw = {"image_size": int(cfg["img_size"])}
    if cfg.get("val_fraction") is not None:
        kw["val_fraction"] = float(cfg["val_fraction"])
    split_seed = cfg["split_seed"] if cfg.get("split_seed") is not None else cfg.get("seed")
    ds = load_dataset(name, split, seed=int(split_seed or 0), **kw)
    n = len(ds.labels)
    if n == 0:
        raise ValueError(f"dataset '{name}' split '{split}' has no images")
    picked = subset_indices(n, limit or None, seed)  # the engine's subset rule (engine.splits)
    idx = torch.arange(n) if picked is None else picked
    aug = InputSpec.from_config(cfg).eval_transform()  # the run's own eval transform (data.inputspec)

    def it():
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            x = aug(ds.images[b], b, 0)
            yield x.numpy().astype(np.float32, copy=False), ds.labels[b].numpy()
    return it(), len(idx), n


def top1_of(predictors: Sequence[Callable[[np.ndarray], np.ndarray]], batches) -> tuple[list[float], int]:
    """([top-1 % of each predictor (images -> logits)], images), in one pass over the batches."""
    correct, total = [0] * len(predictors), 0
    for x, y in batches:
        for i, predict in enumerate(predictors):
            logits = predict(x)
            if int(y.max()) >= logits.shape[1]:
                raise ValueError(f"the eval data has labels up to {int(y.max())} but the model has "
                                 f"{logits.shape[1]} outputs: is --eval-data the data it was trained on?")
            correct[i] += int((logits.argmax(1) == y).sum())
        total += len(y)
    return [100.0 * c / max(total, 1) for c in correct], total


def runner_top1(runners: Sequence[Callable[[np.ndarray], np.ndarray]], batches, size: int
                ) -> tuple[list[float], int]:
    """([top-1 % of each runner], images) in one pass; the runners take exactly `size` images
    (a ragged last chunk is zero-padded and its padding ignored: runner.fixed_batch)."""
    return top1_of([fixed_batch(run, size) for run in runners], batches)
