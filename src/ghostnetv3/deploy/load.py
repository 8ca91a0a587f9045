"""One loader for every deploy command: a run directory, a checkpoint file, or a model name.

`load_for_deploy` returns the model (eval mode, still in whatever form the checkpoint holds:
fusion is the caller's step) and a plain dict describing how it sees images, which the
exporters write into the exported file so `quantize` and `bench` need no extra flags.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ghostnetv3 import safeload
from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.config import read_yaml
from ghostnetv3.models.weights import pick_weights, resolve_run_checkpoint

__all__ = ["load_for_deploy", "read_state_dict", "CHECKPOINT_SUFFIXES"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".bin", ".ckpt", ".safetensors")
# Model keys of config.yaml that change the architecture (passed to create_model when set).
_ARCH_KEYS = ("width", "num_conv_branches", "stem_stride", "output_stride", "linear_branches", "drop_rate")
# Where a checkpoint dict keeps its weights; EMA first (the paper's reported numbers are EMA's).
_EMA_KEYS = ("ema", "state_dict_ema", "model_ema")
_RAW_KEYS = ("model", "state_dict")
# files that `export` writes, which no deploy command can load back as a PyTorch model
_EXPORTED_SUFFIXES = {".onnx": "ONNX", ".pte": "ExecuTorch", ".tflite": "LiteRT", ".xml": "OpenVINO"}


def _torch_load(path: Path) -> Any:
    return safeload.read(path)  # weights_only; a broken file is one line naming it


def _clean(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    # DDP's `module.` prefix and profiler counters are the two things met in the wild (SPEC §2).
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor) or k.endswith(("total_ops", "total_params")):
            continue
        out[k[7:] if k.startswith("module.") else k] = v
    return out


def read_state_dict(path: str | os.PathLike, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, which one: 'ema' | 'raw' | 'plain') from a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict of tensors or of state dicts, got {type(ckpt).__name__}")
    for kind, keys in (("ema", _EMA_KEYS if use_ema else ()), ("raw", _RAW_KEYS)):
        for key in keys:
            if isinstance(ckpt.get(key), dict) and ckpt[key]:
                return _clean(ckpt[key]), kind
    sd = _clean(ckpt)
    if not sd:
        raise ValueError(f"{path}: no weights found (looked for {', '.join(_EMA_KEYS + _RAW_KEYS)})")
    return sd, "plain"


def _stored_configs(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the training config as saved inside a checkpoint, the same with the class and channel counts
    the run resolved at start): the saved config, like config.yaml, may leave those None ('from the
    dataset')."""
    try:
        ckpt = _torch_load(path)
    except Exception:  # a config is a nicety; a broken file is reported when the weights load
        return {}, {}
    if not isinstance(ckpt, dict):
        return {}, {}
    saved = dict(ckpt["config"]) if isinstance(ckpt.get("config"), dict) else {}
    cfg = dict(saved)
    for key in ("num_classes", "in_chans"):
        if cfg.get(key) is None and isinstance(ckpt.get(key), int):
            cfg[key] = ckpt[key]
    if not cfg.get("model") and isinstance(ckpt.get("model_name"), str):
        cfg["model"] = ckpt["model_name"]
    if ckpt.get("best_source") in ("raw", "ema"):
        cfg["best_source"] = ckpt["best_source"]
    if isinstance(ckpt.get("classes"), list):  # class names, for predict and the exported file
        cfg["classes"] = [str(c) for c in ckpt["classes"]]
    return saved, cfg


def _infer_from_weights(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    """in_chans from the first conv kernel, num_classes from the last linear weight."""
    out = {}
    convs = [v for v in sd.values() if v.ndim == 4]
    if convs:
        out["in_chans"] = int(convs[0].shape[1])
    linears = [v for k, v in sd.items() if v.ndim == 2 and k.endswith("weight")]
    if linears:
        out["num_classes"] = int(linears[-1].shape[0])
    return out


def _build(cfg: dict[str, Any]) -> nn.Module:
    """The architecture exactly as training built it (the engine's builder when the config
    came from a run), else create_model with the knobs that are set."""
    try:
        from ghostnetv3.engine.config import from_checkpoint_dict
        from ghostnetv3.engine.train import build_model
    except ImportError:
        build_model = None
    if build_model is not None and cfg.get("from_run"):
        tc = from_checkpoint_dict({k: v for k, v in cfg.items() if k != "from_run"}).replace(
            pretrained=False, init_checkpoint=None, resume=None)
        return build_model(tc, int(cfg["num_classes"]), int(cfg["in_chans"]))
    from ghostnetv3.models import create_model, is_ours
    ours = is_ours(str(cfg["model"]))  # ghostnetv3_100 or timm's gnv3_100
    kwargs = {k: cfg[k] for k in _ARCH_KEYS if cfg.get(k) is not None and (ours or k == "drop_rate")}
    model = create_model(cfg["model"], num_classes=int(cfg["num_classes"]), in_chans=int(cfg["in_chans"]),
                         **kwargs)
    if cfg.get("repify"):
        from ghostnetv3.rep import repify  # a repified run's checkpoint has branch keys
        model = repify(model, num_conv_branches=cfg.get("num_conv_branches") or 3)
    return model


def _load_weights(model: nn.Module, path: Path, sd: dict[str, torch.Tensor], use_ema: bool) -> None:
    try:
        from ghostnetv3.models import load_checkpoint  # knows every layout (reference, timm, DDP)
    except ImportError:
        load_checkpoint = None
    if load_checkpoint is not None:
        load_checkpoint(model, str(path), use_ema=use_ema)
        return
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: {len(missing)} missing keys (e.g. "
                         f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                         f"check --model and the model's width/branch settings")


def _is_model_name(name: str) -> bool:
    import timm
    try:
        from ghostnetv3.models import list_models  # ours, when the registry grows one
        if name in list_models():
            return True
    except ImportError:
        pass
    return name in timm.list_models() or name.startswith(("ghostnetv3_", "ghostnetv2_"))


def load_for_deploy(spec: str | os.PathLike, *, model: Optional[str] = None,
                    num_classes: Optional[int] = None, in_chans: Optional[int] = None,
                    img_size: Optional[int] = None, weights: Optional[str] = None,
                    checkpoint: Optional[str] = None) -> tuple[nn.Module, dict[str, Any]]:
    """RUN_DIR | CHECKPOINT (+ model) | MODEL_NAME -> (eval-mode model, config dict).

    Weights: ghostnetv3.models.weights' rule (the one `eval` uses): best.pt (else last.pt) and the
    weights its validation picked, else EMA when there is EMA; `weights` raw|ema and `checkpoint`
    best|last choose instead. cfg['weights_from'] says which, in words.

    The config dict always has model, num_classes, in_chans, img_size, weights ('ema' | 'raw' |
    'plain' | 'random'), source; and, when known, data, mean, std and the architecture keys.
    Explicit keyword arguments override what the run recorded.
    """
    spec_str = str(spec)
    path = Path(spec_str)
    cfg: dict[str, Any] = {}
    ckpt_path: Optional[Path] = None
    if path.is_dir():
        cfg_file = path / "config.yaml"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is not a run directory: no config.yaml in it")
        ckpt_path = resolve_run_checkpoint(path, checkpoint)[0]
        if checkpoint is None:  # a broken best.pt next to an intact last.pt: export last.pt, and say so
            ckpt_path = safeload.first_intact([path / "best.pt", path / "last.pt"])[0]
        saved, stored = _stored_configs(ckpt_path)
        # the checkpoint's config is the truth (as for eval and --resume); config.yaml fills only what an
        # old checkpoint lacks, and an edit there is reported, not used. Compared as saved: None in
        # both means 'from the dataset', not an edit
        ckpt_io.report_config_edits(path, saved, ckpt_path, "pass --img-size/--num-classes to change them")
        cfg = {**{k: v for k, v in (read_yaml(cfg_file) or {}).items() if k not in stored}, **stored}
        cfg["from_run"] = True
    elif path.is_file():
        resolve_run_checkpoint(path, checkpoint)  # --checkpoint best|last on a file is an error
        if path.suffix in _EXPORTED_SUFFIXES:
            raise ValueError(f"{path} is already an exported {_EXPORTED_SUFFIXES[path.suffix]} model; this command "
                             f"needs the model it came from: a run directory, a PyTorch checkpoint or a model name")
        ckpt_path = path
        cfg = _stored_configs(path)[1]
        if not cfg.get("model") and (path.parent / "config.yaml").is_file():
            cfg.update(read_yaml(path.parent / "config.yaml") or {})
        cfg["from_run"] = bool(cfg.get("model")) and not model
    elif spec_str.endswith(CHECKPOINT_SUFFIXES) or os.sep in spec_str:
        raise FileNotFoundError(f"no such run directory or checkpoint: {spec_str}")
    elif _is_model_name(spec_str):
        cfg = {"model": spec_str}
    else:
        raise ValueError(f"'{spec_str}' is not a run directory, a checkpoint file or a known model name")

    if model:
        cfg["model"] = model
    if not cfg.get("model"):
        raise ValueError(f"{spec_str}: which architecture? pass --model NAME (no config.yaml next to it)")
    # EMA weights unless the run's own validation picked the raw ones (a short run's EMA can
    # still be near its random start).
    choice = pick_weights(ckpt_path, weights=weights) if ckpt_path else None
    use_ema = choice is not None and choice.use_ema
    sd, weights = (read_state_dict(ckpt_path, use_ema) if ckpt_path else ({}, "random"))
    inferred = _infer_from_weights(sd)
    if num_classes is not None and inferred.get("num_classes") not in (None, num_classes):
        # deploy commands have no --reset-head: a head of another size is not this model
        raise ValueError(f"{ckpt_path} holds a {inferred['num_classes']}-class head; --num-classes {num_classes} "
                         f"does not fit it: drop --num-classes (it is read from the checkpoint), or fine-tune "
                         f"for {num_classes} classes with `ghostnetv3 train --init-checkpoint {ckpt_path} "
                         f"--reset-head --num-classes {num_classes}`")
    for key, value, default in (("num_classes", num_classes, 1000), ("in_chans", in_chans, 3),
                                ("img_size", img_size, 224)):
        if value is not None:
            cfg[key] = value
        elif cfg.get(key) is None:
            cfg[key] = inferred.get(key, default)

    net = _build(cfg)
    if ckpt_path is not None:
        _load_weights(net, ckpt_path, sd, use_ema)
    cfg.pop("from_run", None)
    cfg.update(weights=weights, source=spec_str)
    if choice is not None:
        cfg["weights_from"] = choice.describe()
    return net.eval(), cfg
