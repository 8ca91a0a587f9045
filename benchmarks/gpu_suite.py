"""The GPU checks in one script (issue 23): what a lent CUDA machine should measure, in <= 8 minutes.

  python benchmarks/gpu_suite.py                    # on one CUDA GPU (bf16 autocast + channels_last)
  python benchmarks/gpu_suite.py --device cpu --quick   # the CPU smoke run the tests make (tiny sizes)

Prints one JSON object:
- train_step_224: img/s of a training step (SGD, batch 128, 224 px, AMP bf16, channels_last) of our
  GhostNetV3-1.0 train form, timm's `ghostnetv3_100` train form, and our fused form trained as is
  (interleaved rounds, medians; ratios ours/timm and fused/train);
- fashion_mnist_recipe: the shipped Fashion-MNIST recipe's loader and model at full speed for a fixed
  number of steps: img/s of the training steps, img/s of the data path alone (augmented batches on the
  device, no model), and the share of a step the data path would take (< 1: it keeps the GPU busy);
- latency: batch 1 and 32 inference of the fused model, PyTorch eager vs ONNX Runtime (the provider
  it ran on is named: CUDAExecutionProvider where onnxruntime-gpu is installed, else the CPU's).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import ghostnetv3
from ghostnetv3.data import BatchAugment, InMemoryLoader
from ghostnetv3.deploy.export import export_model
from ghostnetv3.engine.config import load_config
from ghostnetv3.engine.datasets import aug_config, load_datasets
from ghostnetv3.engine.model_factory import build_model
from ghostnetv3.rep import reparameterize

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def _step_fn(model, device, batch, size, classes, amp, in_chans=3):
    """One SGD step on a fixed random batch, in channels_last; returns a callable."""
    model = model.to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, in_chans, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)

    def step():
        with _autocast(device, amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _timed(fn, device, reps: int) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return time.perf_counter() - t


def _interleaved(fns: dict, device, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """img/s per entry: warm up each, then `rounds` interleaved blocks of `steps` steps; medians."""
    for fn in fns.values():
        _timed(fn, device, 2)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(batch * steps / _timed(fn, device, steps))
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def train_step_224(device, quick: bool, amp: bool) -> dict:
    # timm's ghostnet fails below 64 px (its DFC pool meets a 1x1 map)
    size, batch, name = (64, 4, "ghostnetv3_050") if quick else (224, 128, "ghostnetv3_100")
    torch.manual_seed(0)
    ours = ghostnetv3.create_model(name, num_classes=1000)
    fused = reparameterize(ours.eval())
    fns = {"ours_train": _step_fn(ours, device, batch, size, 1000, amp),
           "timm_train": _step_fn(timm.create_model(name, num_classes=1000), device, batch, size, 1000, amp),
           "ours_fused": _step_fn(fused, device, batch, size, 1000, amp)}
    ips = _interleaved(fns, device, batch, steps=2 if quick else 10, rounds=2 if quick else 5)
    return {"model": name, "img_size": size, "batch": batch, "amp_bf16": amp, "channels_last": True,
            "img_s": ips, "ours_over_timm": round(ips["ours_train"] / ips["timm_train"], 3),
            "fused_over_train": round(ips["ours_fused"] / ips["ours_train"], 3)}


def fashion_mnist_recipe(device, quick: bool, amp: bool) -> dict:
    steps = 4 if quick else 200
    cfg = load_config(REPO / "recipes/fashion_mnist.yaml", train_subset=None, val_subset=256,
                      device=str(device), channels_last=True)
    train_set, _ = load_datasets(cfg)
    in_chans = int(train_set.images.shape[1])
    augment = BatchAugment(aug_config(cfg, in_chans, train=True), seed=0)
    batch = 8 if quick else cfg.batch_size
    loader = InMemoryLoader(train_set, batch, augment, shuffle=True, drop_last=True, seed=0, device=device,
                            channels_last=True, prefetch=device.type != "cpu")
    model = build_model(cfg, len(train_set.classes), in_chans).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)

    def data_only():
        for i, b in enumerate(loader):
            if i + 1 >= steps:
                return b.images.sum()

    def train():
        for i, b in enumerate(loader):
            with _autocast(device, amp):
                loss = F.cross_entropy(model(b.images), b.labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i + 1 >= steps:
                return

    t_data = _timed(data_only, device, 1)
    t_train = _timed(train, device, 1)
    return {"recipe": "recipes/fashion_mnist.yaml", "model": cfg.model, "img_size": cfg.img_size, "batch": batch,
            "steps": steps, "train_img_s": round(batch * steps / t_train, 1),
            "data_only_img_s": round(batch * steps / t_data, 1),
            "data_share_of_step": round(t_data / t_train, 3)}


def latency(device, quick: bool) -> dict:
    import onnxruntime as ort  # lazy: the deploy extra; the training sections run without it

    size, name = (32, "ghostnetv3_050") if quick else (224, "ghostnetv3_100")
    fused = reparameterize(ghostnetv3.create_model(name, num_classes=1000).eval())
    out = {"model": name, "img_size": size}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_model(fused, path, "onnx", (3, size, size), dynamic_batch=True, log=lambda s: None)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        sess = ort.InferenceSession(str(path), providers=providers)
        out["onnx_provider"] = sess.get_providers()[0]
        model = fused.to(device).to(memory_format=torch.channels_last)
        for batch in (1, 32):
            x = torch.randn(batch, 3, size, size)
            xd = x.to(device).contiguous(memory_format=torch.channels_last)
            xn = {sess.get_inputs()[0].name: x.numpy()}
            eager, onnx = [], []
            with torch.no_grad():
                for r in range(4 if quick else 30):
                    eager.append(_timed(lambda: model(xd), device, 1) * 1e3)
                    t = time.perf_counter()
                    sess.run(None, xn)
                    onnx.append((time.perf_counter() - t) * 1e3)
            out[f"batch{batch}_ms"] = {"eager": round(statistics.median(eager[1:]), 3),
                                       "onnx": round(statistics.median(onnx[1:]), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU smoke test)")
    ap.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: train,recipe,latency")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    skip = set(filter(None, args.skip.split(",")))
    res = {"benchmark": "gpu_suite", "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "quick": args.quick}
    t0 = time.time()
    if "train" not in skip:
        res["train_step_224"] = train_step_224(device, args.quick, not args.no_amp)
    if "recipe" not in skip:
        res["fashion_mnist_recipe"] = fashion_mnist_recipe(device, args.quick, not args.no_amp)
    if "latency" not in skip:
        res["latency"] = latency(device, args.quick)
    res["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
