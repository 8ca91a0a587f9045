"""The training recipe: one dataclass, loaded from YAML and overridden from the command line.

A key has the same name everywhere: `lr` in Python, `lr:` in a recipe, `--lr` on the command line
(dashes and underscores are interchangeable). Names follow timm's `train.py` where timm has one.
An unknown key is an error that names the nearest valid key, so a typo never silently trains
with a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml


@dataclass
class TrainConfig:
    # --- what to train, on what ---
    model: str = "ghostnetv3_100"
    data: str = "fashion-mnist"          # dataset name (fashion-mnist, elpv) or an ImageFolder path
    num_classes: Optional[int] = None    # None: from the dataset
    in_chans: Optional[int] = None       # None: the dataset's channels; 3 on gray data replicates them
    pretrained: bool = False
    init_checkpoint: Optional[str] = None  # weights to start from (any layout models.load_checkpoint reads)
    reset_head: bool = False             # drop the classifier of init_checkpoint (new class count)
    num_conv_branches: Optional[int] = None  # re-parameterization branches; None: the model's default
    scale_branch: Optional[bool] = None  # the 1x1 "scale" branch of each k x k site; None: on (GhostNetV3 models)
    identity_branch: Optional[bool] = None  # the BN-only identity branch; None: on (GhostNetV3 models)
    rep_init: str = "scaled"             # branch BN gamma at init: scaled (1/sqrt(branches at the site)) | reference (1)
    width: Optional[float] = None        # None: the width in the model's name
    stem_stride: Optional[int] = None    # 1 keeps tiny images (28-32 px) from shrinking to 1x1
    drop_rate: Optional[float] = None    # classifier dropout; None: the model's default
    repify: bool = False                 # add re-parameterization branches to any CNN (rep.repify)
    sync_bn: bool = False                # DDP: synchronise BatchNorm statistics across ranks

    # --- data and augmentation ---
    img_size: int = 224
    crop_mode: str = "rrc"               # rrc (RandomResizedCrop) | pad_crop (CIFAR-style) | none
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    padding: int = 4                     # pad_crop only
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4
    aa: Optional[str] = None             # RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (per-sample timm path)
    reprob: float = 0.0                  # random erasing probability
    mean: Optional[tuple[float, ...]] = None  # None: the data layer's default for the channel count
    std: Optional[tuple[float, ...]] = None
    interpolation: str = "bilinear"
    eval_crop_pct: Optional[float] = None  # None: the data layer's default
    mixup: float = 0.0                   # paper: Mixup/CutMix hurt compact models, so off
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    val_fraction: float = 0.1            # for datasets without a validation split
    split_seed: Optional[int] = None     # seed of that split; None: --seed (fix it to compare seeds on one split)
    on_bad_image: str = "fail"           # fail | skip
    train_subset: Optional[int] = None   # use only N training images (seeded) — smoke tests, tuning
    val_subset: Optional[int] = None
    workers: int = 0                     # DataLoader workers (aa and stream paths; the in-memory path needs none)
    data_mode: str = "auto"              # memory | stream | auto (stream: timm names hfds/ wds/ ..., .tar, big folders)
    data_memory_limit_gb: Optional[float] = None  # auto: largest decoded folder kept in memory; None: RAM/4
    train_num_samples: Optional[int] = None  # images per epoch of an iterable source (wds/, hfids/, tfds/)

    # --- optimisation (SPEC section 3 defaults) ---
    epochs: int = 300
    time_limit: Optional[float] = None   # minutes of training (evaluation excluded): the schedule is planned to end then
    batch_size: int = 128                # the GLOBAL batch: each of N DDP ranks sees batch_size // N
    opt: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 2e-5
    sched: str = "cosine"
    warmup_epochs: Optional[float] = None  # None/auto: 5% of the run, at most 3 epochs (the paper's 3 of 300)
    warmup_lr: float = 1e-4
    min_lr: float = 1e-5
    smoothing: float = 0.1
    clip_grad: Optional[float] = None    # max gradient norm
    model_ema: bool = True
    model_ema_decay: Optional[float] = None  # None/auto: 1 - 1/(model_ema_horizon x the run's steps); paper 0.9998
    model_ema_horizon: float = 0.1       # auto decay: the EMA's horizon as a fraction of the run's optimizer steps
    model_ema_warmup: bool = False       # ramp the decay up from 0 (timm ModelEmaV3 use_warmup): short runs

    # --- knowledge distillation (ghostnetv3.distill) ---
    teacher: Optional[str] = None
    teacher_checkpoint: Optional[str] = None
    teacher_pretrained: bool = False
    teacher_input_size: Optional[int] = None
    teacher_cache: Optional[str] = None
    kd_loss: str = "soft-ce"             # kl | soft-ce | hard
    kd_temperature: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 1.0

    # --- execution ---
    amp: str = "none"                    # none | bf16 | fp16 (fp16 needs CUDA)
    channels_last: Optional[bool] = None  # None/auto: the layout a few timed steps find faster for this model and device
    compile: bool = False
    device: Optional[str] = None         # None: cuda when available, else cpu
    seed: int = 42
    output: str = "runs"                 # run directories are created inside
    experiment: Optional[str] = None     # run directory name; None: <model>-<data>-<time>
    resume: Optional[str] = None         # a run directory (or checkpoint file) to continue exactly
    checkpoint_interval: Optional[int] = None  # also save last.pt every N optimizer steps
    log_interval: int = 50

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name)))
        choices = {"amp": ("none", "bf16", "fp16"), "crop_mode": ("rrc", "pad_crop", "none"),
                   "on_bad_image": ("fail", "skip"), "data_mode": ("memory", "stream", "auto"),
                   "kd_loss": ("kl", "soft-ce", "hard"), "rep_init": ("reference", "scaled")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be positive")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit: {self.time_limit} minutes; give a positive number (or leave it unset)")
        if not 0 < self.model_ema_horizon <= 1:
            raise ValueError(f"model_ema_horizon: {self.model_ema_horizon}; a fraction of the run in (0, 1]")

    @property
    def data_split_seed(self) -> int:
        """The seed that draws the train/val split of datasets without an official one."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str | os.PathLike) -> None:
        from .checkpoint import atomic_write_text  # lazy: checkpoint imports torch, a config does not need it
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> "TrainConfig":
        check_keys(changes)
        return dataclasses.replace(self, **changes)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def normalize_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def check_keys(keys, source: str = "") -> None:
    for key in keys:
        if normalize_key(key) not in FIELDS:
            near = difflib.get_close_matches(normalize_key(key), FIELDS, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else "; see `ghostnetv3 train --help`"
            raise ValueError(f"unknown key '{key}'{source}{hint}")


def _base_type(hint):
    """(type, optional) of a field's annotation: Optional[int] -> (int, True)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return hint, False


def is_bool(name: str) -> bool:
    return _base_type(_HINTS[name])[0] is bool


def is_sequence(name: str) -> bool:
    return typing.get_origin(_base_type(_HINTS[name])[0]) is tuple


# keys whose unset value (None) means "chosen for the run"; `auto` on the CLI or in YAML says the same
AUTO_KEYS = ("warmup_epochs", "model_ema_decay", "channels_last")


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, with an error naming the key."""
    base, optional = _base_type(_HINTS[name])
    if name in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == "auto":
        value = None
    if isinstance(value, str) and base is not str and value.strip().lower() in ("none", "null", "~", ""):
        value = None
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name}: a value is required")
    try:
        if base is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                return low in ("true", "1", "yes", "on")
            return bool(value)
        if typing.get_origin(base) is tuple:
            if isinstance(value, str):
                value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            if not isinstance(value, (list, tuple)):
                value = [value]
            return tuple(float(v) for v in value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):  # "1.5" is refused like 1.5 in YAML, "1e3" and "3.0" read as ints
                value = float(value) if not value.strip().lstrip("+-").isdigit() else int(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
            return int(value)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: cannot read {value!r} as {getattr(base, '__name__', base)}") from None


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Recipe file (optional) + overrides (None values are ignored) -> TrainConfig."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"recipe not found: {p}")
        data = read_yaml(p)
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a recipe is a mapping of key: value")
        check_keys(data, source=f" in {p}")
        values.update({normalize_key(k): v for k, v in data.items()})
    overrides = {normalize_key(k): v for k, v in overrides.items() if v is not None}
    check_keys(overrides)
    values.update(overrides)
    return TrainConfig(**values)


def read_yaml(path: Path) -> Any:
    """A YAML file's content; a syntax error is one line naming the file, line and column."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}{where}: YAML syntax error ({what}); fix that line of the recipe") from None


def from_checkpoint_dict(d: dict[str, Any]) -> TrainConfig:
    """A config stored in a checkpoint; keys this version no longer knows are dropped."""
    return TrainConfig(**{k: v for k, v in d.items() if k in FIELDS})
