"""The exact kernel crop (`conv2d_cropped`) equals the full convolution: outputs and gradients."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ghostnetv3.rep.crop import CropConv2d, conv2d_cropped, crop_plan

# kernel (kh, kw), padding: the convs met in the models (square dw 3/5/7, DFC 1×5 / 5×1, 1×1)
KERNELS = [((3, 3), (1, 1)), ((5, 5), (2, 2)), ((7, 7), (3, 3)), ((1, 5), (0, 2)), ((5, 1), (2, 0)),
           ((1, 1), (0, 0))]
SIZES = [(h, w) for h in range(1, 9) for w in range(1, 9) if h == w or (h, w) in
         {(1, 2), (2, 1), (1, 3), (3, 5), (2, 7), (5, 3), (8, 1), (4, 6)}]


def _check(x, weight, bias, stride, padding, groups):
    xa = x.detach().clone().requires_grad_()
    wa = weight.detach().clone().requires_grad_()
    ba = None if bias is None else bias.detach().clone().requires_grad_()
    xb, wb = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    bb = None if bias is None else bias.detach().clone().requires_grad_()
    ref = F.conv2d(xa, wa, ba, stride, padding, 1, groups)
    out = conv2d_cropped(xb, wb, bb, stride, padding, groups)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ref)
    ref.backward(g), out.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(wb.grad, wa.grad, rtol=1e-10, atol=1e-10)
    if bias is not None:
        torch.testing.assert_close(bb.grad, ba.grad, rtol=1e-10, atol=1e-10)
    return out


@pytest.mark.parametrize("kernel,padding", KERNELS)
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_every_small_size(kernel, padding, stride):
    g = torch.Generator().manual_seed(0)
    C = 5
    for h, w in SIZES:
        x = torch.randn(3, C, h, w, generator=g, dtype=torch.float64)
        weight = torch.randn(C, 1, *kernel, generator=g, dtype=torch.float64)
        bias = torch.randn(C, generator=g, dtype=torch.float64) if (h + w) % 2 else None
        _check(x, weight, bias, (stride, stride), padding, C)
        _check(x.contiguous(memory_format=torch.channels_last), weight, bias, (stride, stride), padding, C)


@pytest.mark.parametrize("kernel,padding", KERNELS[:3] + KERNELS[3:4])
@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 2)])
def test_dense_and_grouped_every_small_size(kernel, padding, stride, groups):
    g = torch.Generator().manual_seed(1)
    for h, w in SIZES[::3]:
        x = torch.randn(2, 4, h, w, generator=g, dtype=torch.float64)
        weight = torch.randn(6, 4 // groups, *kernel, generator=g, dtype=torch.float64)
        _check(x, weight, torch.randn(6, generator=g, dtype=torch.float64), (stride, stride), padding, groups)


@pytest.mark.parametrize("kernel,padding", KERNELS + [((3, 3), (2, 2))])
@pytest.mark.parametrize("stride", [1, 2])
def test_dense_conv_of_one_pixel_equals_the_conv(kernel, padding, stride):
    """1-pixel maps take the matrix-product path (the plain conv where the output is larger): same
    outputs and gradients as F.conv2d."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 7, 1, 1, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 7, *kernel, generator=g, dtype=torch.float64)
    for bias in (None, torch.randn(3, generator=g, dtype=torch.float64)):
        _check(x, weight, bias, (stride, stride), padding, 1)
        _check(x.contiguous(memory_format=torch.channels_last), weight, bias, (stride, stride), padding, 1)


def test_dropped_taps_get_exactly_zero_gradient():
    x = torch.randn(4, 3, 1, 1, dtype=torch.float64)
    w = torch.randn(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    conv2d_cropped(x, w, None, (1, 1), (2, 2), 3).sum().backward()
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[2, 2] = True
    assert (w.grad[:, :, ~mask] == 0).all() and (w.grad[:, :, mask] != 0).all()
    assert w.shape == (3, 1, 5, 5)


def test_crop_plan_cuts_only_dead_taps():
    assert crop_plan((8, 8), (3, 3), (1, 1), (1, 1)) is None
    assert crop_plan((1, 1), (3, 3), (1, 1), (1, 1))[0] == ((1, 2), (1, 2))
    keep, pads, out = crop_plan((2, 2), (5, 5), (2, 2), (2, 2))
    assert keep == ((2, 4), (2, 4)) and out == (1, 1)


def test_crop_conv_module_keeps_conv_state_and_traces_plainly():
    torch.manual_seed(0)
    ref = nn.Conv2d(6, 6, 5, 2, 2, groups=6)
    conv = CropConv2d(6, 6, 5, 2, 2, groups=6)
    conv.load_state_dict(ref.state_dict())
    assert list(conv.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 6, 2, 2)
    torch.testing.assert_close(conv(x), ref(x))
    traced = torch.jit.trace(conv, torch.randn(2, 6, 8, 8))  # a trace holds for every size
    torch.testing.assert_close(traced(x), ref(x))
    scripted = torch.jit.script(conv)
    torch.testing.assert_close(scripted(x), ref(x))


@pytest.mark.parametrize("kernel,padding,stride,size", [((5, 5), (2, 2), 2, (16, 16)), ((5, 5), (2, 2), 1, (9, 7)),
                                                        ((1, 5), (0, 2), 1, (6, 9)), ((5, 1), (2, 0), 1, (11, 4))])
def test_five_tap_depthwise_runs_in_channels_last_and_returns_nchw(kernel, padding, stride, size):
    from ghostnetv3.rep.crop import depthwise_in_channels_last
    g = torch.Generator().manual_seed(1)
    C = 6
    x = torch.randn(4, C, *size, generator=g, dtype=torch.float64)
    weight = torch.randn(C, 1, *kernel, generator=g, dtype=torch.float64)
    assert depthwise_in_channels_last(x, weight, True)  # the switch is taken for these
    assert not depthwise_in_channels_last(x, torch.randn(C, 1, 3, 3), True)
    out = _check(x, weight, torch.randn(C, generator=g, dtype=torch.float64), (stride, stride), padding, C)
    assert out.is_contiguous()  # back in the caller's layout
