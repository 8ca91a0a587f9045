"""What does our deploy path buy? GhostNetV3-1.0 at 224 px, batch 1, 2 threads, CPU.

Side by side in one run, timed interleaved (one call of each per round) and repeated, medians:
- ours, fused, onnxruntime fp32 and INT8 (QDQ, per-channel; calibrated on random images, which
  is fine for latency and says nothing about accuracy);
- ours, fused, PyTorch eager (what onnxruntime is compared with on equal terms);
- timm's `ghostnetv3_100` fused with `timm.utils.reparameterize_model`, PyTorch eager — the
  baseline; target: our onnxruntime fp32 <= 0.5x its latency;
- ours in train form vs fused form, PyTorch eager: what fusion alone buys.
Prints one JSON object.

    python benchmarks/deploy_latency.py [--repeats 50] [--threads 2] [--img-size 224]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path

import torch

from ghostnetv3.deploy.bench import machine_info, summarize, time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ghostnetv3_100")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()

    import timm
    from timm.utils import reparameterize_model

    from ghostnetv3.deploy.export import export_onnx, onnx_session, verify_export
    from ghostnetv3.deploy.prepare import to_deploy_form
    from ghostnetv3.deploy.quantize import quantize_onnx
    from ghostnetv3.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = (3, args.img_size, args.img_size)
    load_before = os.getloadavg()[0]

    ours_train = create_model(args.model).eval()
    ours_fused, _ = to_deploy_form(ours_train, log=lambda m: None)
    timm_fused = reparameterize_model(timm.create_model(args.model).eval())

    x = torch.randn(args.batch_size, *size)
    xn = x.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(ours_fused, Path(tmp) / "fp32.onnx", size, dynamic_batch=True)
        onnx_diff = verify_export(ours_fused, fp32, "onnx", size, (1,))
        g = torch.Generator().manual_seed(0)
        quantize_onnx(fp32, Path(tmp) / "int8.onnx",
                      (torch.randn(8, *size, generator=g).numpy() for _ in range(4)))
        s32 = onnx_session(fp32, args.threads)
        s8 = onnx_session(Path(tmp) / "int8.onnx", args.threads)

        @torch.no_grad()
        def eager(m):
            return lambda: m(x)

        fns = {
            "timm_fused_eager": eager(timm_fused),
            "ours_fused_onnxruntime_fp32": lambda: s32.run(None, {"input": xn}),
            "ours_fused_onnxruntime_int8": lambda: s8.run(None, {"input": xn}),
            "ours_fused_eager": eager(ours_fused),
            "ours_train_form_eager": eager(ours_train),
        }
        times = time_interleaved(fns, args.repeats, args.warmup)

    res = {name: summarize(t, args.batch_size) for name, t in times.items()}
    base = res["timm_fused_eager"]["median_ms"]
    out = {
        "benchmark": "deploy_latency",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model, "input": [args.batch_size, *size], "repeats": args.repeats,
        "warmup": args.warmup, "timing": "interleaved rounds, one call of each backend per round",
        "machine": {**machine_info(args.threads), "load_avg_1m_before": round(load_before, 2),
                    "load_avg_1m_after": round(os.getloadavg()[0], 2)},
        "onnx_max_diff_vs_torch": onnx_diff,
        "latency": res,
        "ratio_vs_timm_fused_eager": {k: round(v["median_ms"] / base, 3) for k, v in res.items()},
        "target": "ours_fused_onnxruntime_fp32 <= 0.5x timm_fused_eager",
        "target_met": res["ours_fused_onnxruntime_fp32"]["median_ms"] <= 0.5 * base,
        "fusion_speedup_eager": round(res["ours_train_form_eager"]["median_ms"]
                                      / res["ours_fused_eager"]["median_ms"], 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
