"""Training throughput (img/s) of the GhostNetV3 train form against its fused form and timm's.

Every model is timed in both memory layouts (NCHW and channels_last), all (model, layout) pairs
interleaved round by round, medians of the rounds; each model is then judged in its own fastest
layout.  Prints JSON.

  python benchmarks/train_step.py --preset fmnist32      # the Fashion-MNIST recipe's step
  python benchmarks/train_step.py --preset imagenet224   # GhostNetV3-1.0 vs timm's ghostnetv3_100

Models: ours_train (the recipe's train form: 3 branches + scale + identity, exact per-branch BN),
ours_plain (the deploy architecture trained as a plain network: one conv+BN per site),
ours_fused (`reparameterize` output, conv with bias per site, trained as is), timm_train (timm's
ghostnetv3_100 train form), ours_train_reference (every branch its own conv+BN, the plain math),
ours_train_linear (opt-in OREPA-style branches, not the paper's semantics).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import timm
import torch

import ghostnetv3
from ghostnetv3.rep import reparameterize

PRESETS = {
    "fmnist32": dict(model="ghostnetv3_050", in_chans=1, num_classes=10, stem_stride=2, img_size=32,
                     batch_size=128, models="ours_train,ours_plain,ours_fused"),
    "imagenet224": dict(model="ghostnetv3_100", in_chans=3, num_classes=1000, stem_stride=2, img_size=224,
                        batch_size=32, models="ours_train,ours_plain,ours_fused,timm_train"),
}


def build(name: str, p: dict) -> torch.nn.Module:
    kw = dict(num_classes=p["num_classes"], in_chans=p["in_chans"], stem_stride=p["stem_stride"])
    if name == "ours_train":
        m = ghostnetv3.create_model(p["model"], **kw)
    elif name == "ours_train_reference":
        m = ghostnetv3.create_model(p["model"], **kw)
        for mod in m.modules():
            if isinstance(mod, ghostnetv3.RepConv2d):
                mod.exact_fast_path = False
    elif name == "ours_train_linear":
        m = ghostnetv3.create_model(p["model"], linear_branches=True, **kw)
    elif name == "ours_plain":
        m = ghostnetv3.create_model(p["model"], num_conv_branches=1, scale_branch=False,
                                    identity_branch=False, **kw)
    elif name == "ours_fused":
        m = reparameterize(ghostnetv3.create_model(p["model"], **kw).eval())
    elif name == "timm_train":
        if p["in_chans"] != 3 or p["stem_stride"] != 2:
            raise ValueError("timm_train only for the imagenet224 preset")
        m = timm.create_model(p["model"], num_classes=p["num_classes"])
    else:
        raise ValueError(name)
    return m.train()


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
    ap.add_argument("--preset", choices=sorted(PRESETS), default="fmnist32")
    ap.add_argument("--models", default=None, help="comma list (default: the preset's)")
    ap.add_argument("--layouts", default="nchw,channels_last")
    ap.add_argument("--steps", type=int, default=3, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CPU / fp16 on CUDA")
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    dev = torch.device(args.device)
    names = (args.models or p["models"]).split(",")
    layouts = args.layouts.split(",")
    torch.manual_seed(0)
    x0 = torch.randn(p["batch_size"], p["in_chans"], p["img_size"], p["img_size"], device=dev)
    y = torch.randint(0, p["num_classes"], (p["batch_size"],), device=dev)
    runs = {}
    for n in names:
        for lay in layouts:
            torch.manual_seed(0)
            fmt = torch.channels_last if lay == "channels_last" else torch.contiguous_format
            m = build(n, p).to(dev, memory_format=fmt)
            runs[(n, lay)] = (m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
                              x0.contiguous(memory_format=fmt))
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16

    def timed(key, steps):
        m, opt, x = runs[key]
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=args.amp):
            t = step_time(m, opt, x, y, steps)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return t

    for key in runs:  # warm-up (first calls allocate, pick kernels, fill caches)
        timed(key, 1)
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key in runs:
            times[key].append(timed(key, args.steps))
    ips = {key: p["batch_size"] / statistics.median(t) for key, t in times.items()}
    best = {n: max(layouts, key=lambda lay: ips[(n, lay)]) for n in names}
    best_ips = {n: ips[(n, best[n])] for n in names}
    out = {
        "benchmark": "train_step", "preset": args.preset, **p, "threads": args.threads,
        "device": str(dev), "amp": args.amp, "steps": args.steps, "repeats": args.repeats,
        "torch": torch.__version__, "timm": timm.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "img_per_s_median": {f"{n}/{lay}": round(ips[(n, lay)], 2) for n, lay in runs},
        "best_layout": best, "best_img_per_s": {n: round(v, 2) for n, v in best_ips.items()},
        "step_s_all": {f"{n}/{lay}": [round(v, 4) for v in t] for (n, lay), t in times.items()},
    }
    if "ours_train" in best_ips:
        for ref in ("ours_fused", "ours_plain"):
            if ref in best_ips:  # cost of a train-form step in units of the reference's step
                out[f"ours_train_cost_vs_{ref}"] = round(best_ips[ref] / best_ips["ours_train"], 3)
        if "timm_train" in best_ips:
            out["ours_train_vs_timm_train_speedup"] = round(best_ips["ours_train"] / best_ips["timm_train"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
