"""Batched, replayable augmentation for uint8 image tensors held in memory.

Every random choice is drawn from `counter_uniform(seed, sample index, key, stream)`, so the
augmented view of sample i under key k (the epoch, or a teacher-cache view id) is a pure
function of (cfg, seed, i, k): resuming mid-epoch and replaying a cached teacher view are exact.

Pipeline, all on the input's device: crop + resize (+ flips) in one `roi_align` call, color
jitter, channel conversion, normalize, random erasing. `roi_align` with adaptive sampling
takes one bilinear sample per output pixel when upsampling (an identity box returns the
image exactly) and averages ceil(box/out)² samples when downsampling (a box filter against
aliasing); on a 2-core CPU it was 2-4x faster than `grid_sample` for these sizes.

The crop box (in source pixels), flips and jitter factors do not depend on the output size,
so a teacher augmenting at 224 px and a student at 32 px with the same seed and (index, key)
see the same view of the image.

Differences from timm's per-sample transforms (use `TimmTransformDataset` where they matter):
color jitter applies brightness, contrast, saturation in that fixed order (torchvision picks a
random order) and has no hue; resampling is bilinear only; no RandAugment/AutoAugment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .rng import counter_bits, counter_normal, counter_uniform

__all__ = ["AugConfig", "BatchAugment"]

# streams: one per kind of random choice, so enabling one never changes the others
_S_CROP, _S_FLIP, _S_JITTER, _S_ERASE, _S_ERASE_COLOR = 1, 2, 3, 4, 5
_ATTEMPTS = 10  # as torchvision/timm RandomResizedCrop and RandomErasing
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, what PIL's convert("L") and torchvision use


@dataclass
class AugConfig:
    image_size: int | tuple[int, int]
    in_chans: int = 3  # gray data is replicated to 3 channels; RGB data is turned to luma for 1
    train: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_mode: str = "rrc"  # "rrc" | "pad_crop" (zero-pad by `padding`, random crop) | "none"
    padding: int = 4
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4  # brightness/contrast/saturation strength
    reprob: float = 0.0  # random erasing probability per sample (timm RandomErasing)
    remode: str = "const"  # "const" | "rand" | "pixel"
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    interpolation: str = "bilinear"
    eval_crop_pct: float = 1.0  # eval: resize shorter side to size/crop_pct, center crop

    @property
    def out_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean, std = tuple(self.mean), tuple(self.std)
        if self.in_chans == 1 and len(mean) == 3:  # one gray channel: average the RGB stats
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ValueError(f"mean/std have {len(mean)} values but in_chans={self.in_chans}; "
                             f"give one value per channel")
        return mean, std

    def validate(self) -> None:
        if self.crop_mode not in ("rrc", "pad_crop", "none"):
            raise ValueError(f"crop_mode={self.crop_mode!r}; use 'rrc', 'pad_crop' or 'none'")
        if self.remode not in ("const", "rand", "pixel"):
            raise ValueError(f"remode={self.remode!r}; use 'const', 'rand' or 'pixel'")
        if self.interpolation != "bilinear":
            raise ValueError(f"BatchAugment resamples bilinearly only (got interpolation="
                             f"{self.interpolation!r}); set 'bilinear' or use TimmTransformDataset")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans={self.in_chans}; use 1 or 3")
        self.norm_stats()


class BatchAugment:
    """Per-sample random augmentation of a uint8 batch, keyed by (seed, index, key)."""

    def __init__(self, cfg: AugConfig, seed: int = 0):
        cfg.validate()
        self.cfg = cfg
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"BatchAugment(seed={self.seed}, cfg={self.cfg})"

    # ---- parameters -------------------------------------------------------------------------
    def sample_params(self, indices: Tensor, key: Tensor | int,
                      image_hw: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """Per-sample parameters; a pure function of (cfg, seed, indices, key, image_hw).

        `image_hw` is the source image size (defaults to the output size); `__call__` passes it.
        Returns float `box` [B, 4] = (x0, y0, x1, y1) in source pixels (may extend past the image
        by `padding` for pad_crop), bool `hflip`/`vflip` [B], float `brightness`/`contrast`/
        `saturation` [B], bool `erase` [B] with int `erase_box` [B, 4] = (top, left, h, w) in
        output pixels, plus the `index` and `key` tensors (pixel-mode erasing draws from them).
        """
        cfg = self.cfg
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        dev = idx.device
        key = torch.as_tensor(key, dtype=torch.int64, device=dev).expand_as(idx).clone()
        H, W = image_hw if image_hw is not None else cfg.out_hw
        B = idx.numel()
        p: dict[str, Tensor] = {"index": idx, "key": key}

        if not cfg.train:
            p["box"] = self._center_box(H, W, B, dev)
            false = torch.zeros(B, dtype=torch.bool, device=dev)
            p["hflip"], p["vflip"], p["erase"] = false, false.clone(), false.clone()
            ones = torch.ones(B, device=dev)
            p["brightness"], p["contrast"], p["saturation"] = ones, ones.clone(), ones.clone()
            p["erase_box"] = torch.zeros(B, 4, dtype=torch.int64, device=dev)
            return p

        u = lambda stream, n: counter_uniform(self.seed, idx, key, stream, n)  # noqa: E731
        if cfg.crop_mode == "rrc":
            p["box"] = self._rrc_box(u(_S_CROP, 4 * _ATTEMPTS), H, W)
        elif cfg.crop_mode == "pad_crop":
            pad = cfg.padding
            off = torch.floor(u(_S_CROP, 2) * (2 * pad + 1)) - pad  # integer shift in [-pad, pad]
            p["box"] = torch.stack([off[:, 0], off[:, 1], off[:, 0] + W, off[:, 1] + H], 1)
        else:
            p["box"] = torch.tensor([0.0, 0.0, W, H], device=dev).expand(B, 4).clone()

        f = u(_S_FLIP, 2)
        p["hflip"], p["vflip"] = f[:, 0] < cfg.hflip, f[:, 1] < cfg.vflip

        j = u(_S_JITTER, 3)
        s = cfg.color_jitter
        lo = max(0.0, 1.0 - s)
        fac = lo + j * (1.0 + s - lo)
        p["brightness"], p["contrast"], p["saturation"] = fac[:, 0], fac[:, 1], fac[:, 2]

        e = u(_S_ERASE, 1 + 4 * _ATTEMPTS)
        p["erase"], p["erase_box"] = self._erase_box(e)
        return p

    def _center_box(self, H: int, W: int, B: int, dev) -> Tensor:
        oh, ow = self.cfg.out_hw
        if isinstance(self.cfg.image_size, int):  # timm: shorter side -> floor(size / crop_pct)
            scale = math.floor(oh / self.cfg.eval_crop_pct) / min(H, W)
            sh = sw = scale
        else:  # timm: resize to floor(each / crop_pct), aspect not kept
            sh = math.floor(oh / self.cfg.eval_crop_pct) / H
            sw = math.floor(ow / self.cfg.eval_crop_pct) / W
        ch, cw = oh / sh, ow / sw  # crop size in source pixels
        y0, x0 = (H - ch) / 2, (W - cw) / 2
        return torch.tensor([x0, y0, x0 + cw, y0 + ch], device=dev).expand(B, 4).clone()

    def _rrc_box(self, u: Tensor, H: int, W: int) -> Tensor:
        """timm/torchvision RandomResizedCrop: first of 10 valid attempts, else center crop."""
        cfg = self.cfg
        u = u.view(-1, _ATTEMPTS, 4).double()
        area = H * W * (cfg.scale[0] + u[..., 0] * (cfg.scale[1] - cfg.scale[0]))
        lr = (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
        ar = torch.exp(lr[0] + u[..., 1] * (lr[1] - lr[0]))
        w = torch.round(torch.sqrt(area * ar))
        h = torch.round(torch.sqrt(area / ar))
        ok = (w <= W) & (h <= H) & (w > 0) & (h > 0)
        y0 = torch.floor(u[..., 2] * (H - h + 1))
        x0 = torch.floor(u[..., 3] * (W - w + 1))
        first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)  # first valid attempt
        pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
        w, h, x0, y0, found = pick(w), pick(h), pick(x0), pick(y0), pick(ok)
        # fallback: central crop with the ratio clamped to the allowed range
        in_ratio = W / H
        if in_ratio < min(cfg.ratio):
            fw, fh = W, round(W / min(cfg.ratio))
        elif in_ratio > max(cfg.ratio):
            fw, fh = round(H * max(cfg.ratio)), H
        else:
            fw, fh = W, H
        w = torch.where(found, w, torch.full_like(w, fw))
        h = torch.where(found, h, torch.full_like(h, fh))
        x0 = torch.where(found, x0, torch.full_like(x0, (W - fw) // 2))
        y0 = torch.where(found, y0, torch.full_like(y0, (H - fh) // 2))
        return torch.stack([x0, y0, x0 + w, y0 + h], 1).float()

    def _erase_box(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """timm RandomErasing (count 1, area 2%-1/3, aspect 0.3-3.3): first valid attempt."""
        H, W = self.cfg.out_hw
        on = e[:, 0] < self.cfg.reprob
        a = e[:, 1:].view(-1, _ATTEMPTS, 4).double()
        area = H * W * (0.02 + a[..., 0] * (1 / 3 - 0.02))
        lr = math.log(0.3)
        ar = torch.exp(lr + a[..., 1] * (-2 * lr))
        h = torch.round(torch.sqrt(area * ar))
        w = torch.round(torch.sqrt(area / ar))
        ok = (w < W) & (h < H)
        top = torch.floor(a[..., 2] * (H - h + 1))
        left = torch.floor(a[..., 3] * (W - w + 1))
        first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)
        pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
        box = torch.stack([pick(top), pick(left), pick(h), pick(w)], 1).to(torch.int64)
        return on & pick(ok), box

    # ---- application ------------------------------------------------------------------------
    def apply(self, images_u8: Tensor, params: dict[str, Tensor]) -> Tensor:
        """uint8 [B, C, H, W] -> float32 normalized [B, in_chans, *out_hw] on the same device."""
        cfg = self.cfg
        dev = images_u8.device
        p = {k: v.to(dev) for k, v in params.items()}
        B, C, H, W = images_u8.shape
        oh, ow = cfg.out_hw
        x = images_u8.float()
        box = p["box"]
        if cfg.train and cfg.crop_mode == "pad_crop" and cfg.padding > 0:
            x = F.pad(x, [cfg.padding] * 4)  # zeros, so out-of-image samples read 0
            box = box + cfg.padding
        rois = torch.cat([torch.arange(B, device=dev, dtype=x.dtype)[:, None], box.to(x.dtype)], 1)
        x = roi_align(x, rois, (oh, ow), spatial_scale=1.0, sampling_ratio=0, aligned=True)
        x = _flip_where(x, p["hflip"], -1)
        x = _flip_where(x, p["vflip"], -2)

        if cfg.train and cfg.color_jitter > 0:
            x = self._jitter(x, p["brightness"], p["contrast"], p["saturation"])

        if C == 1 and cfg.in_chans == 3:
            x = x.expand(B, 3, oh, ow)
        elif C == 3 and cfg.in_chans == 1:
            x = _luma(x)
        elif C != cfg.in_chans:
            raise ValueError(f"images have {C} channels; in_chans={cfg.in_chans} needs 1 or 3")
        mean, std = cfg.norm_stats()
        # (x - 255 m) / (255 s) as one broadcasting op; it also materializes a gray->3ch expand
        scale = 1.0 / (255.0 * torch.tensor(std, device=dev, dtype=torch.float64))
        bias = -torch.tensor(mean, device=dev, dtype=torch.float64) * 255.0 * scale
        x = torch.addcmul(bias.float().view(1, -1, 1, 1), x, scale.float().view(1, -1, 1, 1))

        if cfg.train and cfg.reprob > 0 and bool(p["erase"].any()):
            x = self._erase(x, p)
        return x.contiguous()

    def __call__(self, images_u8: Tensor, indices: Tensor, key: Tensor | int) -> Tensor:
        params = self.sample_params(indices, key, image_hw=tuple(images_u8.shape[-2:]))
        return self.apply(images_u8, params)

    @staticmethod
    def _jitter(x: Tensor, b: Tensor, c: Tensor, s: Tensor) -> Tensor:
        # torchvision's adjust_* math on a [0, 255] float batch, one factor per sample
        v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
        x = (x * v(b)).clamp_(0, 255)
        gray = _luma(x) if x.shape[1] == 3 else x
        m = gray.mean(dim=(1, 2, 3), keepdim=True)
        x = (v(c) * x + (1 - v(c)) * m).clamp_(0, 255)
        if x.shape[1] == 3:  # saturation of a gray image is a no-op
            x = (v(s) * x + (1 - v(s)) * _luma(x)).clamp_(0, 255)
        return x

    def _erase(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        B, C, H, W = x.shape
        eb = p["erase_box"]
        ys = torch.arange(H, device=x.device)
        xs = torch.arange(W, device=x.device)
        top, left, h, w = (eb[:, i].view(-1, 1) for i in range(4))
        rows = (ys >= top) & (ys < top + h)
        cols = (xs >= left) & (xs < left + w)
        mask = (rows[:, :, None] & cols[:, None, :] & p["erase"].view(-1, 1, 1)).unsqueeze(1)
        mode = self.cfg.remode
        if mode == "const":
            fill = torch.zeros((), device=x.device)
        elif mode == "rand":
            fill = counter_normal(self.seed, p["index"], p["key"], _S_ERASE_COLOR, C)
            fill = fill.to(x.device).view(B, C, 1, 1)
        else:  # per-pixel noise: one generator per erased sample, seeded from its counter
            fill = torch.zeros_like(x)
            seeds = counter_bits(self.seed, p["index"].cpu(), p["key"].cpu(), _S_ERASE_COLOR, 1)
            for i in torch.nonzero(p["erase"]).flatten().tolist():
                g = torch.Generator(device=x.device).manual_seed(int(seeds[i, 0]) & (2**63 - 1))
                fill[i].normal_(generator=g)
        return torch.where(mask, fill, x)


def _flip_where(x: Tensor, flag: Tensor, dim: int) -> Tensor:
    if not bool(flag.any()):
        return x
    x = x.clone() if x.requires_grad else x
    x[flag] = x[flag].flip(dim)
    return x


def _luma(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)
