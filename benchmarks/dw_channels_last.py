"""A/B of `conv2d_cropped`'s channels_last switch for 5-tap depthwise convs (issue 11).

The same models and batch, one process: each training step runs either with the switch (5×5 and
1×5/5×1 depthwise convs of NCHW CPU tensors computed in channels_last, `rep.crop.
_depthwise_in_channels_last`) or without it (plain NCHW `F.conv2d`), alternating, medians of the
rounds. Train form and fused form of the Fashion-MNIST recipe's GhostNetV3-0.5 (1 ch, 32 px, stem 2,
batch 128), or GhostNetV3-1.0 at 224 px (`--preset imagenet224`, batch 8). Prints JSON.

  python benchmarks/dw_channels_last.py [--preset fmnist32|imagenet224] [--threads 2]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

import ghostnetv3
from ghostnetv3.rep import crop

PRESETS = {
    "fmnist32": dict(model="ghostnetv3_050", num_classes=10, in_chans=1, stem_stride=2, img=32, batch=128),
    "imagenet224": dict(model="ghostnetv3_100", num_classes=1000, in_chans=3, stem_stride=2, img=224, batch=8),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), default="fmnist32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    switch = crop._depthwise_in_channels_last
    x = torch.randn(p["batch"], p["in_chans"], p["img"], p["img"])
    y = torch.randint(0, p["num_classes"], (p["batch"],))
    load_before = os.getloadavg()[0]
    out = {}
    for form in ("train", "fused"):
        m = ghostnetv3.create_model(p["model"], num_classes=p["num_classes"], in_chans=p["in_chans"],
                                    stem_stride=p["stem_stride"])
        if form == "fused":
            m = ghostnetv3.reparameterize(m.eval())
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()

        times = {"with_switch": [], "nchw_only": []}
        try:
            for r in range(args.rounds + 1):
                for key in times:
                    crop._depthwise_in_channels_last = switch if key == "with_switch" else (lambda *a: False)
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        step()
                    if r:  # round 0 warms up both
                        times[key].append((time.perf_counter() - t0) / args.steps)
        finally:
            crop._depthwise_in_channels_last = switch
        img_s = {k: round(p["batch"] / statistics.median(v), 1) for k, v in times.items()}
        out[form] = dict(img_s=img_s, speedup=round(img_s["with_switch"] / img_s["nchw_only"], 3))
    print(json.dumps({"benchmark": "dw_channels_last", "preset": args.preset, "threads": args.threads,
                      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
                      "torch": torch.__version__, **out}, indent=1))


if __name__ == "__main__":
    main()
