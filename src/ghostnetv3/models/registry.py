"""Model names: ours (GhostNetV3 / V2 at registered widths) first, `torchvision/<name>` for torchvision's
classification builders (e.g. torchvision/shufflenet_v2_x1_0, which timm lacks), then anything timm knows.

Ours are also in timm's registry as `gnv3_050/100/130/160` and `gnv2_*` (timm's own `ghostnetv3_*`
keep their names), so `timm.create_model("gnv3_100")` and libraries that take a timm name
(segmentation_models_pytorch's `tu-gnv3_100`) build our models once `ghostnetv3` is imported."""
from __future__ import annotations

import difflib
import importlib.abc
import importlib.util
import sys

import torch
import torch.nn as nn

from .checkpoint import load_checkpoint
from .ghostnet import create_ghostnet

__all__ = ["create_model", "list_models", "is_ours", "build_ours", "TIMM_NAMES"]

_WIDTHS = {"050": 0.5, "100": 1.0, "130": 1.3, "160": 1.6}
# V2 is V3 without re-parameterization branches: one conv+BN per site.
_V2 = dict(num_conv_branches=1, scale_branch=False, identity_branch=False)
_REGISTRY: dict[str, dict] = {}
TIMM_NAMES: dict[str, str] = {}  # our name -> its name in timm's registry
for _tag, _w in _WIDTHS.items():
    _REGISTRY[f"ghostnetv3_{_tag}"] = dict(width=_w)
    _REGISTRY[f"ghostnetv2_{_tag}"] = dict(width=_w, **_V2)
    TIMM_NAMES[f"ghostnetv3_{_tag}"], TIMM_NAMES[f"ghostnetv2_{_tag}"] = f"gnv3_{_tag}", f"gnv2_{_tag}"
_ALIASES = {timm_name: ours for ours, timm_name in TIMM_NAMES.items()}


TORCHVISION_PREFIX = "torchvision/"


def _torchvision_model(name: str, *, num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    import torchvision  # lazy: heavy; only torchvision/<name> models need it (`import ghostnetv3` stays light)

    arch = name[len(TORCHVISION_PREFIX):]
    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        near = difflib.get_close_matches(arch, known, n=3)
        raise ValueError(f"unknown torchvision model '{arch}'" + (f" (did you mean {', '.join(near)}?)" if near else "")
                         + "; see torchvision.models.list_models()")
    if pretrained:
        raise ValueError(f"{name}: pretrained weights would be downloaded; pass checkpoint_path= instead")
    for ours_only in ("num_conv_branches", "scale_branch", "identity_branch", "stem_stride"):
        if kwargs.pop(ours_only, None) not in (None, 1):
            raise ValueError(f"{ours_only} applies to GhostNetV3 models; for '{name}' use repify")
    kwargs.pop("width", None)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:  # the first 3-channel conv takes in_chans instead (gray: 1)
        for parent in model.modules():
            for cname, conv in parent.named_children():
                if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
                    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                    conv.dilation, conv.groups if conv.groups == 1 else in_chans,
                                    conv.bias is not None, conv.padding_mode)
                    with torch.no_grad():
                        new.weight.copy_(conv.weight.mean(1, keepdim=True).expand_as(new.weight) * 3 / in_chans)
                    setattr(parent, cname, new)
                    break
            else:
                continue
            break
    return model


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_ours(name: str) -> bool:
    return name in _REGISTRY or name in _ALIASES


def build_ours(name: str, **kwargs) -> nn.Module:
    """One of ours by either name (`ghostnetv3_100` or timm's `gnv3_100`); `pretrained_cfg`
    names the timm registry entry that rebuilds it."""
    ours = _ALIASES.get(name, name)
    return create_ghostnet(TIMM_NAMES[ours], **{**_REGISTRY[ours], **kwargs})


class _RegisterOnTimmImport(importlib.abc.MetaPathFinder):
    """Registers our names in timm's registry right after `timm` is first imported.  Why not import
    timm here: it loads torchvision and every timm model (4 s on the 2-core machine), and
    `import ghostnetv3` stays light for the CLI."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            importlib.import_module("ghostnetv3.models.timm_entrypoints")

        spec.loader.exec_module = exec_then_register
        return spec


def register_with_timm() -> None:
    """Put our names into timm's registry now if timm is loaded, else when it is first imported."""
    if "timm" in sys.modules:
        importlib.import_module("ghostnetv3.models.timm_entrypoints")
    elif not any(isinstance(f, _RegisterOnTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnTimmImport())


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, pretrained: bool = False,
                 checkpoint_path: str | None = None, **kwargs) -> nn.Module:
    """Build `name`: ghostnetv3_050/100/130/160 and ghostnetv2_* are ours (any width via
    `width=`; also under timm's names gnv3_*/gnv2_*; `features_only=True`, `out_indices=`,
    `feature_cls=` as in timm); any other name is built by timm (no downloads: `pretrained` needs
    internet)."""
    if name.startswith(TORCHVISION_PREFIX):
        model = _torchvision_model(name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    elif is_ours(name):
        model = build_ours(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    else:
        import timm  # lazy: heavy (see _RegisterOnTimmImport); only timm's own names need it
        if not timm.is_model(name):
            known = list_models()
            # timm registers ghostnetv3_* too: one name once in the hint
            near = difflib.get_close_matches(name, list(dict.fromkeys(known + timm.list_models())), n=3)
            raise ValueError(f"unknown model '{name}'" + (f" (did you mean {', '.join(near)}?)" if near else "")
                             + f"; ours: {', '.join(known)}; or any name from timm.list_models()")
        for ours_only in ("num_conv_branches", "scale_branch", "identity_branch", "width", "stem_stride"):
            if kwargs.pop(ours_only, None) not in (None, 1.0, 1) and ours_only != "width":
                raise ValueError(f"{ours_only} applies to GhostNetV3 models; for '{name}' use repify")
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    return model
