"""`ghostnetv3 predict SOURCE IMAGE... [--topk 5]`: class scores of images, from a run, a checkpoint,
a model name or an exported file (.onnx, .tflite, .pte, .xml).

A run or checkpoint is fused first (the model `export` writes: same --weights/--checkpoint rule as
`eval`); images go through the data layer's own load-time resize and eval transform, each converted
to the model's channels (gray or colour) as training converts them, so a picture scores as the
validation images did. An exported file is fed as the input contract it carries says (size,
channels, mean/std, crop), and run in its own runtime. IMAGE may be a file, a folder (its images,
recursively) or a quoted glob pattern. The command line lives in `ghostnetv3/commands/predict.py`.
"""
from __future__ import annotations

import contextlib
import glob
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ghostnetv3.data.inputspec import EvalTransform, InputSpec
from ghostnetv3.data.datasets import IMG_EXTENSIONS, decode_image, short_side_center_crop, shown, to_chw
from ghostnetv3.deploy.contract import read_input_contract
from ghostnetv3.deploy.backends import EDGE_FORMATS
from ghostnetv3.deploy.load import load_for_deploy
from ghostnetv3.deploy.prepare import to_deploy_form
from ghostnetv3.deploy.runner import open_runner
from ghostnetv3.deploy.steps import quiet_output

__all__ = ["predict", "format_predictions", "expand_images", "load_images", "EXPORTED_SUFFIXES"]

# exported files predict runs in their own runtime: suffix -> format
EXPORTED_SUFFIXES = {".onnx": "onnx", **{suffix: fmt for fmt, suffix in EDGE_FORMATS.items()}}
_CHUNK = 64  # images decoded and scored at a time: a folder of thousands never sits in memory at once


# ---- images -------------------------------------------------------------------------------------
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())


def expand_images(items: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders as their images (recursively, sorted); glob patterns (quoted, so the
    shell left them) as the images they match. Each file once, in the order given."""
    out: dict[Path, None] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = _images_in(p)
            if not found:
                raise ValueError(f"folder {shown(p)} has no images ({', '.join(IMG_EXTENSIONS)})")
        elif p.is_file():
            found = [p]
        elif glob.has_magic(str(item)):
            found = [f for m in sorted(glob.glob(str(item), recursive=True))
                     for f in (_images_in(Path(m)) if Path(m).is_dir() else [Path(m)])
                     if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS]
            if not found:
                raise FileNotFoundError(f"no image matches {shown(str(item))} ({', '.join(IMG_EXTENSIONS)})")
        else:
            raise FileNotFoundError(f"no such image: {shown(p)}")
        out.update(dict.fromkeys(found))
    return list(out)


def _aug(cfg: dict[str, Any]) -> EvalTransform:
    """The eval transform the run validated with (its interpolation too): data.InputSpec."""
    return InputSpec.from_config(cfg, img_size=int(cfg["img_size"])).eval_transform()


def _model_channels(cfg: dict[str, Any]) -> int:
    c = int(cfg["in_chans"])
    if c not in (1, 3):
        raise ValueError(f"the model takes {c}-channel input; predict reads images as gray (1) or colour (3)")
    return c


def _read_one(path: Path, channels: int, size: int) -> torch.Tensor | Exception:
    """uint8 CHW at the model's channels and size, or the reason it cannot be read. A colour file for
    a gray model becomes luma, a gray file for a colour model is replicated: as training reads a set."""
    a = decode_image(path)
    if isinstance(a, Exception):
        return a
    return short_side_center_crop(to_chw(a, channels), size)


def _decoded(paths: Sequence[Path], cfg: dict[str, Any], on_bad_image: str,
             skipped: list[dict[str, str]]) -> tuple[list[Path], list[torch.Tensor]]:
    channels, size = _model_channels(cfg), int(cfg["img_size"])
    kept, tensors = [], []
    for p in paths:
        t = _read_one(p, channels, size)
        if isinstance(t, Exception):
            why = f"{type(t).__name__}: {t}"
            if on_bad_image == "fail":
                reads = "" if p.suffix.lower() in IMG_EXTENSIONS else f"; predict reads {', '.join(IMG_EXTENSIONS)}"
                raise ValueError(f"cannot read image {shown(p)} ({why}){reads}; fix or delete it, or pass "
                                 f"--on-bad-image skip")
            skipped.append({"image": shown(p), "error": why})
            continue
        kept.append(p)
        tensors.append(t)
    return kept, tensors


def load_images(paths: Sequence[str | Path], cfg: dict[str, Any]) -> torch.Tensor:
    """NCHW float batch: decoded, converted to the model's channels, resized at load (short side,
    centre crop) and eval-transformed."""
    files = [Path(p) for p in paths]
    for p in files:
        if not p.is_file():
            raise FileNotFoundError(f"no such image: {shown(p)}")
    _, tensors = _decoded(files, cfg, "fail", [])
    u8 = torch.stack(tensors)
    return _aug(cfg)(u8, torch.arange(len(u8)), 0)


def _batches(paths: Sequence[Path], cfg: dict[str, Any], on_bad_image: str,
             skipped: list[dict[str, str]]) -> Iterator[tuple[list[Path], torch.Tensor]]:
    aug = _aug(cfg)
    for i in range(0, len(paths), _CHUNK):
        kept, tensors = _decoded(paths[i:i + _CHUNK], cfg, on_bad_image, skipped)
        if kept:
            u8 = torch.stack(tensors)
            yield kept, aug(u8, torch.arange(len(u8)), 0)


# ---- sources ------------------------------------------------------------------------------------
def _exported_runner(source: str, fmt: str, threads: Optional[int]) -> Callable:
    """images -> logits through an exported file, in its own runtime (`deploy.runner.open_runner`
    feeds a fixed-batch file any batch: chunks of its size, the last one padded)."""
    quiet = quiet_output if fmt != "onnx" else contextlib.nullcontext  # the runtimes' own lines
    with quiet():  # (XNNPACK delegate, cpuinfo) are not the user's
        run = open_runner(source, fmt, threads)

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with quiet():
            return torch.from_numpy(np.asarray(run(np.ascontiguousarray(x.numpy()))))
    return run_torch


def _load_exported(source: str, fmt: str, arch: dict[str, Any], weights: Optional[str],
                   checkpoint: Optional[str], threads: Optional[int]) -> tuple[Callable, dict[str, Any]]:
    if weights or checkpoint:
        raise ValueError(f"{source} is an exported file: its weights were chosen at export; "
                         f"drop --weights/--checkpoint")
    fixed = [flag for flag, key in (("--model", "model"), ("--num-classes", "num_classes")) if arch.get(key)]
    if fixed:
        raise ValueError(f"{source} is an exported file: its architecture was fixed at export; "
                         f"drop {' and '.join(fixed)}")
    try:  # size and channels from the file, else its fixed input shape, else --in-chans/--img-size
        cfg = read_input_contract(source, arch.get("in_chans"), arch.get("img_size"))
    except ValueError as e:
        given = [f for f, k in (("--in-chans", "in_chans"), ("--img-size", "img_size")) if arch.get(k)]
        hint = f"drop {' or '.join(given)}" if "fixed at export" in str(e) else "pass --in-chans C --img-size N"
        raise ValueError(f"{e}; {hint}") from None
    run = _exported_runner(source, fmt, threads)
    cfg.setdefault("model", Path(source).name)
    cfg["weights_from"] = f"exported {fmt} file ({cfg.get('weights', '?')} weights)"
    return run, cfg


def _load_source(source: str, weights: Optional[str], checkpoint: Optional[str],
                 arch: Optional[dict[str, Any]] = None, threads: Optional[int] = None
                 ) -> tuple[Callable, dict[str, Any]]:
    """(callable images -> logits, cfg) for RUN_DIR | CHECKPOINT | MODEL_NAME | exported FILE.
    `arch`: model, num_classes, in_chans, img_size given on the command line (None: unset);
    `threads`: an exported file's runtime threads (None: the runtime's default)."""
    arch = {k: v for k, v in (arch or {}).items() if v is not None}
    fmt = EXPORTED_SUFFIXES.get(Path(source).suffix.lower())
    if fmt:
        return _load_exported(source, fmt, arch, weights, checkpoint, threads)
    model, cfg = load_for_deploy(source, weights=weights, checkpoint=checkpoint, **arch)
    fused, _ = to_deploy_form(model, log=lambda m: None)
    fused.eval()
    if cfg.get("weights") == "random":
        cfg["weights_from"] = "random weights: a model name has no trained weights; pass a run or checkpoint"

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fused(x)
    return run, cfg


# ---- predict ------------------------------------------------------------------------------------
def _top(probs: torch.Tensor, paths: Sequence[Path], topk: int, classes) -> list[dict[str, Any]]:
    p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [{"image": shown(path), "top": [
        {"class": classes[i] if classes and i < len(classes) else str(i), "index": i, "prob": q}
        for q, i in zip(pi, ii)]} for path, pi, ii in zip(paths, p.tolist(), idx.tolist())]


def predict(source: str, images: Sequence[str | Path], *, topk: int = 5, weights: Optional[str] = None,
            checkpoint: Optional[str] = None, model: Optional[str] = None, num_classes: Optional[int] = None,
            in_chans: Optional[int] = None, img_size: Optional[int] = None,
            on_bad_image: str = "fail", threads: Optional[int] = None) -> dict[str, Any]:
    """{model, source, weights, input, images: [{image, top: [{class, index, prob}]}], skipped}.
    images: files, folders or glob patterns. on_bad_image: "fail" stops at an unreadable image,
    naming it; "skip" leaves it out and lists it under `skipped`. threads: an exported file's runtime
    threads (torch's are the caller's, `--threads` in the CLI)."""
    if topk < 1:
        raise ValueError(f"--topk must be at least 1, got {topk}")
    if on_bad_image not in ("fail", "skip"):
        raise ValueError(f"--on-bad-image {on_bad_image!r}: use fail or skip")
    arch = {"model": model, "num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}
    for key in ("num_classes", "in_chans", "img_size"):
        if arch[key] is not None and arch[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {arch[key]}")
    paths = expand_images(images)
    run, cfg = _load_source(str(source), weights, checkpoint, arch, threads)
    out: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for kept, x in _batches(paths, cfg, on_bad_image, skipped):
        out += _top(run(x).float().softmax(dim=1), kept, topk, cfg.get("classes"))
    if not out:
        raise ValueError(f"no readable image among the {len(paths)} given (e.g. {skipped[0]['image']}: "
                         f"{skipped[0]['error']})")
    return {"model": cfg["model"], "source": str(source), "weights": cfg.get("weights_from"),
            "input": [int(cfg["in_chans"]), int(cfg["img_size"]), int(cfg["img_size"])], "images": out,
            "skipped": skipped}


def format_predictions(r: dict[str, Any]) -> str:
    lines = [f"{r['model']} ({r['weights']}), input {'x'.join(map(str, r['input']))}"]
    for item in r["images"]:
        lines.append(item["image"])
        for t in item["top"]:
            lines.append(f"  {100 * t['prob']:6.2f}%  {t['class']}")
    for s in r.get("skipped", []):
        lines.append(f"skipped {s['image']} ({s['error']})")
    return "\n".join(lines)
