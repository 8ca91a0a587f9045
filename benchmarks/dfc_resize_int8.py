"""What the DFC gate's nearest-neighbour resizes cost in LiteRT INT8 (issue 14).

TFLite's XNNPACK delegate has no nearest resize, so each of GhostNetV3's 14 DFC gates splits the
delegated int8 graph and its RESIZE_NEAREST_NEIGHBOR runs as TFLite's own kernel. Before writing
those resizes as exact copies that XNNPACK could take, this measures the most that could gain: the
same fused GhostNetV3-1.0, once as shipped (nearest) and once with the gate resized bilinearly
(RESIZE_BILINEAR, which XNNPACK does delegate in int8; not the same numbers, a timing stand-in
only), both LiteRT INT8 at batch 1, timed in alternating blocks, medians. Prints JSON.

  python benchmarks/dfc_resize_int8.py [--threads 2] [--img-size 224]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import ghostnetv3
from ghostnetv3.deploy.bench import machine_info, summarize, time_blocks
from ghostnetv3.deploy.backends import litert
from ghostnetv3.deploy.runner import open_runner
from ghostnetv3.models import ghostnet


def bilinear_gate(self, x: torch.Tensor, size):
    """DFCAttention.forward with a bilinear instead of a nearest resize (timing stand-in)."""
    kernel = (min(2, int(x.shape[-2])), min(2, int(x.shape[-1])))
    gate = torch.sigmoid(self.short_conv(F.avg_pool2d(x, kernel, kernel)))
    return F.interpolate(gate, size=list(size), mode="bilinear", align_corners=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=60)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    size = (3, args.img_size, args.img_size)
    model = ghostnetv3.reparameterize(ghostnetv3.create_model("ghostnetv3_100").eval())
    calib = [torch.randn(8, *size).numpy()]  # latency only: random calibration images
    shipped = ghostnet.DFCAttention.forward
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, forward in (("nearest (shipped)", shipped), ("bilinear (delegated stand-in)", bilinear_gate)):
            ghostnet.DFCAttention.forward = forward
            try:
                path = litert.export_int8(model, Path(tmp) / f"{name.split()[0]}.tflite", size, calib)[0]
            finally:
                ghostnet.DFCAttention.forward = shipped
            runners[name] = open_runner(path, "tflite", args.threads)
        x = torch.randn(1, *size).numpy()
        load_before = os.getloadavg()[0]
        times = time_blocks({k: (lambda f=f: f(x)) for k, f in runners.items()}, repeats=args.repeats,
                            warmup=5, rounds=6)
    res = {k: summarize(v) for k, v in times.items()}
    near, bil = (res[k]["median_ms"] for k in runners)
    print(json.dumps({"benchmark": "dfc_resize_int8", "model": "ghostnetv3_100 fused", "input": list(size),
                      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "machine": dict(machine_info(args.threads), load_avg_1m=round(load_before, 2)),
                      "latency": res, "bilinear_over_nearest": round(bil / near, 3)}, indent=1))


if __name__ == "__main__":
    main()
