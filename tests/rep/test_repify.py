"""repify on torchvision/timm CNNs: unchanged function after conversion, exact fusion, and the
fused weights load into the unmodified original model."""
import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from ghostnetv3.rep import RepConv2d, has_branches, repify, reparameterize
from tests.conftest import randomize_bn_stats

BUILDERS = {
    "tv_mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "tv_shufflenet_v2_x1_0": lambda: torchvision.models.shufflenet_v2_x1_0(num_classes=10),
    "timm_mobilenetv2_100": lambda: timm.create_model("mobilenetv2_100", num_classes=10),
    "timm_ghostnetv2_100": lambda: timm.create_model("ghostnetv2_100", num_classes=10),
    "timm_mobilenetv3_small_100": lambda: timm.create_model("mobilenetv3_small_100", num_classes=10),
}


def _randomize_all_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("name", list(BUILDERS))
def test_repify_preserves_function_and_fuses_back_to_original_layout(name):
    torch.manual_seed(0)
    # float64, so that the checks are about the math (fp32 rounding grows through ~50 random BNs)
    original = _randomize_all_bn(BUILDERS[name](), seed=1).eval().double()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    rep = repify(original, num_conv_branches=3)
    sites = [m for m in rep.modules() if isinstance(m, RepConv2d)]
    assert sites, "nothing was converted"
    assert any(m.has_scale for m in sites), "depthwise sites must get a scale branch"
    with torch.no_grad():
        ref = original(x)
        assert (rep.eval()(x) - ref).abs().max() <= 1e-10  # unchanged right after repify
    randomize_bn_stats(rep, seed=2)  # the new branches as if trained
    fused = reparameterize(rep)
    assert type(fused) is type(original) and not has_branches(fused)
    assert [type(m) for m in fused.modules()] == [type(m) for m in original.modules()]
    fresh = BUILDERS[name]().eval().double()
    fresh.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        trained = rep.eval()(x)
        assert (trained - ref).abs().max() > 1e-3, "the randomized branches should change the output"
        assert (fused(x) - trained).abs().max() <= 1e-9 * max(1.0, float(trained.abs().max()))
        assert (fresh(x) - fused(x)).abs().max() == 0


def test_repify_trains_and_keeps_training_function():
    model = torchvision.models.mobilenet_v2(num_classes=4, dropout=0.0).train().double()
    rep = repify(model).train()
    x = torch.randn(4, 3, 32, 32, dtype=torch.double)
    torch.testing.assert_close(rep(x), model(x), rtol=1e-9, atol=1e-10)  # silent new branches
    rep(x).sum().backward()
    site = next(m for m in rep.modules() if isinstance(m, RepConv2d) and m.num_conv_branches == 3)
    assert site.bn_weight.grad[1:].abs().sum() > 0, "new branches must receive gradients"


def test_repify_nothing_to_convert_warns():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    with pytest.warns(UserWarning, match="Sequential"):
        out = repify(model)
    assert isinstance(out[0], nn.Conv2d)
    with pytest.raises(ValueError):
        repify(model, num_conv_branches=0)
