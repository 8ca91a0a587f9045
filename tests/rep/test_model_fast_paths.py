"""A whole GhostNetV3 train form at 32 px (maps down to 1×1 and 2×2, where the kernel crop and the
small-map branch path run): fast paths = the per-branch reference math, and channels_last = NCHW,
outputs and every gradient, in float64."""
import copy

import torch

import ghostnetv3
from ghostnetv3.rep import RepConv2d


def _model(**kw):
    torch.manual_seed(0)
    m = ghostnetv3.create_model("ghostnetv3_050", num_classes=5, in_chans=1, width=0.25, stem_stride=2,
                                drop_rate=0.0, **kw)  # no dropout: the runs must see the same math
    return m.double().train()


def _run(m, x):
    x = x.clone().requires_grad_()
    out = m(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out, x.grad, {n: p.grad for n, p in m.named_parameters()}


def test_fast_paths_and_layouts_equal_the_reference_math():
    fast = _model(rep_init="scaled")  # (the init is covered per module in test_repconv.py)
    ref = copy.deepcopy(fast)
    for mod in ref.modules():
        if isinstance(mod, RepConv2d):
            mod.exact_fast_path = False
    cl = copy.deepcopy(fast).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    o_ref, gx_ref, g_ref = _run(ref, x)
    for m, xi in ((fast, x), (cl, x.contiguous(memory_format=torch.channels_last))):
        o, gx, g = _run(m, xi)
        torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-10)
        # the input gradient runs back through every BN of the net: the fast paths' statistics
        # (covariance forms) differ from the reference in the last ~1e-10 in float64, as the
        # parameter gradients do (a wrong formula is off by O(1))
        torch.testing.assert_close(gx, gx_ref, rtol=1e-7, atol=1e-9)
        for n in g_ref:
            torch.testing.assert_close(g[n], g_ref[n], rtol=1e-7, atol=1e-9, msg=n)
    for (n, b), (_, c) in zip(cl.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, c, rtol=1e-9, atol=1e-11, msg=n)


def test_eval_and_fused_forms_agree_on_small_maps():
    m = _model().eval()
    fused = ghostnetv3.reparameterize(m)
    x = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    assert ghostnetv3.verify_fusion(m, fused, x) < 1e-10
    with torch.no_grad():
        torch.testing.assert_close(m(x), fused(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fused.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)), fused(x), rtol=1e-10, atol=1e-10)
