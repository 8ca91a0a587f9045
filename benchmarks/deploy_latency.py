"""What does our deploy path buy? GhostNetV3-1.0 at 224 px, 2 threads, CPU, every backend.

One run of `ghostnetv3.deploy.bench.bench` (each backend timed alone in its own block, repeated
in several passes; onnxruntime's threads do not spin between runs) on our fused model in PyTorch
eager, onnxruntime, OpenVINO, ExecuTorch/XNNPACK and LiteRT, fp32 and INT8 (calibrated on random
images: fine for latency, says nothing about accuracy; see `ghostnetv3 quantize` for that), plus
the baseline in the same blocks: timm's `ghostnetv3_100` fused with `timm.utils.reparameterize_model`,
exported to ONNX and run in onnxruntime.

Targets (ratios within this one run, batch 1):
- fastest fp32 backend for our model <= 0.75x the timm ONNX baseline;
- fastest INT8 backend <= 0.6x our fastest fp32 (the top-1 side is measured by `quantize`).
Prints one JSON object; `--report DIR` also writes the markdown table and bar chart.

    python benchmarks/deploy_latency.py [--repeats 30] [--threads 2] [--img-size 224] [--report DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ghostnetv3_100")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", default="all")
    ap.add_argument("--report", default=None, metavar="DIR")
    args = ap.parse_args()

    import timm
    from timm.utils import reparameterize_model

    from ghostnetv3.deploy.bench import bench, write_report
    from ghostnetv3.deploy.export import export_onnx, onnx_session

    torch.set_num_threads(args.threads)
    size = (3, args.img_size, args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        timm_fused = reparameterize_model(timm.create_model(args.model).eval())
        timm_onnx = export_onnx(timm_fused, Path(tmp) / "timm.onnx", size, dynamic_batch=True)
        sess = onnx_session(timm_onnx, args.threads)
        baseline = "timm_fused_onnxruntime_fp32"
        r = bench(args.model, input_size=size, batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                  threads=args.threads, repeats=args.repeats, warmup=args.warmup, rounds=args.rounds,
                  backends=args.backends, extra={baseline: lambda x: sess.run(None, {"input": x})[0]},
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    b1 = {x["backend"]: x["median_ms"] for x in r["latency"] if x["batch_size"] == 1}
    ours = {k: v for k, v in b1.items() if k != baseline and not k.endswith("train_form")}
    fp32 = min((k for k in ours if k.endswith("fp32")), key=ours.get)
    int8s = [k for k in ours if k.endswith("int8")]
    targets = {"baseline": baseline, "baseline_ms": b1.get(baseline),
               "fastest_fp32": fp32, "fastest_fp32_ms": ours[fp32],
               "fp32_vs_baseline": round(ours[fp32] / b1[baseline], 3) if baseline in b1 else None}
    targets["fp32_target_met (<= 0.75)"] = targets["fp32_vs_baseline"] is not None and targets["fp32_vs_baseline"] <= 0.75
    if int8s:
        i8 = min(int8s, key=ours.get)
        targets.update(fastest_int8=i8, fastest_int8_ms=ours[i8], int8_vs_fastest_fp32=round(ours[i8] / ours[fp32], 3))
        targets["int8_speed_target_met (<= 0.6)"] = targets["int8_vs_fastest_fp32"] <= 0.6
    r["benchmark"] = "deploy_latency"
    r["targets_batch1"] = targets
    if args.report:
        write_report(r, args.report)
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
