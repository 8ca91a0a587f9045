"""GhostNetV3 models: fusion exactness at every width, odd sizes, the SPEC size table, the timm
surface, and bad input."""
import pytest
import torch

import ghostnetv3
from ghostnetv3.rep.count import count_params_macs
from ghostnetv3.rep import RepConv2d, has_branches, reparameterize, verify_fusion
from tests.conftest import randomize_bn_stats

WIDTHS = ["ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160"]

# SPEC §2: measured on the reference code at 224×224, 1000 classes.
SIZE_TABLE = {
    "ghostnetv3_050": (3.40e6, 117.5e6, 2.85e6, 49.6e6),
    "ghostnetv3_100": (8.13e6, 404.1e6, 6.15e6, 167.0e6),
    "ghostnetv3_130": (12.22e6, 654.8e6, 8.95e6, 269.3e6),
    "ghostnetv3_160": (17.28e6, 971.6e6, 12.38e6, 398.6e6),
}


def _fused_pair(name, **kw):
    model = randomize_bn_stats(ghostnetv3.create_model(name, **kw)).eval()
    return model, reparameterize(model)


@pytest.mark.parametrize("name", WIDTHS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_fused_equals_unfused_every_width(name, in_chans):
    model, fused = _fused_pair(name, num_classes=10, in_chans=in_chans)
    assert not has_branches(fused)
    g = torch.Generator().manual_seed(0)
    for size in [(32, 32), (33, 47)]:
        x = torch.randn(2, in_chans, *size, generator=g)
        assert verify_fusion(model, fused, x) <= 1e-5, size


@pytest.mark.parametrize("size", [(224, 320), (32, 32), (33, 47)])
def test_fused_equals_unfused_large_and_batch_one(size):
    model, fused = _fused_pair("ghostnetv3_050", num_classes=7)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    assert verify_fusion(model, fused, x) <= 1e-5
    with torch.no_grad():
        assert fused(x).shape == (1, 7)  # batch 1 keeps its batch dimension


def test_stem_stride_one_for_tiny_images():
    model, fused = _fused_pair("ghostnetv3_050", num_classes=10, in_chans=1, stem_stride=1)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    assert verify_fusion(model, fused, x) <= 1e-5
    with torch.no_grad():
        assert model.forward_features(x).shape[-1] == 2  # 16× downsampling: the last map is 2×2


def test_train_mode_step_at_32px_and_odd_sizes():
    model = ghostnetv3.create_model("ghostnetv3_050", num_classes=10).train()
    for size in [(32, 32), (33, 47)]:
        out = model(torch.randn(4, 3, *size))
        out.sum().backward()
        assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", WIDTHS)
def test_size_table_matches_reference(name):
    model = ghostnetv3.create_model(name).eval()
    p_train, m_train = count_params_macs(model)
    p_fused, m_fused = count_params_macs(reparameterize(model))
    for got, want in zip((p_train, m_train, p_fused, m_fused), SIZE_TABLE[name]):
        assert abs(got - want) / want <= 0.005, (name, got, want)


def test_v2_is_v3_without_branches():
    v2 = ghostnetv3.create_model("ghostnetv2_100").eval()
    v3 = ghostnetv3.create_model("ghostnetv3_100").eval()
    assert all(m.num_conv_branches == 1 and not m.has_scale and not m.has_identity
               for m in v2.modules() if isinstance(m, RepConv2d))
    assert count_params_macs(reparameterize(v2))[1] == count_params_macs(reparameterize(v3))[1]


def test_timm_like_surface_and_features():
    model = ghostnetv3.create_model("ghostnetv3_050", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[-1] for f in maps] == [96 // i["reduction"] for i in model.feature_info]
    assert [f.shape[1] for f in maps] == [i["num_chs"] for i in model.feature_info]
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    fo = ghostnetv3.create_model("ghostnetv3_050", features_only=True, out_indices=(2, 3, 4)).eval()
    with torch.no_grad():
        outs = fo(x)
    assert [o.shape[-1] for o in outs] == [96 // 8, 96 // 16, 96 // 32]


def test_bad_input():
    with pytest.raises(ValueError, match="ghostnetv3_100"):
        ghostnetv3.create_model("ghostnetv3_999")
    with pytest.raises(ValueError, match="width"):
        ghostnetv3.create_model("ghostnetv3_100", width=0)
    with pytest.raises(ValueError, match="num_conv_branches"):
        ghostnetv3.create_model("ghostnetv3_100", num_conv_branches=0)
    model = ghostnetv3.create_model("ghostnetv3_050").eval()
    with pytest.raises(ValueError, match="smaller than the supported 32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.randn(1, 1, 64, 64))


def test_channels_last_train_step_matches():
    # float64: BN over the few values of late 2×2 maps amplifies fp32 rounding in the gradients
    torch.manual_seed(0)
    a = ghostnetv3.create_model("ghostnetv3_050", num_classes=4, drop_rate=0.0).train().double()
    b = ghostnetv3.create_model("ghostnetv3_050", num_classes=4, drop_rate=0.0).train().double()
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 40, 40, dtype=torch.double)
    ya, yb = a(x), b(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(ya, yb, rtol=1e-9, atol=1e-10)
    ya.sum().backward(), yb.sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=n)


def test_torchvision_models_by_prefix():
    create_model = ghostnetv3.create_model
    m = create_model("torchvision/shufflenet_v2_x1_0", num_classes=7, in_chans=1).eval()
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    first = next(c for c in m.modules() if isinstance(c, torch.nn.Conv2d))
    assert first.in_channels == 1
    with pytest.raises(ValueError, match="did you mean shufflenet_v2_x1_0"):
        create_model("torchvision/shufflenet_v2_x1_00")
    with pytest.raises(ValueError, match="use repify"):
        create_model("torchvision/mobilenet_v2", num_conv_branches=3)
