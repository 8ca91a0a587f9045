"""`models/timm_entrypoints.py`: our names in timm's registry, each built by `registry.build_ours` with
the default config `ghostnet.pretrained_cfg_for` gives."""
import timm
import torch

import ghostnetv3  # noqa: F401  (registers our names in timm's registry)
from ghostnetv3.models.ghostnet import pretrained_cfg_for
from ghostnetv3.models.registry import TIMM_NAMES, build_ours, is_ours


def test_pretrained_cfg_is_timms_ghostnet_default_with_gray_statistics_averaged():
    rgb = pretrained_cfg_for("gnv3_100")
    assert rgb["architecture"] == "gnv3_100" and rgb["input_size"] == (3, 224, 224)
    assert (rgb["interpolation"], rgb["crop_pct"], rgb["num_classes"]) == ("bicubic", 0.875, 1000)
    gray = pretrained_cfg_for("gnv3_100", in_chans=1, num_classes=10)
    assert gray["input_size"] == (1, 224, 224) and gray["num_classes"] == 10
    assert gray["mean"] == (sum(rgb["mean"]) / 3,) and gray["std"] == (sum(rgb["std"]) / 3,)


def test_every_timm_name_is_registered_with_its_default_cfg():
    for ours, timm_name in TIMM_NAMES.items():
        assert timm.is_model(timm_name) and is_ours(timm_name) and is_ours(ours)
        cfg = timm.models.get_pretrained_cfg(timm_name)
        assert cfg.architecture == timm_name and cfg.mean == pretrained_cfg_for(timm_name)["mean"]


def test_timm_entrypoint_builds_what_build_ours_builds_under_either_name():
    for ours in ("ghostnetv3_050", "ghostnetv2_050"):
        torch.manual_seed(0)
        via_timm = timm.create_model(TIMM_NAMES[ours], num_classes=3, in_chans=1)
        torch.manual_seed(0)
        direct = build_ours(ours, num_classes=3, in_chans=1)
        torch.manual_seed(0)
        alias = build_ours(TIMM_NAMES[ours], num_classes=3, in_chans=1)
        for other in (direct, alias):
            a, b = via_timm.state_dict(), other.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert via_timm.pretrained_cfg["architecture"] == TIMM_NAMES[ours]
