"""Training throughput (img/s) of the GhostNetV3 train form: ours vs timm's, and vs the fused form.

Prints JSON. Interleaves the models, repeats, and reports medians (the machine is shared/noisy).
  python benchmarks/train_step.py --img-size 224 --batch-size 32 --steps 3 --repeats 3
"""
from __future__ import annotations

import argparse
import datetime
import os
import json
import platform
import statistics
import time

import timm
import torch

import ghostnetv3
from ghostnetv3.rep import reparameterize


def build(name: str, channels_last: bool):
    if name == "ours_train":
        m = ghostnetv3.create_model("ghostnetv3_100")
    elif name == "ours_train_reference":  # every branch as its own conv+BN (the plain math)
        m = ghostnetv3.create_model("ghostnetv3_100")
        for mod in m.modules():
            if isinstance(mod, ghostnetv3.RepConv2d):
                mod.exact_fast_path = False
    elif name == "ours_train_linear":  # opt-in non-exact OREPA-style branches (not the paper's)
        m = ghostnetv3.create_model("ghostnetv3_100", linear_branches=True)
    elif name == "ours_fused":  # the deploy architecture trained as a plain network
        m = reparameterize(ghostnetv3.create_model("ghostnetv3_100").eval())
    elif name == "timm_train":
        m = timm.create_model("ghostnetv3_100")
    elif name == "timm_v2":
        m = timm.create_model("ghostnetv2_100")
    else:
        raise ValueError(name)
    m.train()
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def step_time(model, opt, x, y, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--models", default="ours_train,ours_fused,timm_train")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    names = args.models.split(",")
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,))
    models = {n: build(n, args.channels_last) for n in names}
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in models.items()}
    for n in names:  # warm-up
        step_time(models[n], opts[n], x, y, 1)
    times = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:  # interleaved
            times[n].append(step_time(models[n], opts[n], x, y, args.steps))
    med = {n: statistics.median(t) for n, t in times.items()}
    ips = {n: args.batch_size / t for n, t in med.items()}
    out = {
        "benchmark": "train_step", "img_size": args.img_size, "batch_size": args.batch_size,
        "threads": args.threads, "channels_last": args.channels_last, "steps": args.steps,
        "repeats": args.repeats, "torch": torch.__version__, "timm": timm.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={torch.get_num_threads()}",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "img_per_s_median": {n: round(v, 2) for n, v in ips.items()},
        "step_s_all": {n: [round(v, 4) for v in t] for n, t in times.items()},
    }
    if "ours_train" in ips and "timm_train" in ips:
        out["ours_train_vs_timm_train_speedup"] = round(ips["ours_train"] / ips["timm_train"], 3)
    if "ours_train" in ips and "ours_fused" in ips:
        out["ours_train_cost_vs_ours_fused"] = round(ips["ours_fused"] / ips["ours_train"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
