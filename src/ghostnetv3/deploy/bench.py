"""Size and speed of a model in every form it ships in: params/MACs (train and fused form) and
latency (median, p90) of PyTorch eager fp32, onnxruntime fp32 and onnxruntime INT8.

Backends are timed interleaved (one call of each per round), so a load spike from another
process hits all of them alike instead of whichever happened to be running.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["bench", "time_interleaved", "summarize", "format_table", "machine_info"]

BACKENDS = ("torch_eager_fp32", "onnxruntime_fp32", "onnxruntime_int8")


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 30,
                     warmup: int = 5) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin after `warmup` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(seconds: Sequence[float], batch_size: int = 1) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    med = float(np.median(ms))
    return {"median_ms": round(med, 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "min_ms": round(float(ms.min()), 3), "images_per_s": round(batch_size * 1e3 / med, 1)}


def machine_info(threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "onnxruntime": ort.__version__, "load_avg_1m": round(os.getloadavg()[0], 2)}


def _count(model: nn.Module, input_size: Sequence[int]) -> tuple[int, Optional[int]]:
    try:
        from ghostnetv3.deploy.count import count_params_macs
    except ImportError:  # count.py not built yet: params only
        return sum(p.numel() for p in model.parameters()), None
    params, macs = count_params_macs(model, tuple(input_size))
    return int(params), int(macs)


def bench(spec: str, *, input_size: Optional[Sequence[int]] = None, batch_sizes: Sequence[int] = (1, 32),
          threads: Optional[int] = None, repeats: int = 30, warmup: int = 5,
          calib_data: Optional[str] = None, calib_size: int = 64, int8: bool = True,
          train_form: bool = False, log: Callable[[str], None] = print,
          weights: Optional[str] = None, checkpoint: Optional[str] = None) -> dict[str, Any]:
    """Benchmark MODEL_NAME | RUN_DIR | CHECKPOINT. INT8 is calibrated on `calib_data` (its
    train split) when given, else on random normal images (fine for latency, not for accuracy)."""
    from ghostnetv3.deploy.export import export_onnx, onnx_session, verify_export
    from ghostnetv3.deploy.load import load_for_deploy
    from ghostnetv3.deploy.prepare import to_deploy_form
    from ghostnetv3.deploy.quantize import eval_batches, quantize_onnx

    threads = int(threads or torch.get_num_threads())
    if any(b < 1 for b in batch_sizes) or repeats < 1:
        raise ValueError("batch sizes and --repeats must be positive")
    model, cfg = load_for_deploy(spec, weights=weights, checkpoint=checkpoint)
    if input_size:
        if len(input_size) != 3:
            raise ValueError(f"--input-size is C H W, got {list(input_size)}")
        input_size = tuple(int(s) for s in input_size)
    else:
        input_size = (int(cfg["in_chans"]), int(cfg["img_size"]), int(cfg["img_size"]))
    torch.set_num_threads(threads)
    fused, info = to_deploy_form(model, log=lambda m: None)
    p_train, m_train = _count(model, input_size)
    p_fused, m_fused = _count(fused, input_size)
    result: dict[str, Any] = {
        "model": cfg["model"], "source": str(spec), "weights": cfg.get("weights"),
        "weights_from": cfg.get("weights_from"),
        "input_size": list(input_size), "batch_sizes": list(batch_sizes), "repeats": repeats,
        "warmup": warmup, "machine": machine_info(threads),
        "params": {"train_form": p_train, "fused": p_fused},
        "macs": {"train_form": m_train, "fused": m_fused},
        "latency": []}

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(fused, Path(tmp) / "fp32.onnx", input_size, dynamic_batch=True, cfg=cfg)
        diff = verify_export(fused, fp32, "onnx", input_size, (1,))
        result["onnx_max_diff"] = diff
        sessions = {"onnxruntime_fp32": onnx_session(fp32, threads)}
        if int8:
            if calib_data:
                batches, _ = eval_batches(calib_data, "train", {**cfg, "in_chans": input_size[0],
                                                                 "img_size": input_size[1]}, calib_size)
                calib = (x for x, _ in batches)
            else:
                g = torch.Generator().manual_seed(0)
                calib = (torch.randn(8, *input_size, generator=g).numpy() for _ in range(max(1, calib_size // 8)))
            q = quantize_onnx(fp32, Path(tmp) / "int8.onnx", calib)
            result["int8_calibration"] = f"{calib_data}:train" if calib_data else "random normal images"
            result["int8_calib_images"] = q["calib_images"]
            sessions["onnxruntime_int8"] = onnx_session(Path(tmp) / "int8.onnx", threads)

        for b in batch_sizes:
            x = torch.randn(b, *input_size, generator=torch.Generator().manual_seed(b))
            xn = x.numpy()
            fns: dict[str, Callable[[], Any]] = {}
            if train_form:
                fns["torch_eager_fp32_train_form"] = lambda: _no_grad(model, x)
            fns["torch_eager_fp32"] = lambda: _no_grad(fused, x)
            for name, sess in sessions.items():
                inp = sess.get_inputs()[0].name
                fns[name] = (lambda s=sess, i=inp: s.run(None, {i: xn}))
            log(f"timing batch {b}: {', '.join(fns)} ({repeats} interleaved rounds, threads: {threads})")
            times = time_interleaved(fns, repeats, warmup)
            for name, t in times.items():
                result["latency"].append({"backend": name, "batch_size": b, **summarize(t, b)})
    eager = {r["batch_size"]: r["median_ms"] for r in result["latency"] if r["backend"] == "torch_eager_fp32"}
    for r in result["latency"]:
        r["vs_eager_fused"] = round(r["median_ms"] / eager[r["batch_size"]], 3)
    return result


@torch.no_grad()
def _no_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _fmt_count(n: Optional[int], unit: str) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M{unit}"


def format_table(r: dict[str, Any]) -> str:
    lines = [f"{r['model']} ({r.get('weights_from') or r['weights']}) at {'x'.join(map(str, r['input_size']))}, "
             f"threads: {r['machine']['threads']}",
             f"params: train form {_fmt_count(r['params']['train_form'], '')}, fused "
             f"{_fmt_count(r['params']['fused'], '')}; MACs: train form "
             f"{_fmt_count(r['macs']['train_form'], '')}, fused {_fmt_count(r['macs']['fused'], '')}"]
    rows = [("backend", "batch", "median ms", "p90 ms", "img/s", "vs eager")]
    for x in r["latency"]:
        rows.append((x["backend"], str(x["batch_size"]), f"{x['median_ms']:.2f}", f"{x['p90_ms']:.2f}",
                     f"{x['images_per_s']:.1f}", f"{x['vs_eager_fused']:.2f}x"))
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(row)) for row in rows]
    return "\n".join(lines)
