"""A model's input contract, defined once: `InputSpec` (channels, size, mean/std, interpolation, crop).

A model only scores as it did at validation if every image it meets is prepared as validation
prepared it. The contract travels with the weights the way torchvision's `Weights.transforms()` and
timm's `pretrained_cfg` do: a run's config holds it (`from_config`), an exported file's metadata
holds it (`from_metadata` / `to_metadata`, the same keys as the config), and every command that
preprocesses an image — a run's validation, `eval`, `quantize`'s scoring, `predict`, the exported
files, a teacher run — builds its eval transform here (`eval_transform`).

A key the config leaves unset (`mean: null`) means the data layer's default (`AugConfig`); an
InputSpec always holds the resolved values, so what an exported file says is what was used.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import torch
from PIL import Image
from torch import Tensor

from .augment import AugConfig, BatchAugment
from .timm_transforms import timm_transform

__all__ = ["InputSpec", "EvalTransform", "SPEC_KEYS", "TRANSFORM_KEYS"]

# the keys of the contract, as a config, a checkpoint's config and an exported file's metadata name them
SPEC_KEYS = ("in_chans", "img_size", "mean", "std", "interpolation", "eval_crop_pct")
# the ones with a data-layer default (an older or foreign exported file may lack them)
TRANSFORM_KEYS = ("mean", "std", "interpolation", "eval_crop_pct")


def _values(cfg: Any) -> Mapping[str, Any]:
    """A config as a mapping: a dict as it is, else the attributes `SPEC_KEYS` name (a TrainConfig)."""
    if isinstance(cfg, Mapping):
        return cfg
    return {k: getattr(cfg, k, None) for k in SPEC_KEYS}


def _size(value: Any) -> int | tuple[int, int]:
    """An image size as the data layer takes it: one side, or (height, width) for a non-square input."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value)


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ("," if len(v) == 1 else "") + ")"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model is fed: `in_chans` channels at `img_size` (the short side is resized to
    img_size / crop_pct with `interpolation`, then centre-cropped), normalized by `mean`/`std`
    (one value per channel, of pixels scaled to 0-1)."""
    in_chans: int
    img_size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    # ---- building one ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any, *, in_chans: Optional[int] = None,
                    img_size: Optional[int | tuple[int, int]] = None) -> "InputSpec":
        """From a run's config: a TrainConfig (any object with its attributes) or the dict a
        checkpoint, config.yaml or an exported file keeps. `in_chans`/`img_size` replace the config's
        (a config may leave in_chans unset: 'the dataset's'); unset transform keys take the data
        layer's defaults."""
        values = _values(cfg)
        chans = in_chans if in_chans is not None else values.get("in_chans")
        size = img_size if img_size is not None else values.get("img_size")
        missing = [k for k, v in (("in_chans", chans), ("img_size", size)) if v is None]
        if missing:
            raise ValueError(f"the input contract needs {' and '.join(missing)}; the config leaves "
                             f"{'them' if len(missing) > 1 else 'it'} unset")
        kw = {k: (tuple(values[k]) if isinstance(values[k], list) else values[k])
              for k in TRANSFORM_KEYS if values.get(k) is not None}
        return cls.from_aug_config(AugConfig(image_size=_size(size), in_chans=int(chans), train=False, **kw))

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "InputSpec":
        """From an exported file's metadata (`to_metadata`'s keys, which are the config's); a transform
        key an older or foreign file lacks takes the data layer's default (`missing` names them)."""
        return cls.from_config(meta)

    @classmethod
    def from_aug_config(cls, aug: AugConfig) -> "InputSpec":
        """The contract of the data layer's eval transform `aug` (its defaults resolved)."""
        mean, std = aug.norm_stats()
        return cls(in_chans=int(aug.in_chans), img_size=_size(aug.image_size),
                   mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                   interpolation=str(aug.interpolation), crop_pct=float(aug.eval_crop_pct))

    @staticmethod
    def missing(meta: Mapping[str, Any]) -> list[str]:
        """The transform keys `meta` does not carry (they are assumed: the data layer's defaults)."""
        return [k for k in TRANSFORM_KEYS if meta.get(k) is None]

    # ---- using one ---------------------------------------------------------------------------
    @property
    def out_hw(self) -> tuple[int, int]:
        s = self.img_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def aug_config(self) -> AugConfig:
        """The data layer's eval transform settings (train=False)."""
        return AugConfig(image_size=self.img_size, in_chans=self.in_chans, train=False, mean=self.mean,
                         std=self.std, interpolation=self.interpolation, eval_crop_pct=self.crop_pct)

    def eval_transform(self) -> "EvalTransform":
        """uint8 images [B, C, H, W] -> the float batch the model takes (see EvalTransform)."""
        return EvalTransform(self)

    def to_metadata(self) -> dict[str, Any]:
        """The contract as an exported file stores it (JSON-able; the config's key names) plus
        `preprocess`, the same in words."""
        size = self.img_size if isinstance(self.img_size, int) else list(self.img_size)
        return {"in_chans": self.in_chans, "img_size": size, "mean": [float(m) for m in self.mean],
                "std": [float(s) for s in self.std], "interpolation": self.interpolation,
                "eval_crop_pct": float(self.crop_pct), "preprocess": self.sentence()}

    def describe(self) -> str:
        """e.g. 'bilinear resize of the short side to 32 px, centre crop 32x32 px (crop_pct 1), mean
        (0.449,) std (0.226,)'."""
        h, w = self.out_hw
        return (f"{self.interpolation} resize of the short side to {math.floor(min(h, w) / self.crop_pct)} px, "
                f"centre crop {h}x{w} px (crop_pct {self.crop_pct:g}), mean {_fmt(self.mean)} std {_fmt(self.std)}")

    def sentence(self) -> str:
        """How to feed the model, for people (an exported file's `preprocess`)."""
        chans = ("RGB (a gray image: its one channel three times)" if self.in_chans == 3 else
                 "one gray channel (a colour image: luma 0.299 R + 0.587 G + 0.114 B)")
        return f"{chans}; pixels 0-255 divided by 255; {self.describe()} per channel; float32, NCHW"


class EvalTransform:
    """An InputSpec's eval transform: uint8 images [B, C, H, W] (1 or 3 channels, converted to the
    model's as training converts them) -> normalized float32 [B, in_chans, *out_hw].

    Bilinear resampling is the data layer's batched `BatchAugment` (what a run's in-memory validation
    uses, bit for bit); any other interpolation is timm's per-image transform (what a streamed run
    validates with), since BatchAugment resamples bilinearly only."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        aug = spec.aug_config()
        self._batched = BatchAugment(aug) if spec.interpolation == "bilinear" else None
        self._per_image = timm_transform(aug) if self._batched is None else None

    def __call__(self, images_u8: Tensor, indices: Optional[Tensor] = None, key: Tensor | int = 0) -> Tensor:
        """`indices`/`key` are BatchAugment's (an eval transform draws nothing random from them)."""
        if self._batched is not None:
            idx = torch.arange(len(images_u8)) if indices is None else indices
            return self._batched(images_u8, idx, key)
        mode = "RGB" if self.spec.in_chans == 3 else "L"
        out = [self._per_image(_pil(x).convert(mode)) for x in images_u8.cpu()]
        return torch.stack(out).to(images_u8.device)


def _pil(x: Tensor) -> Image.Image:
    """One uint8 CHW image as PIL (gray or RGB)."""
    if x.shape[0] == 1:
        return Image.fromarray(x[0].numpy(), "L")
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy(), "RGB")
