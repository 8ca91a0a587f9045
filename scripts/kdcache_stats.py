"""What a teacher cache teaches, read from the file alone (no forward passes): the teacher's top-1 on
its cached training views against the labels, its mean top probability and entropy. Prints JSON.

  python scripts/kdcache_stats.py runs/ablation/fashion_mnist_60k/teacher-cache/s0.kdcache \
      -c runs/ablation/fashion_mnist_60k/_configs/cache-s0.yaml
"""
from __future__ import annotations

import argparse
import json

import torch

from ghostnetv3.distill.cache import TeacherCache
from ghostnetv3.distill.losses import teacher_probs
from ghostnetv3.engine.config import load_config
from ghostnetv3.engine.datasets import load_datasets


def cache_stats(cache: TeacherCache, labels: torch.Tensor, batch: int = 8192) -> dict:
    """Per view: top-1 of the cached targets against `labels`; overall: mean top probability and entropy."""
    if len(labels) != cache.num_samples:
        raise ValueError(f"the cache holds {cache.num_samples} images, the training set {len(labels)}: "
                         f"pass the config the cache was built with")
    top1, conf, ent = [], 0.0, 0.0
    for v in range(cache.views):
        correct = 0
        for s in range(0, cache.num_samples, batch):
            idx = torch.arange(s, min(s + batch, cache.num_samples))
            p = teacher_probs(cache.targets(idx, torch.full_like(idx, v)), 1.0).float()
            correct += int((p.argmax(-1) == labels[idx]).sum())
            conf += float(p.max(-1).values.sum())
            ent += float(-(p * p.clamp_min(1e-12).log()).sum())
        top1.append(round(100.0 * correct / cache.num_samples, 2))
    n = cache.num_samples * cache.views
    return {"views": cache.views, "images": cache.num_samples, "top1_per_view": top1,
            "top1_mean": round(sum(top1) / len(top1), 2), "mean_top_prob": round(conf / n, 4),
            "mean_entropy_nats": round(ent / n, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache")
    ap.add_argument("-c", "--config", required=True, help="the config the cache was built with (its training set)")
    args = ap.parse_args()
    train_set, _ = load_datasets(load_config(args.config))
    print(json.dumps({"cache": args.cache, **cache_stats(TeacherCache(args.cache), train_set.labels)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
