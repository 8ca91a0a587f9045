"""The input contract of an exported model: what it must be fed, written into every exported file
and read back from any of them.

A model only scores as it did at validation if an app feeds it images prepared as validation
prepared them: the data layer's eval transform (`data.AugConfig`, train=False) with the run's
settings, where a setting the run left unset (`mean: null`) means the data layer's default.
`input_contract` resolves those defaults, so an exported file never says less than what was
used: channels, size, mean/std per channel, interpolation, centre-crop fraction, plus a sentence
for people. Where it lives: ONNX metadata_props and a TorchScript extra file (key `ghostnetv3`,
JSON), the `<file>.json` beside a .pte / .tflite / .xml (edge.py). `read_input_contract(path)`
reads it from any of them; a key an older or foreign file lacks is filled with the data layer's
default and named in `assumed`.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ghostnetv3.data import AugConfig
from ghostnetv3.deploy.edge import EDGE_FORMATS, read_sidecar
from ghostnetv3.engine.inputs import describe_eval_transform, eval_aug_config

__all__ = ["input_contract", "read_input_contract", "read_metadata", "META_KEY", "CONTRACT_KEYS"]

META_KEY = "ghostnetv3"  # ONNX metadata_props key / TorchScript extra-file name (JSON value)
# what `input_contract` always fills (with `preprocess`, a sentence)
CONTRACT_KEYS = ("in_chans", "img_size", "mean", "std", "interpolation", "eval_crop_pct")
_TRANSFORM_KEYS = ("mean", "std", "interpolation", "eval_crop_pct")


def _aug(cfg: dict[str, Any]) -> AugConfig:
    """The eval transform: the engine's own (`eval_aug_config`, as validation, `eval` and `quantize`
    build it); a non-square input, which only an export can ask for, takes its two sides."""
    size = cfg["img_size"]
    if not isinstance(size, (list, tuple)):
        return eval_aug_config(cfg, int(cfg["in_chans"]))
    kw = {k: (tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k]) for k in _TRANSFORM_KEYS
          if cfg.get(k) is not None}
    return AugConfig(image_size=tuple(int(s) for s in size), in_chans=int(cfg["in_chans"]), train=False, **kw)


def _sentence(aug: AugConfig) -> str:
    chans = ("RGB (a gray image: its one channel three times)" if aug.in_chans == 3 else
             "one gray channel (a colour image: luma 0.299 R + 0.587 G + 0.114 B)")
    return (f"{chans}; pixels 0-255 divided by 255; {describe_eval_transform(aug)} per channel; "
            f"float32, NCHW")


def input_contract(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a model described by `cfg` (a run's config, or an exported file's metadata; needs
    in_chans and img_size) expects as input, the data layer's defaults filled in:
    in_chans, img_size, mean and std (one value per channel), interpolation, eval_crop_pct and
    `preprocess`, the same in words."""
    aug = _aug(cfg)
    mean, std = aug.norm_stats()
    return {"in_chans": aug.in_chans, "img_size": cfg["img_size"] if not isinstance(cfg["img_size"], tuple)
            else list(cfg["img_size"]), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "interpolation": aug.interpolation, "eval_crop_pct": float(aug.eval_crop_pct),
            "preprocess": _sentence(aug)}


def _onnx_metadata(path: Path) -> dict[str, Any]:
    import onnx  # lazy: onnx is the optional deploy extra
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    info = json.loads(meta.get(META_KEY, "{}"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    info["input_shape"] = [d.dim_value if d.HasField("dim_value") else None for d in dims]  # [None, 3, 224, 224]
    _size_from_shape(info)
    return info


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata `export` wrote into (or beside) an exported file, as stored ({} for files
    exported elsewhere); ONNX adds the graph's `input_shape`, with None for a dynamic axis."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix in EDGE_FORMATS.values():
        return read_sidecar(path)
    if path.suffix == ".onnx":
        return _onnx_metadata(path)
    files = {META_KEY: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[META_KEY] or "{}")


def _size_from_shape(meta: dict[str, Any]) -> None:
    shape = meta.get("input_shape") or []
    if len(shape) == 4:
        if meta.get("in_chans") is None and shape[1]:
            meta["in_chans"] = shape[1]
        if meta.get("img_size") is None and shape[2] and shape[2] == shape[3]:
            meta["img_size"] = shape[2]


def read_input_contract(path: str | os.PathLike, in_chans: Optional[int] = None,
                        img_size: Optional[int] = None) -> dict[str, Any]:
    """The input contract of an exported file (.onnx, TorchScript .pt, .pte, .tflite, .xml): the
    file's metadata (model, classes, ...) with every key of `input_contract` filled, and
    `assumed`: the keys the file did not carry (an older or foreign file), taken from the data
    layer's defaults. Channels and size come from the file, else from its fixed input shape, else
    from `in_chans` / `img_size`; one that the file fixes otherwise is a ValueError, and so is a
    size that nothing gives."""
    meta = read_metadata(path)
    _size_from_shape(meta)
    for key, value in (("in_chans", in_chans), ("img_size", img_size)):
        if value is None:
            continue
        if meta.get(key) is not None and int(meta[key]) != int(value):
            raise ValueError(f"{path} takes {key} {meta[key]} (fixed at export), not {value}")
        meta[key] = int(value)
    if meta.get("in_chans") is None or meta.get("img_size") is None:
        raise ValueError(f"{path}: input size unknown (not exported by ghostnetv3, and dynamic): give the "
                         f"channels and size, or export it with `ghostnetv3 export`")
    assumed = [k for k in _TRANSFORM_KEYS if meta.get(k) is None]
    return {**meta, **input_contract(meta), "assumed": assumed}
