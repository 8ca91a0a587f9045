"""One loader for every deploy command: a run directory, a checkpoint file, or a model name.

`load_for_deploy` returns the model (eval mode, still in whatever form the checkpoint holds:
fusion is the caller's step) and a plain dict describing how it sees images, which the
exporters write into the exported file so `quantize` and `bench` need no extra flags. A run or a
checkpoint is read through `engine.run.Run` (each file once).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.config import from_checkpoint_dict
from ghostnetv3.engine.model_factory import build_model
from ghostnetv3.engine.run import Run, WeightsChoice, resolve_run_checkpoint
from ghostnetv3.models import create_model, is_ours, list_models, load_checkpoint, read_state_dict
from ghostnetv3.rep import repify

__all__ = ["load_for_deploy", "CHECKPOINT_SUFFIXES"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".bin", ".ckpt", ".safetensors")
# Model keys of config.yaml that change the architecture (passed to create_model when set).
_ARCH_KEYS = ("width", "num_conv_branches", "stem_stride", "output_stride", "linear_branches", "drop_rate")
# files that `export` writes, which no deploy command can load back as a PyTorch model
_EXPORTED_SUFFIXES = {".onnx": "ONNX", ".pte": "ExecuTorch", ".tflite": "LiteRT", ".xml": "OpenVINO"}


def _stored_config(run: Run) -> dict[str, Any]:
    """The training config saved inside the run's checkpoint, with the class and channel counts the run
    resolved at start (the saved config, like config.yaml, may leave those None: 'from the dataset'),
    its model name, which weights its validation picked and its class names."""
    try:
        if not isinstance(run.state, dict):
            return {}
    except (ValueError, OSError):  # a config is a nicety; a broken file is reported when the weights load
        return {}
    cfg = run.saved_config
    for key, value in (("num_classes", run.get(ckpt_io.NUM_CLASSES_KEY)), ("in_chans", run.get(ckpt_io.IN_CHANS_KEY))):
        if cfg.get(key) is None and isinstance(value, int):
            cfg[key] = value
    if not cfg.get("model") and isinstance(run.get(ckpt_io.MODEL_NAME_KEY), str):
        cfg["model"] = run.get(ckpt_io.MODEL_NAME_KEY)
    if run.get(ckpt_io.BEST_SOURCE_KEY) in ("raw", "ema"):
        cfg["best_source"] = run.get(ckpt_io.BEST_SOURCE_KEY)
    if run.classes is not None:  # class names, for predict and the exported file
        cfg["classes"] = run.classes
    return cfg


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
    if cfg.get("from_run"):
        tc = from_checkpoint_dict({k: v for k, v in cfg.items() if k != "from_run"}).replace(
            pretrained=False, init_checkpoint=None, resume=None)
        return build_model(tc, int(cfg["num_classes"]), int(cfg["in_chans"]))
    ours = is_ours(str(cfg["model"]))  # ghostnetv3_100 or timm's gnv3_100
    kwargs = {k: cfg[k] for k in _ARCH_KEYS if cfg.get(k) is not None and (ours or k == "drop_rate")}
    model = create_model(cfg["model"], num_classes=int(cfg["num_classes"]), in_chans=int(cfg["in_chans"]),
                         **kwargs)
    if cfg.get("repify"):  # a repified run's checkpoint has branch keys
        model = repify(model, num_conv_branches=cfg.get("num_conv_branches") or 3)
    return model


def _is_model_name(name: str) -> bool:
    if name in list_models() or name.startswith(("ghostnetv3_", "ghostnetv2_")):
        return True
    import timm  # lazy: heavy (4 s: torchvision and every timm model); only a name that is not ours needs it
    return name in timm.list_models()


def _run_dir_config(run: Run) -> dict[str, Any]:
    """A run directory's config: the checkpoint's is the truth (as for eval and --resume); config.yaml
    fills only what an old checkpoint lacks, and an edit there is reported, not used. Compared as
    saved: None in both means 'from the dataset', not an edit."""
    if not run.file(ckpt_io.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run.path} is not a run directory: no {ckpt_io.CONFIG_FILE} in it")
    stored = _stored_config(run)  # a broken best.pt next to an intact last.pt: last.pt, and a note
    run.report_config_edits("pass --img-size/--num-classes to change them")
    cfg = {**{k: v for k, v in run.yaml_config().items() if k not in stored}, **stored}
    cfg["from_run"] = True
    return cfg


def _file_config(run: Run, model: Optional[str]) -> dict[str, Any]:
    """A checkpoint file's config: the one inside it, else a config.yaml beside it."""
    path = run.path
    resolve_run_checkpoint(path, run.checkpoint)  # --checkpoint best|last on a file is an error
    if path.suffix in _EXPORTED_SUFFIXES:
        raise ValueError(f"{path} is already an exported {_EXPORTED_SUFFIXES[path.suffix]} model; this command "
                         f"needs the model it came from: a run directory, a PyTorch checkpoint or a model name")
    cfg = _stored_config(run)
    if not cfg.get("model"):
        cfg.update(run.yaml_config())
    cfg["from_run"] = bool(cfg.get("model")) and not model
    return cfg


def _source_config(spec_str: str, run: Optional[Run], model: Optional[str]) -> dict[str, Any]:
    """What the source says about the model before any flag: a run's config, or a model name."""
    if run is not None:
        return _run_dir_config(run) if run.is_dir else _file_config(run, model)
    if spec_str.endswith(CHECKPOINT_SUFFIXES) or os.sep in spec_str:
        raise FileNotFoundError(f"no such run directory or checkpoint: {spec_str}")
    if _is_model_name(spec_str):
        return {"model": spec_str}
    raise ValueError(f"'{spec_str}' is not a run directory, a checkpoint file or a known model name")


def _weights(choice: WeightsChoice) -> dict[str, torch.Tensor]:
    """The flat state dict of the chosen weights (EMA, raw or a plain file's)."""
    if not isinstance(choice.state, dict):
        raise ValueError(f"{choice.path}: expected a dict of tensors or of state dicts, "
                         f"got {type(choice.state).__name__}")
    return read_state_dict(choice.state, use_ema=choice.use_ema, where=str(choice.path))


def _check_head(ckpt_path: Path, inferred: dict[str, int], num_classes: Optional[int]) -> None:
    if num_classes is not None and inferred.get("num_classes") not in (None, num_classes):
        # deploy commands have no --reset-head: a head of another size is not this model
        raise ValueError(f"{ckpt_path} holds a {inferred['num_classes']}-class head; --num-classes {num_classes} "
                         f"does not fit it: drop --num-classes (it is read from the checkpoint), or fine-tune "
                         f"for {num_classes} classes with `ghostnetv3 train --init-checkpoint {ckpt_path} "
                         f"--reset-head --num-classes {num_classes}`")


def load_for_deploy(spec: str | os.PathLike, *, model: Optional[str] = None,
                    num_classes: Optional[int] = None, in_chans: Optional[int] = None,
                    img_size: Optional[int] = None, weights: Optional[str] = None,
                    checkpoint: Optional[str] = None) -> tuple[nn.Module, dict[str, Any]]:
    """RUN_DIR | CHECKPOINT (+ model) | MODEL_NAME -> (eval-mode model, config dict).

    Weights: the rule of engine.run (the one `eval` uses): best.pt (else last.pt) and the weights its
    validation picked, else EMA when there is EMA; `weights` raw|ema and `checkpoint` best|last choose
    instead. cfg['weights_from'] says which, in words.

    The config dict always has model, num_classes, in_chans, img_size, weights ('ema' | 'raw' |
    'plain' | 'random'), source; and, when known, data, mean, std and the architecture keys.
    Explicit keyword arguments override what the run recorded.
    """
    spec_str = str(spec)
    path = Path(spec_str)
    run = None
    run = Run(path, checkpoint=checkpoint) if path.is_dir() or path.is_file() else None
    cfg = _source_config(spec_str, run, model)
    if model:
        cfg["model"] = model
    if not cfg.get("model"):
        raise ValueError(f"{spec_str}: which architecture? pass --model NAME (no config.yaml next to it)")
    # EMA weights unless the run's own validation picked the raw ones (a short run's EMA can
    # still be near its random start).
    choice = run.choose(weights) if run is not None else None
    sd = _weights(choice) if choice is not None else {}
    inferred = _infer_from_weights(sd)
    if choice is not None:
        _check_head(choice.path, inferred, num_classes)
    for key, value, default in (("num_classes", num_classes, 1000), ("in_chans", in_chans, 3),
                                ("img_size", img_size, 224)):
        if value is not None:
            cfg[key] = value
        elif cfg.get(key) is None:
            cfg[key] = inferred.get(key, default)

    net = _build(cfg)
    if choice is not None:
        load_checkpoint(net, sd, use_ema=choice.use_ema)  # knows every layout (reference, timm, DDP)
    cfg.pop("from_run", None)
    cfg.update(weights=choice.weights if choice is not None else "random", source=spec_str)
    if choice is not None:
        cfg["weights_from"] = choice.describe()
    return net.eval(), cfg
