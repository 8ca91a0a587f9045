"""Is the data path fast enough? InMemoryLoader + BatchAugment vs a small model's train step.

Fashion-MNIST at 32 px, batch 256, 3 channels, CPU, 2 threads. Measures, interleaved and
repeated (medians reported):
- loader img/s: InMemoryLoader + BatchAugment, train mode (rrc and pad_crop recipes);
- train-step img/s: timm mobilenetv2_100 (10 classes), SGD step on a fixed batch;
- timm's per-sample path (TimmTransformDataset + create_transform in a DataLoader), 0 and 2 workers;
- end to end: the train step fed by InMemoryLoader (prefetch on), to see the loader's overhead.
Target: loader >= 3x the train step. Prints one JSON object, with the load average before and
after (other processes on a 2-core machine change every number here).

    python benchmarks/loader.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
from torch.utils.data import DataLoader

from ghostnetv3.data import (AugConfig, BatchAugment, InMemoryLoader, TimmTransformDataset,
                             load_dataset, timm_transform)

SIZE, BATCH = 32, 256


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_loader(ds, crop_mode: str, batches: int, epoch: int) -> float:
    aug = BatchAugment(AugConfig(SIZE, in_chans=3, crop_mode=crop_mode), seed=0)
    loader = InMemoryLoader(ds, BATCH, aug, shuffle=True, drop_last=True, seed=0)
    loader.set_epoch(epoch)
    it = iter(loader)
    next(it)  # warm-up
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it).labels)
    return n / (time.perf_counter() - t)


def make_train_step():
    import timm

    model = timm.create_model("mobilenetv2_100", num_classes=10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-5)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, 10, (BATCH,))

    def step_on(batch):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        opt.step()

    step = lambda: step_on((x, y))  # noqa: E731
    step()  # warm-up
    return step, step_on


def bench_train(step, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - t)


def bench_end_to_end(ds, step_on, steps: int, epoch: int) -> float:
    aug = BatchAugment(AugConfig(SIZE, in_chans=3), seed=0)
    loader = InMemoryLoader(ds, BATCH, aug, shuffle=True, drop_last=True, seed=0, prefetch=True)
    loader.set_epoch(epoch)
    it = iter(loader)
    step_on(next(it))  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step_on(next(it))
    return steps * BATCH / (time.perf_counter() - t)


def bench_timm(dl: DataLoader, batches: int) -> float:
    # A fresh iterator each time, so no batches were prefetched while other things were timed;
    # the clock starts at the first batch (excludes worker start-up).
    loader_iter = iter(dl)
    next(loader_iter)
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(loader_iter)[1])
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loader-batches", type=int, default=40)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--timm-batches", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = load_dataset("fashion-mnist", "train")
    load_before = os.getloadavg()
    step, step_on = make_train_step()
    timm_ds = TimmTransformDataset(ds, timm_transform(AugConfig(SIZE, in_chans=3)))
    timm_loaders = {w: DataLoader(timm_ds, BATCH, shuffle=True, num_workers=w, drop_last=True)
                    for w in (0, 2)}

    runs: dict[str, list[float]] = {k: [] for k in (
        "loader_rrc", "loader_pad_crop", "train_step", "train_fed_by_loader", "timm_workers0",
        "timm_workers2")}
    for r in range(args.repeats):  # interleaved so drifts in machine load hit all alike
        runs["loader_rrc"].append(bench_loader(ds, "rrc", args.loader_batches, r))
        runs["train_step"].append(bench_train(step, args.train_steps))
        runs["loader_pad_crop"].append(bench_loader(ds, "pad_crop", args.loader_batches, r))
        runs["train_fed_by_loader"].append(bench_end_to_end(ds, step_on, args.train_steps, r))
        for w, dl in timm_loaders.items():
            runs[f"timm_workers{w}"].append(bench_timm(dl, args.timm_batches))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {
        "benchmark": "data loader vs train step",
        "setup": {"dataset": "fashion-mnist:train", "image_size": SIZE, "batch_size": BATCH,
                  "in_chans": 3, "model": "mobilenetv2_100 (10 classes), SGD step",
                  "aug": "rrc(0.08-1)+hflip+color_jitter 0.4 (pad_crop: pad 4 + crop)",
                  "timm_path": "TimmTransformDataset + timm create_transform, torch DataLoader"},
        "img_per_s_median": {k: round(v, 1) for k, v in med.items()},
        "img_per_s_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "ratio_loader_rrc_to_train_step": round(med["loader_rrc"] / med["train_step"], 2),
        "ratio_loader_pad_crop_to_train_step": round(med["loader_pad_crop"] / med["train_step"], 2),
        "ratio_loader_rrc_to_timm_workers2": round(med["loader_rrc"] / med["timm_workers2"], 2),
        "target_ratio": 3.0,
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(),
                    "torch_threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(),
                    "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
        "repeats": args.repeats,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
