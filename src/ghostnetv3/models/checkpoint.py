"""Read checkpoints in every layout met in the wild and load them without the user naming it.

Layouts: ours (train or fused form, `.safetensors` or weights-only `.pt`), the reference code's
(`state_dict`/`state_dict_ema`, ConvBnAct with `.bn.`), timm's `ghostnetv3_*` (train or fused) and
`ghostnetv2_*`, DDP `module.` prefixes, and profiler counters (`*total_ops`) to drop.  Untrusted
files are never unpickled: `torch.load(weights_only=True)` or safetensors.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ghostnetv3 import safeload

__all__ = ["read_state_dict", "convert_state_dict", "load_checkpoint", "save_state_dict"]

_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
_RAW_KEYS = ("state_dict", "model")


def _unwrap(obj, use_ema: bool, path) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state dict (found {type(obj).__name__})")
    order = (_EMA_KEYS + _RAW_KEYS) if use_ema else (_RAW_KEYS + _EMA_KEYS)
    for key in order:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors under any of {order}")
    return tensors


def read_state_dict(path_or_sd, use_ema: bool = True, where: str | None = None) -> dict[str, torch.Tensor]:
    """The one reader of weights: a flat {name: tensor} dict from a file or a loaded checkpoint dict (any
    layout: ours, timm's, the reference code's), EMA weights preferred when `use_ema`, `module.` prefixes
    stripped, profiler counters dropped. `where` names a loaded dict's file in errors. A file is read
    weights-only (safeload: a broken file is one line naming it)."""
    if isinstance(path_or_sd, (str, os.PathLike)):
        path, obj = os.fspath(path_or_sd), safeload.read(path_or_sd)
    else:
        path, obj = where or "<state dict>", path_or_sd
    sd = _unwrap(obj, use_ema, path)
    out = {}
    for k, v in sd.items():
        if "total_ops" in k or "total_params" in k:
            continue
        while k.startswith("module."):
            k = k[len("module."):]
        if k == "n_averaged":  # torch.optim.swa_utils.AveragedModel bookkeeping
            continue
        out[k] = v
    return out


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    """Save weights as safetensors (contiguous CPU copies), atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp,
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    # safetensors creates the file 0600; a weights file is as readable as any other output (umask applies)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- timm / reference
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RULES = [  # (pattern, replacement, branch-index group or None)
    (rf"^(.*)\.(primary|cheap|dw)_rpr_conv\.(\d+)\.conv\.weight$", r"\1.\2.weight", 3),
    (rf"^(.*)\.(primary|cheap|dw)_rpr_conv\.(\d+)\.bn1\.{_BN}$", r"\1.\2.bn_\4", 3),
    (rf"^(.*)\.(primary|cheap|dw)_rpr_scale\.conv\.weight$", r"\1.\2.scale_weight", None),
    (rf"^(.*)\.(primary|cheap|dw)_rpr_scale\.bn1\.{_BN}$", r"\1.\2.scale_bn_\3", None),
    (rf"^(.*)\.(primary|cheap|dw)_rpr_skip\.{_BN}$", r"\1.\2.identity_bn_\3", None),
    (r"^(.*\.ghost1)\.short_conv\.(.*)$", r"\1.dfc.short_conv.\2", None),
    # fused V3 (conv with bias) and V2 (conv + BN) forms
    (r"^(.*)\.primary_conv\.0\.(weight|bias)$", r"\1.primary.\2", -1),
    (r"^(.*)\.cheap_operation\.0\.(weight|bias)$", r"\1.cheap.\2", -1),
    (rf"^(.*)\.primary_conv\.1\.{_BN}$", r"\1.primary.bn_\2", 0),
    (rf"^(.*)\.cheap_operation\.1\.{_BN}$", r"\1.cheap.bn_\2", 0),
    (r"^(.*)\.conv_dw\.(weight|bias)$", r"\1.dw.\2", -1),
    (rf"^(.*)\.bn_dw\.{_BN}$", r"\1.dw.bn_\2", 0),
]
_RULES = [(re.compile(p), r, g) for p, r, g in _RULES]


def _looks_foreign(sd: dict) -> bool:
    return any(("_rpr_" in k or "primary_conv." in k or "cheap_operation." in k or ".conv_dw." in k
                or ".ghost1.short_conv." in k) for k in sd)


def _from_timm(sd: dict, target: dict) -> dict:
    """timm/reference GhostNet keys → ours (branch tensors stacked into [B, ...])."""
    out, stacked = {}, defaultdict(dict)
    for k, v in sd.items():
        if "bn." in k and (".ghost" in k or ".dw_rpr_" in k):  # reference → timm (timm's filter)
            k = k.replace("bn.", "bn1.")
        for pat, rep, group in _RULES:
            m = pat.match(k)
            if not m:
                continue
            new = m.expand(rep)
            if new.endswith("bn_num_batches_tracked"):  # one counter per RepConv2d
                out[re.sub(r"\.(scale_|identity_)?bn_num_batches_tracked$", ".num_batches_tracked", new)] = v
            elif group is None:
                out[new] = v
            elif group == -1:  # fused conv: matches a fused target; V2-style plain conv: branch 0
                tshape = target.get(new)
                if tshape is not None and tuple(tshape.shape) == tuple(v.shape):
                    out[new] = v
                else:
                    stacked[new][0] = v
            else:
                stacked[new][int(m.group(group)) if group else 0] = v
            break
        else:
            out[k] = v
    for k, parts in stacked.items():
        v = torch.stack([parts[i] for i in sorted(parts)])
        t = target.get(k)
        out[k] = v.reshape(t.shape) if t is not None and t.numel() == v.numel() else v
    return out


def convert_state_dict(sd: dict, model: nn.Module) -> dict:
    """Map any known layout onto `model`'s keys (no loading)."""
    target = model.state_dict()
    if set(sd) == set(target) or not _looks_foreign(sd):
        return dict(sd)
    return _from_timm(sd, target)


def _head_keys(model: nn.Module) -> set[str]:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if head is None:
        return set()
    names = {id(m): n for n, m in model.named_modules()}
    prefix = names.get(id(head))
    return {f"{prefix}.{k}" for k in head.state_dict()} if prefix else set()


def _adapt_stem(sd: dict, target: dict) -> dict:
    """3-channel (ImageNet) weights into a model with another input channel count: the first conv's
    kernel goes through timm's `adapt_input_conv` (1 channel: the RGB kernels summed, so a gray image
    gets the response its RGB copy would; N channels: repeated and scaled by 3/N)."""
    from timm.models import adapt_input_conv  # lazy: `import ghostnetv3` does not load timm (4 s)

    stem = next((k for k, v in target.items() if v.ndim == 4 and k.endswith("weight")), None)
    if stem is None or stem not in sd:
        return sd
    src, dst = sd[stem], target[stem]
    same_otherwise = (src.shape[0], *src.shape[2:]) == (dst.shape[0], *dst.shape[2:])
    if src.ndim == 4 and src.shape[1] != dst.shape[1] and same_otherwise:
        sd = dict(sd)
        sd[stem] = adapt_input_conv(int(dst.shape[1]), src, base_chans=int(src.shape[1]))
    return sd


def load_checkpoint(model: nn.Module, path_or_sd, use_ema: bool = True, reset_head: bool = False,
                    strict: bool = True) -> nn.Module:
    """Load weights of any known layout into `model` (in place) and return it.

    `reset_head=True` keeps the model's own classifier when the class counts differ (fine-tuning).
    Weights trained on another input channel count (e.g. ImageNet RGB into `in_chans=1`) are adapted
    the way timm's `adapt_input_conv` does: the stem's RGB kernels are summed."""
    target = model.state_dict()
    sd = _adapt_stem(convert_state_dict(read_state_dict(path_or_sd, use_ema=use_ema), model), target)
    head = _head_keys(model)
    for k in sorted(head):
        if k in sd and k in target and sd[k].shape != target[k].shape:
            if not reset_head:
                raise ValueError(
                    f"checkpoint head {k} has shape {list(sd[k].shape)} but the model's is "
                    f"{list(target[k].shape)} (different class count); pass reset_head=True "
                    f"(CLI: --reset-head) to keep the backbone and train a new head")
        if reset_head:
            sd.pop(k, None)
    missing = [k for k in target if k not in sd and not (reset_head and k in head)]
    unexpected = [k for k in sd if k not in target]
    if strict and (missing or unexpected):
        raise ValueError(
            "checkpoint matches no known layout for this model: "
            f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3]) or '-'}), "
            f"{len(missing)} missing keys ({', '.join(missing[:3]) or '-'}); is it a "
            "checkpoint of another model or of the other form (train vs fused)?")
    for k, v in sd.items():
        if k in target and v.shape != target[k].shape:
            raise ValueError(f"checkpoint tensor {k} has shape {list(v.shape)}, the model expects "
                             f"{list(target[k].shape)}: a different width or architecture?")
    model.load_state_dict(sd, strict=False)
    return model
