"""A finished detection run: COCO mAP of raw / EMA / fused weights, export, latency."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ghostnetv3.deploy.bench import summarize, time_interleaved
from ghostnetv3.deploy.export import ExportMismatchError, export_model
from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.config import TrainConfig
from ghostnetv3.engine.run import Run
from ghostnetv3.rep import RepConv2d, reparameterize

from .model import DenseOutputs
from .task import DetectionTask


def load_run(run_dir: str | Path) -> tuple[dict, Any]:
    """(checkpoint dict, TrainConfig) of a detection run: its best.pt, else last.pt, or a file (engine.run)."""
    run = Run(run_dir)
    path, state = run.checkpoint_path, run.state
    if not isinstance(state, dict) or ckpt_io.CONFIG_KEY not in state or ckpt_io.RAW_KEY not in state:
        raise ValueError(f"{path} is not a ghostnetv3 run checkpoint (no config/state_dict)")
    if not any(k.startswith("head.classification_head") for k in state[ckpt_io.RAW_KEY]):
        raise ValueError(f"{path} holds a classification model, not a detector; use `ghostnetv3 eval`")
    return state, run.config


def build_from_state(state: dict, cfg, weights: str = "raw") -> nn.Module:
    """The detector of a run with its raw or EMA weights, in eval mode."""
    model = DetectionTask().build_model(cfg, state["num_classes"], state["in_chans"])
    sd = state["state_dict_ema"] if weights == "ema" else state["state_dict"]
    if sd is None:
        raise ValueError("this run has no EMA weights (trained with --model-ema false)")
    model.load_state_dict(sd)
    return model.eval()


def fuse_detector(model: nn.Module) -> nn.Module:
    return reparameterize(model.eval(), inplace=False).eval()


@torch.no_grad()
def fusion_diff(model: nn.Module, fused: nn.Module, x: torch.Tensor) -> float:
    """Max |unfused - fused| of the detector's dense head outputs (eval mode) on `x`."""
    reps = [m for m in model.modules() if isinstance(m, RepConv2d)]
    fast = [m.exact_fast_path for m in reps]
    try:
        for m in reps:  # the per-branch reference math, not the merged training fast path
            m.exact_fast_path = False
        a = DenseOutputs(model).eval()(x)
    finally:
        for m, f in zip(reps, fast):
            m.exact_fast_path = f
    b = DenseOutputs(fused).eval()(x)
    return float((a - b).abs().max())


def evaluate_run(run_dir: str | Path, *, data: Optional[str] = None, val_subset: Optional[int] = None,
                 device: Optional[str] = None) -> dict[str, Any]:
    """COCO mAP@[.5:.95] / mAP@.5 of a run's raw, EMA and fused weights on its validation set."""
    state, cfg = load_run(run_dir)
    changes = {k: v for k, v in {"data": data, "val_subset": val_subset}.items() if v is not None}
    cfg = cfg.replace(**changes, train_subset=1) if changes else cfg.replace(train_subset=1)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    task = DetectionTask()
    _, val_set = task.load_datasets(cfg)
    loader = task.val_loader(cfg, val_set, dev)
    result: dict[str, Any] = {"run": str(run_dir), "data": cfg.data, "model": cfg.model, "images": len(val_set),
                              "best_source": state.get("best_source"), "rows": []}
    sources = ["raw"] + (["ema"] if state.get("state_dict_ema") is not None else [])
    sample = val_set.images[:2].float().div(255)
    for src in sources:
        model = build_from_state(state, cfg, src).to(dev)
        m = task.evaluate(model, loader, dev)
        result["rows"].append({"weights": src, "map": m["map"], "map50": m["map50"]})
        fused = fuse_detector(model)
        m = task.evaluate(fused, loader, dev)
        result["rows"].append({"weights": f"{src} fused", "map": m["map"], "map50": m["map50"],
                               "fusion_max_diff": fusion_diff(model, fused, sample.to(dev))})
    return result


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r['run']}  ({r['model']}, {r['data']}, {r['images']} val images, best.pt from {r['best_source']})",
             f"{'weights':<12} {'mAP@[.5:.95]':>13} {'mAP@.5':>8}  fused vs unfused"]
    for row in r["rows"]:
        diff = f"{row['fusion_max_diff']:.2e}" if "fusion_max_diff" in row else ""
        lines.append(f"{row['weights']:<12} {row['map']:>13.2f} {row['map50']:>8.2f}  {diff}")
    return "\n".join(lines)


def export_run(run_dir: str | Path, output: str | Path, *, weights: Optional[str] = None,
               tolerance: float = 1e-3, log=print) -> dict[str, Any]:
    """Fuse the run's detector, check fused vs unfused dense outputs, export them (ONNX or
    TorchScript by the file suffix) and check the file against PyTorch. Raises
    ExportMismatchError beyond `tolerance` (either check)."""
    out = Path(output)
    fmt = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}.get(out.suffix)
    if fmt is None:
        raise ValueError(f"{out}: the suffix picks the format: .onnx (ONNX) or .pt (TorchScript)")
    state, cfg = load_run(run_dir)
    weights = weights or ("ema" if state.get("best_source") == "ema" else "raw")
    model = build_from_state(state, cfg, weights)
    size = (state["in_chans"], cfg.img_size, cfg.img_size)
    sample = torch.rand(2, *size, generator=torch.Generator().manual_seed(0))
    fused = fuse_detector(model)
    diff = fusion_diff(model, fused, sample)
    log(f"fusion check ({weights} weights): max |unfused - fused| of the head outputs = {diff:.3g}")
    if not diff <= tolerance:
        raise ExportMismatchError(f"the fused detector differs from the unfused one by {diff:.3g} > "
                                  f"tolerance {tolerance:g}; nothing exported", diff)
    meta = dict(cfg.to_dict(), num_classes=state["num_classes"], in_chans=state["in_chans"], weights=weights,
                source=str(run_dir))
    report = export_model(DenseOutputs(fused).eval(), out, fmt, input_size=size, tolerance=tolerance,
                          cfg=meta, log=lambda m: None)
    report.update({"weights": weights, "detector_fusion_max_diff": diff,
                   "outputs": "[B, locations, classes+1 logits | 4 box regression | 1 centerness]"})
    return report


@torch.no_grad()
def bench_detector(spec: str, *, img_size: Optional[int] = None, batch_size: int = 1, threads: Optional[int] = None,
                   repeats: int = 20, warmup: int = 3, num_classes: int = 10, in_chans: int = 1) -> dict[str, Any]:
    """Latency of the whole detector (backbone, FPN, head, decoding, NMS), train form vs fused.
    `spec`: a run directory, or a backbone name for random weights."""
    if threads:
        torch.set_num_threads(threads)
    if Path(spec).exists():
        state, cfg = load_run(spec)
        model = build_from_state(state, cfg, "raw")
        in_chans, size = state["in_chans"], img_size or cfg.img_size
    else:
        size = img_size or 96
        cfg = TrainConfig(model=spec, img_size=size)
        model = DetectionTask().build_model(cfg, num_classes, in_chans).eval()
    fused = fuse_detector(model)
    x = list(torch.rand(batch_size, in_chans, size, size, generator=torch.Generator().manual_seed(0)))
    times = time_interleaved({"train_form": lambda: model(x), "fused": lambda: fused(x)}, repeats, warmup)
    return {"model": cfg.model, "img_size": size, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
            "latency": {k: summarize(v, batch_size) for k, v in times.items()},
            "params": {"train_form": sum(p.numel() for p in model.parameters()),
                       "fused": sum(p.numel() for p in fused.parameters())}}
