"""RepConv2d: the fast training path equals the plain per-branch math (outputs, gradients,
running statistics), and fuse() equals the branches in eval mode."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

from ghostnetv3.rep import RepConv2d, has_branches, reparameterize, verify_fusion

CASES = [  # cin, cout, k, stride, groups, branches, scale, identity
    (8, 8, 3, 1, 8, 3, True, True),     # depthwise cheap op (GhostNet)
    (8, 8, 5, 2, 8, 3, True, True),     # depthwise stride 2 (identity impossible)
    (8, 8, 3, 2, 8, 1, True, False),
    (8, 12, 1, 1, 1, 3, True, True),    # primary 1×1 (covariance merge)
    (12, 12, 1, 1, 1, 3, True, True),   # 1×1 with identity branch
    (24, 6, 1, 1, 1, 3, True, True),    # 1×1 where the stacked path is cheaper
    (12, 12, 1, 2, 1, 2, True, True),   # strided 1×1
    (8, 8, 3, 1, 1, 2, True, True),     # dense k×k with scale + identity
    (8, 16, 3, 2, 4, 2, True, True),    # grouped, stride 2
    (8, 8, 3, 1, 2, 2, False, True),
    (6, 6, 1, 1, 6, 3, True, True),     # depthwise 1×1
    (8, 8, 3, 1, 8, 2, False, False),
    (8, 8, 7, 1, 8, 1, True, True),
]


def _randomize(m: RepConv2d, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return m


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("momentum", [0.1, None])
def test_fast_path_matches_per_branch_math(case, momentum):
    _check_fast_path(case, momentum, (9, 7), channels_last=False)


# maps smaller than the kernel (exact crop, the small-map matmul path), odd and non-square sizes
SMALL_MAPS = [(1, 1), (2, 2), (2, 1), (1, 3), (3, 3), (4, 4), (3, 5)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("size", SMALL_MAPS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fast_path_matches_per_branch_math_on_small_maps(case, size):
    _check_fast_path(case, 0.1, size, channels_last=sum(size) % 2 == 0)


def _check_fast_path(case, momentum, size, channels_last):
    cin, cout, k, s, g, B, sc, idb = case
    fast = _randomize(RepConv2d(cin, cout, k, s, groups=g, num_conv_branches=B, scale_branch=sc,
                                identity_branch=idb, momentum=momentum).double())
    ref = copy.deepcopy(fast)
    ref.exact_fast_path = False
    x = torch.randn(4, cin, *size, dtype=torch.double) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        fast = fast.to(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    for step in range(2):  # two steps: running statistics compound
        y1, y2 = fast(x1), ref(x2)
        torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
        gy = torch.randn_like(y1)
        (y1 * gy).sum().backward()
        (y2 * gy).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-10)
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=n)
    for (n, b), c in zip(fast.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-10, atol=1e-12, msg=n)
    assert int(fast.num_batches_tracked) == 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_fuse_equals_branches_in_eval(case):
    cin, cout, k, s, g, B, sc, idb = case
    m = _randomize(RepConv2d(cin, cout, k, s, groups=g, num_conv_branches=B, scale_branch=sc,
                             identity_branch=idb), seed=1).eval()
    conv = m.fuse()
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    x = torch.randn(3, cin, 11, 10, generator=torch.Generator().manual_seed(0))
    m.exact_fast_path = False
    with torch.no_grad():
        ref = m(x)
        tol = 1e-5 * max(1.0, float(ref.abs().max()))  # fp32: 1e-5 relative to the output scale
        assert (conv(x) - ref).abs().max() <= tol
        m.exact_fast_path = True  # the folded eval forward is the fused conv as well
        assert (m(x) - ref).abs().max() <= tol


def test_branch_presence_follows_shapes():
    assert RepConv2d(8, 8, 3, 1, groups=8).has_identity
    assert not RepConv2d(8, 8, 3, 2, groups=8).has_identity       # stride 2
    assert not RepConv2d(8, 16, 3, 1, groups=8).has_identity      # in != out
    assert not RepConv2d(8, 8, 1).has_scale                       # 1×1 kernel: no scale branch
    assert RepConv2d(8, 8, 3, scale_branch=False).has_scale is False


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_conv_branches"):
        RepConv2d(4, 4, 3, num_conv_branches=0)
    with pytest.raises(ValueError, match="divisible by groups"):
        RepConv2d(6, 4, 3, groups=4)
    m = RepConv2d(4, 4, 3).train()
    with pytest.raises(ValueError, match="more than 1 value"):
        m(torch.randn(1, 4, 1, 1))


def test_reparameterize_walks_model_and_switches_to_eval():
    net = nn.Sequential(RepConv2d(3, 8, 3), nn.ReLU(), nn.Sequential(RepConv2d(8, 8, 3, groups=8)))
    _randomize(net[0]), _randomize(net[2][0], seed=3)
    with pytest.warns(UserWarning, match="train mode"):
        fused = reparameterize(net)
    assert not fused.training and not has_branches(fused)
    assert isinstance(net[0], RepConv2d), "inplace=False must leave the original intact"
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scale = max(1.0, float(fused(x).abs().max()))
    assert verify_fusion(net, fused, x) <= 1e-5 * scale
    assert net.training, "verify_fusion must restore the caller's mode"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = reparameterize(net.eval(), inplace=True)
    assert same is net and not has_branches(net)


def test_reparameterize_fuses_timm_modules():
    import timm
    m = timm.create_model("ghostnetv3_050", num_classes=10).eval()
    fused = reparameterize(m)
    assert not any("rpr" in k for k in fused.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (m(x) - fused(x)).abs().max() <= 1e-5


def test_verify_fusion_detects_a_wrong_fusion():
    m = _randomize(RepConv2d(4, 4, 3, groups=4)).eval()
    bad = m.fuse()
    with torch.no_grad():
        bad.bias.add_(0.1)
    assert verify_fusion(m, bad, torch.randn(2, 4, 8, 8)) >= 0.09


@pytest.mark.parametrize("case", [(8, 8, 3, 1, 8, 3, True, True), (8, 12, 1, 1, 1, 3, True, True),
                                  (8, 8, 5, 2, 8, 2, True, True)], ids=lambda c: "-".join(map(str, c)))
def test_linear_branches_opt_in(case):
    """The non-exact OREPA-style knob: train forward = its plain math; fuses exactly."""
    cin, cout, k, s, g, B, sc, idb = case
    m = _randomize(RepConv2d(cin, cout, k, s, groups=g, num_conv_branches=B, scale_branch=sc,
                             identity_branch=idb, linear_branches=True).double())
    ref = copy.deepcopy(m)
    ref.exact_fast_path = False
    x = torch.randn(4, cin, 9, 7, dtype=torch.double)
    y1, y2 = m.train()(x), ref.train()(x)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    y1.sum().backward()
    assert m.weight.grad.abs().sum() > 0
    torch.testing.assert_close(m.post_bn_running_mean, ref.post_bn_running_mean)
    m.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.fuse().double()(x), ref(x), rtol=1e-10, atol=1e-10)


def test_rep_init_scaled_starts_every_branch_at_one_over_sqrt_n():
    import math

    from ghostnetv3.rep import repify
    m = RepConv2d(8, 8, 3, 1, groups=8, num_conv_branches=3, rep_init="scaled")  # 3 + scale + identity
    assert m.num_branches == 5
    for p in ("bn", "scale_bn", "identity_bn"):
        assert torch.allclose(getattr(m, f"{p}_weight"), torch.full_like(getattr(m, f"{p}_weight"), 1 / math.sqrt(5)))
    ref = RepConv2d(8, 8, 3, 1, groups=8, num_conv_branches=3)
    assert torch.equal(ref.bn_weight, torch.ones_like(ref.bn_weight))
    # at step 0 the scaled sum has about one conv+BN's variance; the reference sum about n times it
    torch.manual_seed(0)
    x = torch.randn(16, 8, 12, 12)
    m.load_state_dict({k: v for k, v in ref.state_dict().items() if "bn_" not in k}, strict=False)
    assert 0.5 < float(m(x).var()) < 2.0 < float(ref(x).var())
    with pytest.raises(ValueError, match="rep_init"):
        RepConv2d(4, 4, 3, rep_init="ones")
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4))
    site = repify(net, rep_init="scaled")[0]
    assert torch.allclose(site.bn_weight, torch.full_like(site.bn_weight, 1 / math.sqrt(site.num_branches)))
    assert torch.equal(repify(net)[0].bn_weight[1:], torch.zeros_like(site.bn_weight[1:]))  # preserve: silent


def test_rep_init_reaches_the_model_from_the_config():
    from ghostnetv3.engine.config import TrainConfig
    from ghostnetv3.engine.model_factory import build_model
    m = build_model(TrainConfig(model="ghostnetv3_050", rep_init="scaled", width=0.25), 4, 1)
    sites = [s for s in m.modules() if isinstance(s, RepConv2d)]
    assert sites and all(s.rep_init == "scaled" for s in sites)
    assert all(float(s.bn_weight.max()) < 1.0 for s in sites)
    # scaled is the default since the 20k grid (3 seeds: +1.45 [+0.28, +2.62] over gamma = 1)
    default = build_model(TrainConfig(model="ghostnetv3_050", width=0.25), 4, 1)
    assert all(s.rep_init == "scaled" for s in default.modules() if isinstance(s, RepConv2d))
    ref = build_model(TrainConfig(model="ghostnetv3_050", rep_init="reference", width=0.25), 4, 1)
    assert all(float(s.bn_weight.min()) == 1.0 for s in ref.modules() if isinstance(s, RepConv2d))
