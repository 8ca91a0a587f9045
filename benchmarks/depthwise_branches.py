"""B depthwise k×k branches, each with its own batch-statistics BN, summed: as B separate conv+BN
(what `RepConv2d` runs) against one grouped conv with channel multiplier B (the input read once),
one BN over B·C channels and a sum. Forward + backward, NCHW and channels_last, interleaved
rounds, medians (ms). Prints JSON.

  python benchmarks/depthwise_branches.py                 # the GhostNetV3-0.5 fmnist32 shapes
  python benchmarks/depthwise_branches.py --preset imagenet224
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
import torch.nn.functional as F

# (channels, map size, kernel, stride) of the depthwise RepConv2d sites above SMALL_MAP_PIXELS
PRESETS = {
    "fmnist32": dict(batch=128, shapes=[(24, 16, 3, 2), (36, 8, 5, 2), (12, 16, 3, 1), (18, 8, 3, 1),
                                        (4, 16, 3, 1), (8, 16, 3, 1), (36, 4, 3, 1), (60, 4, 3, 1)]),
    "imagenet224": dict(batch=32, shapes=[(48, 112, 3, 2), (72, 56, 5, 2), (36, 56, 3, 1), (120, 28, 3, 1),
                                          (240, 28, 3, 2), (336, 14, 3, 1), (672, 14, 5, 2), (480, 7, 3, 1)]),
}


def separate(x, w, g, b, B, C, k, s):
    out = 0
    for i in range(B):
        z = F.conv2d(x, w[i * C:(i + 1) * C], None, s, k // 2, 1, C)
        out = out + F.batch_norm(z, None, None, g[i], b[i], True, 0.1, 1e-5)
    return out


def multiplier(x, w, g, b, B, C, k, s):
    wm = w.view(B, C, 1, k, k).transpose(0, 1).reshape(C * B, 1, k, k)
    z = F.conv2d(x, wm, None, s, k // 2, 1, C)
    z = F.batch_norm(z, None, None, g.t().reshape(-1), b.t().reshape(-1), True, 0.1, 1e-5)
    return z.unflatten(1, (C, B)).sum(2)


def time_shape(N, C, H, k, s, B, channels_last, steps, repeats):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(N, C, H, H).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(B * C, 1, k, k).contiguous(memory_format=fmt).requires_grad_()
    g, b = torch.rand(B, C, requires_grad=True), torch.rand(B, C, requires_grad=True)
    fns = {"separate": separate, "multiplier": multiplier}
    with torch.no_grad():
        ref = separate(x, w, g, b, B, C, k, s)
        err = float((multiplier(x, w, g, b, B, C, k, s) - ref).abs().max())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                f(x, w, g, b, B, C, k, s).sum().backward()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return {name: round(statistics.median(v), 3) for name, v in times.items()}, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="fmnist32")
    ap.add_argument("--branches", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    p = PRESETS[args.preset]
    rows = []
    for C, H, k, s in p["shapes"]:
        row = {"channels": C, "map": H, "kernel": k, "stride": s}
        for layout, cl in (("nchw", False), ("channels_last", True)):
            ms, err = time_shape(p["batch"], C, H, k, s, args.branches, cl, args.steps, args.repeats)
            row[layout] = ms
            row["max_abs_diff"] = max(row.get("max_abs_diff", 0.0), err)
        best = {name: min(row["nchw"][name], row["channels_last"][name]) for name in ("separate", "multiplier")}
        row["multiplier_over_separate_best_layouts"] = round(best["multiplier"] / best["separate"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"preset": args.preset, "batch": p["batch"], "branches": args.branches,
                      "threads": args.threads, "torch": torch.__version__,
                      "machine": f"{platform.machine()} {os.cpu_count()}-core",
                      "load_avg_1m": round(os.getloadavg()[0], 2),
                      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "rows": rows}))


if __name__ == "__main__":
    main()
