"""`ghostnetv3 eval`: top-1/top-5 of a trained run — raw weights, EMA weights, and the fused model.

The fused row is the model `export` writes and `predict` runs (engine.run picks it:
best.pt and the weights its validation picked, unless --checkpoint / --weights say otherwise). It
is measured, not assumed equal to the unfused number.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from ghostnetv3.data.inputspec import InputSpec
from ghostnetv3.rep import verify_fusion

from .config import TrainConfig, check_subset_size, from_checkpoint_dict
from .splits import check_eval_classes, describe_subset, val_subset_seed
from .datasets import load_datasets
from .splits import val_subset as val_subset_of
from .loaders import val_loader
from .loop import validate
from .model_factory import build_model, reparameterize
from .run import Run

ALL = "all"  # --val-subset all: every image of the validation split


def parse_val_subset(value) -> Optional[int] | str:
    """CLI --val-subset: N, or 'all'/0 for the whole validation split; None keeps the run's."""
    if value is None:
        return None
    if str(value).strip().lower() in (ALL, "0", "none"):
        return ALL
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--val-subset: expected a number of images or 'all', got {value!r}") from None
    check_subset_size("val_subset", n)  # train's rule
    return n


class _Progress:
    """A loader that shows a progress bar on stderr while it is iterated (eval is otherwise silent)."""

    def __init__(self, loader, desc: str, enabled: bool):
        self.loader, self.desc, self.enabled = loader, desc, enabled

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        try:
            total = len(self.loader)
        except TypeError:
            total = None
        with tqdm(total=total, desc=self.desc, file=sys.stderr, disable=not self.enabled, leave=False,
                  mininterval=1.0, dynamic_ncols=True) as bar:
            for batch in self.loader:
                yield batch
                bar.update(1)


def evaluate_checkpoint(path: str | Path, *, data: Optional[str] = None, batch_size: Optional[int] = None,
                        val_subset: Optional[int | str] = None, device: Optional[str] = None,
                        val_set=None, confusion: bool = False, weights: Optional[str] = None,
                        checkpoint: Optional[str] = None, progress: bool = False) -> dict[str, Any]:
    """Returns {checkpoint, model, data, n, val_set (which images, in words), val_subset_seed, raw, ema (None
    without EMA), fused, fused_from, weights_why, fusion_max_diff, eval_transform (in words)}; raw/ema/fused
    are {top1, top5, loss, n} (fused also `confusion` when asked).

    `val_subset`: None keeps the run's validation set (what picked best.pt), 'all' scores the whole split.
    `weights`/`checkpoint`: which weights are fused (engine.run's rule; default the shipped ones)."""
    run = Run(path, checkpoint=checkpoint)
    choice = run.choose(weights)
    ckpt_path, state = choice.path, choice.state
    if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
        raise ValueError(f"{ckpt_path} is not a ghostnetv3 run checkpoint (no config inside); "
                         f"evaluate it by starting a run with --init-checkpoint, or use `ghostnetv3 fuse`")
    run.report_config_edits()  # the checkpoint's config is the truth
    cfg = _eval_config(state["config"], data=data, batch_size=batch_size, device=device, val_subset=val_subset)
    dev = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    total = None
    if val_set is None:  # the run's own data path: in memory, or streamed (--data-mode) for big folders
        val_set, total = _load_val_set(cfg)
    check_eval_classes(cfg.data, val_set, state, ckpt_path)  # count and names
    loader = val_loader(cfg, val_set, state["in_chans"], dev)

    def load(sd):
        m = build_model(cfg, state["num_classes"], state["in_chans"])
        m.load_state_dict(sd)
        return m.to(dev).eval()

    def score(model, what, **kw):
        return validate(model, _Progress(loader, f"eval {what}", progress), dev, **kw)

    which = (describe_subset(len(val_set.labels), total, cfg.seed) if hasattr(val_set, "labels")
             else "the whole validation stream")
    run_subset = state["config"].get("val_subset")
    if val_subset is None and run_subset is not None:
        which = f"the run's own validation set: {which}; --val-subset all scores the whole split"
    out: dict[str, Any] = {"checkpoint": str(ckpt_path), "model": state["model_name"], "data": cfg.data,
                           "val_set": which,
                           "val_subset_seed": val_subset_seed(cfg.seed) if cfg.val_subset is not None else None}
    raw = load(state["state_dict"])
    out["raw"] = score(raw, "raw")
    out["ema"] = None
    ema = None
    if state.get("state_dict_ema") is not None:
        ema = load(state["state_dict_ema"])
        out["ema"] = score(ema, "EMA")
    src = ema if choice.weights == "ema" else raw
    out["fused_from"] = "ema" if choice.weights == "ema" else "raw"
    out["weights_why"] = choice.reason
    fused = reparameterize(src)
    out["fused"] = score(fused, "fused", confusion=confusion)
    x = next(iter(loader)).images[:16]
    out["fusion_max_diff"] = verify_fusion(src, fused, x)  # per-branch math vs the fused convs
    out["n"] = out["raw"]["n"]
    out["eval_transform"] = _transform_text(InputSpec.from_config(cfg, in_chans=state["in_chans"]), raw)
    return out


def _eval_config(saved: dict[str, Any], *, data, batch_size, device, val_subset) -> TrainConfig:
    """The run's config as saved in its checkpoint, with what eval was told to change."""
    changes = {k: v for k, v in dict(data=data, batch_size=batch_size, device=device).items() if v is not None}
    if val_subset is not None:
        changes["val_subset"] = None if val_subset == ALL else val_subset
    return from_checkpoint_dict(saved).replace(pretrained=False, init_checkpoint=None, resume=None, **changes)


def _load_val_set(cfg: TrainConfig):
    """(the validation set `cfg` scores, the size of its whole split; None for an iterable source). The
    subset is `splits.val_subset`, as in training and `quantize --eval-size`."""
    full = load_datasets(cfg.replace(val_subset=None), val_only=True)[1]
    if getattr(full, "iterable", False):
        return full, None
    return val_subset_of(full, cfg.val_subset, cfg.seed), len(full.labels)


def _transform_text(spec: InputSpec, model) -> str:
    """The eval transform in words; when the model's timm pretrained_cfg (ImageNet's recipe) says
    otherwise, that it is not what this run is scored with."""
    text = spec.describe()
    pc = getattr(model, "pretrained_cfg", None) or {}
    theirs = (pc.get("interpolation"), pc.get("crop_pct"))
    if theirs[0] is not None and theirs != (spec.interpolation, spec.crop_pct):
        text += (f" — as the run validated (the model's pretrained_cfg says {theirs[0]}, crop_pct {theirs[1]:g}: "
                 f"timm's ImageNet recipe, not this run's)")
    return text


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r['model']} on {r['data']}, {r.get('val_set') or str(r['n']) + ' validation images'} — "
             f"{r['checkpoint']}",
             f"{'weights':<14}{'top-1':>8}{'top-5':>8}{'loss':>9}"]
    for name, key in (("raw", "raw"), ("EMA", "ema"), (f"fused {r['fused_from']}", "fused")):
        m = r[key]
        if m is not None:
            lines.append(f"{name:<14}{m['top1']:>8.2f}{m['top5']:>8.2f}{m['loss']:>9.4f}")
    lines.append(f"fusion max |diff| of logits: {r['fusion_max_diff']:.2e}")
    if r.get("eval_transform"):
        lines.append(f"eval transform: {r['eval_transform']}")
    lines.append(f"fused = what `export` and `predict` ship: {'EMA' if r['fused_from'] == 'ema' else 'raw'} weights "
                 f"of {Path(r['checkpoint']).name} ({r.get('weights_why', '')}); "
                 f"choose with --weights raw|ema --checkpoint best|last")
    return "\n".join(lines)
