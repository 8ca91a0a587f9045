"""`ghostnetv3 predict SOURCE IMAGE... [--topk 5]`: class scores of images, from a run, a checkpoint,
a model name or an exported ONNX file.

A run or checkpoint is fused first (the model `export` writes: same --weights/--checkpoint rule as
`eval`); images go through the data layer's own load-time resize and eval transform, so a picture
scores as the validation images did.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ghostnetv3.data import AugConfig, BatchAugment
from ghostnetv3.data.datasets import IMG_EXTENSIONS, _decode_image, _short_side_center_crop, _to_chw

__all__ = ["predict", "format_predictions", "add_parser"]


def _aug(cfg: dict[str, Any]) -> BatchAugment:
    kw = {k: (tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k])
          for k in ("mean", "std", "eval_crop_pct") if cfg.get(k) is not None}
    return BatchAugment(AugConfig(image_size=int(cfg["img_size"]), in_chans=int(cfg["in_chans"]), train=False,
                                  **kw))


def load_images(paths: Sequence[str | Path], cfg: dict[str, Any]) -> torch.Tensor:
    """NCHW float batch: decoded, resized at load (short side, centre crop) and eval-transformed."""
    size = int(cfg["img_size"])
    tensors = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"no such image: {p}")
        a = _decode_image(p)
        if isinstance(a, Exception):
            raise ValueError(f"cannot read image {p} ({type(a).__name__}: {a}); "
                             f"predict reads {', '.join(IMG_EXTENSIONS)}")
        t = _to_chw(a, 1 if a.ndim == 2 and int(cfg["in_chans"]) == 1 else 3)
        tensors.append(_short_side_center_crop(t, size))
    u8 = torch.stack(tensors)
    return _aug(cfg)(u8, torch.arange(len(u8)), 0)


def _load_source(source: str, weights: Optional[str], checkpoint: Optional[str]):
    """(callable images -> logits, cfg) for RUN_DIR | CHECKPOINT | MODEL_NAME | FILE.onnx."""
    if str(source).endswith(".onnx"):
        from ghostnetv3.deploy.export import onnx_session, read_metadata
        if weights or checkpoint:
            raise ValueError(f"{source} is an exported file: its weights were chosen at export; "
                             f"drop --weights/--checkpoint")
        cfg = read_metadata(source)
        if not cfg.get("img_size") or not cfg.get("in_chans"):
            raise ValueError(f"{source}: input size unknown (not exported by ghostnetv3 and dynamic); "
                             f"export it with `ghostnetv3 export`")
        sess = onnx_session(source)
        name = sess.get_inputs()[0].name
        static_batch = sess.get_inputs()[0].shape[0]

        def run(x: torch.Tensor) -> torch.Tensor:
            xs = [x] if not isinstance(static_batch, int) else list(x.split(static_batch))
            return torch.from_numpy(np.concatenate([sess.run(None, {name: b.numpy()})[0] for b in xs]))
        cfg["weights_from"] = f"exported file ({cfg.get('weights', '?')} weights)"
        return run, cfg
    from ghostnetv3.deploy.load import load_for_deploy
    from ghostnetv3.deploy.prepare import to_deploy_form
    model, cfg = load_for_deploy(source, weights=weights, checkpoint=checkpoint)
    fused, _ = to_deploy_form(model, log=lambda m: None)
    fused.eval()
    if cfg.get("weights") == "random":
        cfg["weights_from"] = "random weights: a model name has no trained weights; pass a run or checkpoint"

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fused(x)
    return run, cfg


def predict(source: str, images: Sequence[str | Path], *, topk: int = 5, weights: Optional[str] = None,
            checkpoint: Optional[str] = None) -> dict[str, Any]:
    """{model, weights, images: [{image, top: [{class, index, prob}]}]}."""
    if topk < 1:
        raise ValueError(f"--topk must be at least 1, got {topk}")
    run, cfg = _load_source(str(source), weights, checkpoint)
    x = load_images(images, cfg)
    probs = run(x).float().softmax(dim=1)
    classes = cfg.get("classes")
    k = min(topk, probs.shape[1])
    p, idx = probs.topk(k, dim=1)
    out = []
    for path, pi, ii in zip(images, p.tolist(), idx.tolist()):
        out.append({"image": str(path), "top": [
            {"class": classes[i] if classes and i < len(classes) else str(i), "index": i, "prob": q}
            for q, i in zip(pi, ii)]})
    return {"model": cfg["model"], "source": str(source), "weights": cfg.get("weights_from"),
            "input": [int(cfg["in_chans"]), int(cfg["img_size"]), int(cfg["img_size"])], "images": out}


def format_predictions(r: dict[str, Any]) -> str:
    lines = [f"{r['model']} ({r['weights']}), input {'x'.join(map(str, r['input']))}"]
    for item in r["images"]:
        lines.append(item["image"])
        for t in item["top"]:
            lines.append(f"  {100 * t['prob']:6.2f}%  {t['class']}")
    return "\n".join(lines)


def _cmd(args) -> int:
    r = predict(args.source, args.images, topk=args.topk, weights=args.weights, checkpoint=args.run_checkpoint)
    print(json.dumps(r) if args.json else format_predictions(r))
    return 0


def add_parser(subparsers) -> None:
    from ghostnetv3.models.weights import add_weights_flags
    p = subparsers.add_parser(
        "predict", help="top-k classes of images from a run, checkpoint, model name or exported .onnx",
        description="Classify images with the fused model `export` writes (or an exported ONNX file). "
                    "Class names come from the run (and from files exported by `ghostnetv3 export`).")
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT|MODEL|FILE.onnx")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default: 5)")
    add_weights_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd)
