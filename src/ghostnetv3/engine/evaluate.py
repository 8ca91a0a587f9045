"""`ghostnetv3 eval`: top-1/top-5 of a trained run — raw weights, EMA weights, and the fused EMA model.

The fused number is the one a deployment gets; it is measured, not assumed equal to the EMA one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ghostnetv3.rep import verify_fusion

from . import checkpoint as ckpt_io
from .config import from_checkpoint_dict
from .train import _val_loader, build_model, evaluate, load_datasets, reparameterize


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best.pt (else last.pt); a file is itself."""
    p = Path(path)
    if p.is_dir() and (p / ckpt_io.BEST).is_file():
        return p / ckpt_io.BEST
    return ckpt_io.find_checkpoint(p)


def evaluate_checkpoint(path: str | Path, *, data: Optional[str] = None, batch_size: Optional[int] = None,
                        val_subset: Optional[int] = None, device: Optional[str] = None,
                        val_set=None, confusion: bool = False) -> dict[str, Any]:
    """Returns {checkpoint, model, data, n, raw, ema (None without EMA), fused, fused_from, fusion_max_diff};
    raw/ema/fused are {top1, top5, loss, n} (fused also `confusion` when asked)."""
    ckpt_path = resolve_checkpoint(path)
    state = ckpt_io.load(ckpt_path)
    if "config" not in state or "state_dict" not in state:
        raise ValueError(f"{ckpt_path} is not a ghostnetv3 run checkpoint (no config inside); "
                         f"evaluate it by starting a run with --init-checkpoint, or use `ghostnetv3 fuse`")
    cfg = from_checkpoint_dict(state["config"]).replace(
        pretrained=False, init_checkpoint=None, resume=None,
        **{k: v for k, v in dict(data=data, batch_size=batch_size, val_subset=val_subset, device=device).items()
           if v is not None})
    dev = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if val_set is None:  # the run's own data path: in memory, or streamed (--data-mode) for big folders
        val_set = load_datasets(cfg, val_only=True)[1]
    if getattr(val_set, "classes", None) and len(val_set.classes) != state["num_classes"]:
        raise ValueError(f"{cfg.data} has {len(val_set.classes)} classes but {ckpt_path} was trained "
                         f"for {state['num_classes']}")
    loader = _val_loader(cfg, val_set, state["in_chans"], dev)

    def load(weights):
        m = build_model(cfg, state["num_classes"], state["in_chans"])
        m.load_state_dict(weights)
        return m.to(dev).eval()

    out: dict[str, Any] = {"checkpoint": str(ckpt_path), "model": state["model_name"], "data": cfg.data}
    raw = load(state["state_dict"])
    out["raw"] = evaluate(raw, loader, dev)
    out["ema"] = None
    src = raw
    if state.get("state_dict_ema") is not None:
        src = load(state["state_dict_ema"])
        out["ema"] = evaluate(src, loader, dev)
    out["fused_from"] = "ema" if out["ema"] is not None else "raw"
    fused = reparameterize(src)
    out["fused"] = evaluate(fused, loader, dev, confusion=confusion)
    x = next(iter(loader)).images[:16]
    out["fusion_max_diff"] = verify_fusion(src, fused, x)  # per-branch math vs the fused convs
    out["n"] = out["raw"]["n"]
    return out


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r['model']} on {r['data']} ({r['n']} images) — {r['checkpoint']}",
             f"{'weights':<14}{'top-1':>8}{'top-5':>8}{'loss':>9}"]
    for name, key in (("raw", "raw"), ("EMA", "ema"), (f"fused {r['fused_from']}", "fused")):
        m = r[key]
        if m is not None:
            lines.append(f"{name:<14}{m['top1']:>8.2f}{m['top5']:>8.2f}{m['loss']:>9.4f}")
    lines.append(f"fusion max |diff| of logits: {r['fusion_max_diff']:.2e}")
    return "\n".join(lines)
