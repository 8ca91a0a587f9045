"""The input size and the network layout a run gets when the user does not say.

Two rules, both printed at start-up and saved with the run (so eval, export and predict rebuild
exactly what was trained, whatever these rules become later):

- **input size** (`img_size` set neither in the recipe nor on the command line): the data's
  typical native size — the median short side of up to 64 images spread over the set (28 for
  Fashion-MNIST, 300 for elpv) — rounded to a multiple of 8 and kept within 32 (the GhostNet
  minimum) to 224 (ImageNet's size; larger inputs cost more than small models gain from them).
- **layout** (GhostNet models, `stem_stride`/`output_stride` not set): `models.ghostnet.auto_layout`:
  the paper's layout (stem stride 2, output stride 32) while the last stage still sees maps of at
  least 2×2 (33 px and up); below that the stem's stride goes first (the first stages see the full
  image), then the last stages' — at 32 px: stem stride 1, output stride 16 (maps 32-16-8-4-2 after
  the stem and each downsampling stage, instead of 16-8-4-2-1).  The measurements behind it: docs/benchmarks.md
  ("Ten minutes with the small-input layout") and docs/layouts.md.
"""
from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Optional

import torch.nn as nn
from PIL import Image

from ghostnetv3.models.ghostnet import GhostNet, auto_layout
from ghostnetv3.models.registry import is_ours

MIN_IMG_SIZE, MAX_IMG_SIZE = 32, 224
NATIVE_SIZES = {"fashion-mnist": 28, "fashion_mnist": 28, "fashionmnist": 28, "elpv": 300}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_SAMPLE = 64


def native_image_size(data: str) -> Optional[int]:
    """The median short side of the data's images (a known data set's, or up to 64 files of a folder,
    headers only); None when it cannot be told (a folder with no readable image)."""
    key = str(data).lower()
    if key in NATIVE_SIZES:
        return NATIVE_SIZES[key]
    root = Path(data)
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        return None
    step = max(1, len(files) // _SAMPLE)
    sides = []
    for p in files[::step][:_SAMPLE]:
        try:
            with Image.open(os.fsencode(p)) as im:  # reads the header only
                sides.append(min(im.size))
        except (OSError, ValueError):
            continue  # a bad file is reported (or skipped) by the loader, not here
    return int(statistics.median(sides)) if sides else None


def auto_img_size(data: str) -> tuple[int, str]:
    """(img_size, why) for a run that did not set one."""
    native = native_image_size(data)
    if native is None:
        return MAX_IMG_SIZE, f"input size {MAX_IMG_SIZE} px (the data's image size could not be read)"
    size = min(MAX_IMG_SIZE, max(MIN_IMG_SIZE, int(round(native / 8)) * 8))
    return size, (f"input size {size} px: the data's typical image is {native} px "
                  f"(kept within {MIN_IMG_SIZE}-{MAX_IMG_SIZE}, a multiple of 8); set --img-size to change")


def resolve_layout(model: str, img_size: int, stem_stride: Optional[int],
                   output_stride: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    """(stem_stride, output_stride) a GhostNet run trains with: what the user set, the rule for the rest;
    other models keep what they were given."""
    if not is_ours(model) or output_stride is not None:
        return stem_stride, output_stride
    return auto_layout(img_size, stem_stride)


def map_sizes(model: nn.Module, img_size: int) -> list[int]:
    """Side of the stem's map and of each downsampling stage's output at `img_size` (GhostNet)."""
    if not isinstance(model, GhostNet):
        return []
    return [math.ceil(img_size / f["reduction"]) for f in model.feature_info]


def describe_layout(model: nn.Module, img_size: int) -> str:
    """'stem stride 2, output stride 8 (maps 16-8-4-4-4 at 32 px)' for a GhostNet (the stem's map,
    then each downsampling stage's), '' otherwise."""
    if not isinstance(model, GhostNet):
        return ""
    maps = map_sizes(model, img_size)
    return (f"stem stride {model.stem_stride}, output stride {model.output_stride} "
            f"(maps {'-'.join(map(str, maps))} at {img_size} px)")
