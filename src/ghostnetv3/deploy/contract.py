"""The input contract of an exported model: what it must be fed, written into every exported file
and read back from any of them.

A model only scores as it did at validation if an app feeds it images prepared as validation
prepared them. The contract is the data layer's `InputSpec` (channels, size, mean/std per channel,
interpolation, centre-crop fraction, plus a sentence for people), resolved from the run's config,
where a setting the run left unset (`mean: null`) means the data layer's default: an exported file
never says less than what was used. Where it lives: ONNX metadata_props and a TorchScript extra
file (key `ghostnetv3`, JSON), the `<file>.json` beside a .pte / .tflite / .xml (files.py), under
the config's own key names. `read_input_contract(path)` reads it from any of them; a key an older
or foreign file lacks is filled with the data layer's default and named in `assumed`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from ghostnetv3.data.inputspec import SPEC_KEYS, InputSpec
from ghostnetv3.deploy.backends import backend_of_file
from ghostnetv3.deploy.files import META_KEY, size_from_shape

__all__ = ["input_contract", "export_metadata", "read_input_contract", "read_metadata", "META_KEY",
           "META_FIELDS", "CONTRACT_KEYS"]

# the run's description an exported file carries (with the input contract)
META_FIELDS = ("model", "num_classes", "in_chans", "img_size", "mean", "std", "data", "seed",
               "val_fraction", "eval_crop_pct", "interpolation", "weights", "source", "classes",
               "stem_stride", "output_stride")
# what `input_contract` always fills (with `preprocess`, a sentence): the InputSpec's keys
CONTRACT_KEYS = SPEC_KEYS


def input_contract(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a model described by `cfg` (a run's config, or an exported file's metadata; needs
    in_chans and img_size) expects as input, the data layer's defaults filled in:
    in_chans, img_size, mean and std (one value per channel), interpolation, eval_crop_pct and
    `preprocess`, the same in words."""
    return InputSpec.from_config(cfg).to_metadata()


def export_metadata(cfg: Optional[dict]) -> dict[str, Any]:
    """What an exported file carries: the run's description and, once channels and size are
    known, the full input contract (unset transform keys as the data layer's defaults)."""
    cfg = cfg or {}
    meta = {k: (list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k])
            for k in META_FIELDS if cfg.get(k) is not None}
    if cfg.get("in_chans") and cfg.get("img_size"):
        meta.update(input_contract(cfg))
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata `export` wrote into (or beside) an exported file, as stored ({} for files
    exported elsewhere); ONNX adds the graph's `input_shape`, with None for a dynamic axis."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return backend_of_file(path).read_metadata(path)


def read_input_contract(path: str | os.PathLike, in_chans: Optional[int] = None,
                        img_size: Optional[int] = None) -> dict[str, Any]:
    """The input contract of an exported file (.onnx, TorchScript .pt, .pte, .tflite, .xml): the
    file's metadata (model, classes, ...) with every key of `input_contract` filled, and
    `assumed`: the keys the file did not carry (an older or foreign file), taken from the data
    layer's defaults. Channels and size come from the file, else from its fixed input shape, else
    from `in_chans` / `img_size`; one that the file fixes otherwise is a ValueError, and so is a
    size that nothing gives."""
    meta = read_metadata(path)
    size_from_shape(meta)
    for key, value in (("in_chans", in_chans), ("img_size", img_size)):
        if value is None:
            continue
        if meta.get(key) is not None and int(meta[key]) != int(value):
            raise ValueError(f"{path} takes {key} {meta[key]} (fixed at export), not {value}")
        meta[key] = int(value)
    if meta.get("in_chans") is None or meta.get("img_size") is None:
        raise ValueError(f"{path}: input size unknown (not exported by ghostnetv3, and dynamic): give the "
                         f"channels and size, or export it with `ghostnetv3 export`")
    return {**meta, **InputSpec.from_metadata(meta).to_metadata(), "assumed": InputSpec.missing(meta)}
