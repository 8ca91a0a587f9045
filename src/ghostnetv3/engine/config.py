"""The training recipe: one dataclass, loaded from YAML and overridden from the command line.

A key has the same name everywhere: `lr` in Python, `lr:` in a recipe, `--lr` on the command line
(dashes and underscores are interchangeable). Names follow timm's `train.py` where timm has one.
An unknown key is an error that names the nearest valid key, so a typo never silently trains
with a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from ghostnetv3.rep.conv import REP_INITS

from .checkpoint import atomic_write_text
from .layout import auto_img_size


DEFAULT_LR = 0.05  # the peak lr when neither lr nor lr_base is given
# The allowed values of each choice key, in one place: TrainConfig refuses others, the CLI offers these
# (flags.CHOICES is this dict) and the recipe comments below name them.
CHOICES: dict[str, tuple[str, ...]] = {
    "amp": ("none", "bf16", "fp16"), "crop_mode": ("rrc", "pad_crop", "none"),
    "on_bad_image": ("fail", "skip"), "data_mode": ("memory", "stream", "auto"),
    "kd_loss": ("kl", "soft-ce", "hard"), "rep_init": REP_INITS, "eval_metric": ("top1", "top5", "loss")}


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
    linear_branches: bool = False        # opt-in, not the paper's: branches linear with one BN after (OREPA-style,
                                         # faster to train, fuses exactly); GhostNet models
    width: Optional[float] = None        # None: the width in the model's name
    stem_stride: Optional[int] = None    # 1 keeps tiny images (28-32 px) from shrinking to 1x1
    output_stride: Optional[int] = None  # total downsampling (32: the paper's layout); None: from img_size
                                         # (engine/layout.py; GhostNet models)
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
    batch_size: Optional[int] = None     # the GLOBAL batch, split over DDP ranks; None/auto: 128, halved for 8 steps/epoch
    grad_accum_steps: int = 1            # each batch as N micro-batches: the same optimizer step in less memory
    opt: str = "sgd"
    lr: Optional[float] = None           # peak lr (after warmup); None: from lr_base when set, else 0.05
    lr_base: Optional[float] = None      # timm: when lr is not given, lr = lr_base x batch_size / lr_base_size
    lr_base_size: int = 256              # the batch size lr_base is meant for
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
    eval_metric: str = "top1"            # top1 | top5 | loss: the validation number that picks best.pt
    log_tensorboard: Optional[bool] = None  # TensorBoard scalars in RUN/tb; None/auto: when tensorboard is installed
    log_wandb: bool = False              # also log to Weights & Biases (needs wandb; project from $WANDB_PROJECT)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name)))
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.lr is None and self.lr_base is None:
            self.lr = DEFAULT_LR
        if (self.batch_size is not None and self.batch_size < 1) or self.epochs < 1:
            raise ValueError("batch_size and epochs must be positive")
        for key in ("grad_accum_steps", "lr_base_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: {getattr(self, key)}; give a positive number")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit: {self.time_limit} minutes; give a positive number (or leave it unset)")
        if not 0 < self.model_ema_horizon <= 1:
            raise ValueError(f"model_ema_horizon: {self.model_ema_horizon}; a fraction of the run in (0, 1]")
        for key in ("train_subset", "val_subset"):
            check_subset_size(key, getattr(self, key))

    @property
    def data_split_seed(self) -> int:
        """The seed that draws the train/val split of datasets without an official one."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> "TrainConfig":
        check_keys(changes)
        return dataclasses.replace(self, **changes)


def check_subset_size(key: str, n: Optional[int]) -> None:
    """The one rule for --train-subset/--val-subset (train, eval): a positive number of images, or unset
    for all of them. A negative N would slice as "all but N" (-5: 59,995 of 60,000 images)."""
    if n is not None and n < 1:
        raise ValueError(f"--{key.replace('_', '-')} {n}: give a positive number of images, or leave it "
                         f"unset to use all of them")


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
AUTO_KEYS = ("warmup_epochs", "model_ema_decay", "channels_last", "batch_size", "log_tensorboard")


# allowed ranges of float keys: (low, high, low excluded); NaN and infinity are refused for every float key,
# so `--lr nan` or `lr: -0.1` stop before any work, the same from YAML and the command line
_FLOAT_RANGES = {
    **{k: (0.0, None, False) for k in ("lr", "min_lr", "warmup_lr", "weight_decay", "mixup", "cutmix",
                                       "color_jitter", "warmup_epochs", "kd_weight", "ce_weight",
                                       "data_memory_limit_gb")},
    **{k: (0.0, 1.0, False) for k in ("momentum", "smoothing", "drop_rate", "hflip", "vflip", "reprob",
                                      "mixup_prob", "model_ema_decay")},
    **{k: (0.0, None, True) for k in ("clip_grad", "kd_temperature", "width", "std", "lr_base")},
    **{k: (0.0, 1.0, True) for k in ("eval_crop_pct", "val_fraction")},
}


class _OutOfRange(ValueError):
    pass


def _check_float(name: str, v: float) -> float:
    """`v` if it is a finite number in the key's range, else a one-line error naming the key."""
    if not math.isfinite(v):
        raise _OutOfRange(f"{name}: {v} is not a finite number; give a number")
    low, high, low_excluded = _FLOAT_RANGES.get(name, (None, None, False))
    if low is not None and (v <= low if low_excluded else v < low) or high is not None and v > high:
        lo = f"> {low:g}" if low_excluded else f">= {low:g}"
        want = f"a number {lo}" + (f" and <= {high:g}" if high is not None else "")
        raise _OutOfRange(f"{name}: {v:g} is out of range; give {want}")
    return v


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
            return tuple(_check_float(name, float(v)) for v in value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):  # "1.5" is refused like 1.5 in YAML, "1e3" and "3.0" read as ints
                value = float(value) if not value.strip().lstrip("+-").isdigit() else int(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
            return int(value)
        if base is float:
            return _check_float(name, float(value))
        return str(value)
    except _OutOfRange:
        raise
    except (TypeError, ValueError):
        raise ValueError(f"{name}: cannot read {value!r} as {getattr(base, '__name__', base)}") from None


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Recipe file (optional) + overrides (None values are ignored) -> TrainConfig."""
    values: dict[str, Any] = {}
    if path is not None:
        p = find_recipe(path)
        data = read_yaml(p)
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a recipe is a mapping of key: value")
        check_keys(data, source=f" in {p}")
        values.update({normalize_key(k): v for k, v in data.items()})
    overrides = {normalize_key(k): v for k, v in overrides.items() if v is not None}
    check_keys(overrides)
    values.update(overrides)
    for key in ("train_subset", "val_subset"):  # refused before the data is looked at
        if values.get(key) is not None:
            check_subset_size(key, coerce(key, values[key]))
    if "img_size" not in values and not values.get("resume"):  # the input size follows the data
        values["img_size"], why = auto_img_size(values.get("data", TrainConfig.data))
        if os.environ.get("RANK", "0") == "0":
            print(why, flush=True)
    return TrainConfig(**values)


# the recipes shipped with the package (ghostnetv3/recipes in a wheel), else the clone's recipes/ (source tree)
_PACKAGE = Path(__file__).resolve().parents[1]
SHIPPED_RECIPE_DIRS = (_PACKAGE / "recipes", _PACKAGE.parents[1] / "recipes")


def shipped_recipes() -> dict[str, Path]:
    """{name: path} of the shipped recipes (and ablation plans, ablation_*)."""
    d = next((d for d in SHIPPED_RECIPE_DIRS if d.is_dir()), None)
    return {} if d is None else {p.stem: p for p in sorted(d.glob("*.yaml"))}


def find_recipe(name: str | os.PathLike) -> Path:
    """`-c NAME`: a file in the working directory (NAME or NAME.yaml) first, then a shipped recipe of that
    name (`fashion_mnist`, `fashion-mnist`, `recipes/fashion_mnist.yaml` all name the same one)."""
    p = Path(name)
    for c in [p] + ([p.with_name(p.name + ".yaml")] if p.name and p.suffix != ".yaml" else []):
        if c.is_file():
            return c
    shipped = shipped_recipes()
    if p.parent in (Path("."), Path("recipes")):
        stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
        for key in (stem, stem.replace("-", "_")):
            if key in shipped:
                return shipped[key]
    names = [n for n in shipped if not n.startswith("ablation")]
    raise FileNotFoundError(f"recipe not found: {p} (not in the working directory, nor a shipped recipe: "
                            f"{', '.join(names) or 'none installed'})")


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
    """A config stored in a checkpoint; keys this version no longer knows are dropped.  A checkpoint
    written before `output_stride` existed (2026-12-07) was trained in the paper's layout: it gets
    that layout, not the one the input-size rule would pick today."""
    values = {k: v for k, v in d.items() if k in FIELDS}
    if "output_stride" not in d and str(d.get("model", "")).startswith(LEGACY_LAYOUT_MODELS):
        values["output_stride"] = 16 * int(d.get("stem_stride") or 2)
    return TrainConfig(**values)


LEGACY_LAYOUT_MODELS = ("ghostnetv3_", "ghostnetv2_", "gnv3_", "gnv2_")
