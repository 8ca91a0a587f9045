"""Our GhostNetV3/V2 in timm's registry: `gnv3_050/100/130/160` and `gnv2_050/100/130/160`.

timm's entrypoints and default configs for our models. Imported by `ghostnetv3` as soon as timm is
loaded (see `registry.register_with_timm`), so `timm.create_model("gnv3_100", features_only=True)`
and libraries that take a timm name (segmentation_models_pytorch: `encoder_name="tu-gnv3_100"`)
build our models.  The names do not shadow timm's own `ghostnetv3_*` (timm reads the text after a
dot as a pretrained tag, so a `ghostnetv3_100.ours` would be timm's model).

FX: timm's FX helpers (`create_feature_extractor`, `get_graph_node_names`, `FeatureGraphNet`) keep
`RepConv2d` and `DFCAttention` as leaf modules: their forwards branch on input shapes (the
training-mode batch check, the pooling window that fits a small map), which symbolic tracing
cannot record; as leaves they run eagerly inside the traced graph, so outputs stay bit-exact.
"""
from timm.layers import register_notrace_module
from timm.models import generate_default_cfgs, register_model

from ..rep import RepConv2d
from .ghostnet import DFCAttention, GhostNet, pretrained_cfg_for
from .registry import TIMM_NAMES, build_ours

__all__: list = []  # register_model appends the entrypoints

register_notrace_module(RepConv2d)
register_notrace_module(DFCAttention)

default_cfgs = generate_default_cfgs({name: pretrained_cfg_for(name) for name in TIMM_NAMES.values()})


def _entrypoint(ours: str, timm_name: str):
    def build(pretrained: bool = False, **kwargs) -> GhostNet:
        return build_ours(ours, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = timm_name
    build.__module__ = __name__
    build.__doc__ = f"{ours} of ghostnetv3 (train form; `ghostnetv3.reparameterize` fuses it)"
    return build


for _ours, _timm_name in TIMM_NAMES.items():
    globals()[_timm_name] = register_model(_entrypoint(_ours, _timm_name))
