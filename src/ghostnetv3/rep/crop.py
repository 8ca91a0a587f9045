"""Exact convolutions on feature maps smaller than the kernel.

With zero padding, a tap of a k×k kernel that never lands on a real pixel of the input (for any
output position) only ever multiplies zeros.  On the last stages of a compact network at small
input sizes (32 px Fashion-MNIST: 1×1 and 2×2 maps under 3×3 and 5×5 depthwise kernels) most taps
are like that, and the general conv kernels of PyTorch's CPU backend are very slow there (a 5×5
depthwise conv on 1×1 maps ran at 0.36 GFLOP/s).  `conv2d_cropped` computes the same convolution:

- the kernel is cropped to the taps that can touch a real pixel and the padding shifted to match
  (a slice of the weight, so autograd gives the dropped taps exactly the zero gradient the full
  kernel would get, and the weight keeps its full shape everywhere else: state dicts, fusion);
- a depthwise conv whose cropped kernel is 1×1 is a per-channel multiply, and a depthwise conv on
  a map of at most `SMALL_MAP_PIXELS` pixels is one batched matrix product (each channel's conv
  written as the [H·W, Ho·Wo] matrix it is), both much faster than the conv kernels there;
- a depthwise conv with a 5-tap kernel side (5×5, and the DFC's 1×5 / 5×1) on an NCHW CPU tensor
  runs in channels_last and comes back NCHW (`depthwise_in_channels_last`): oneDNN's NCHW kernels
  for those shapes took ~2× the time, copies included;
- everything else is `F.conv2d` with the cropped kernel.

The decision depends on the input's spatial size, so it is made in eager mode only: under
TorchScript, `torch.jit.trace`, `torch.export` (strict or not), `torch.compile` and ONNX export the
plain `F.conv2d` runs instead
(a graph must hold for every input size it is later given), and for FX the function is a leaf.
"""
from __future__ import annotations

import functools

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["crop_plan", "conv2d_cropped", "depthwise_matrix", "CropConv2d", "SMALL_MAP_PIXELS",
           "eager_shape_logic"]

# Depthwise convs on maps of at most this many pixels run as a batched matmul (measured on a
# 2-core CPU, N=128, fwd+bwd: 2×2 maps 3–5× faster than the channels_last conv, 4×4 maps slower).
# A RepConv2d's branches there merge into one matrix (`_forward_depthwise_small_map`); with that
# merge, 16 (4×4 maps) measured level with 4 in the whole fmnist32 train step (+5% NCHW, −2%
# channels_last, loaded machine), so 4 stays.
SMALL_MAP_PIXELS = 4


def eager_shape_logic() -> bool:
    """True when shape-dependent Python may choose the computation (plain eager execution)."""
    return not (torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling()
                or torch.onnx.is_in_onnx_export())


@functools.lru_cache(maxsize=4096)
def crop_plan(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int]):
    """For an input of spatial `size`: ((lo, hi) taps kept per dim, (pad_before, pad_after) per
    dim, output size) so that the cropped conv equals the full one; None when nothing can be cut."""
    keep, pads, out = [], [], []
    for n, k, s, p in zip(size, kernel, stride, padding):
        o = (n + 2 * p - k) // s + 1
        lo, hi = max(0, p - (o - 1) * s), min(k - 1, p + n - 1)
        before = p - lo
        after = max(0, (o - 1) * s + (hi - lo + 1) - before - n)
        keep.append((lo, hi + 1)), pads.append((before, after)), out.append(o)
    if all(lo == 0 and hi == k for (lo, hi), k in zip(keep, kernel)):
        return None
    return tuple(keep), tuple(pads), tuple(out)


@functools.lru_cache(maxsize=1024)
def _matrix_index(size, kernel, stride, pads, out, device) -> torch.Tensor:
    """[H·W, Ho·Wo] index into a channel's flattened kernel (kh·kw = 'no tap', a zero)."""
    (H, W), (kh, kw), (sh, sw), ((pt, _), (pl, _)), (Ho, Wo) = size, kernel, stride, pads, out
    iy = torch.arange(H).view(H, 1, 1, 1)
    ix = torch.arange(W).view(1, W, 1, 1)
    oy = torch.arange(Ho).view(1, 1, Ho, 1)
    ox = torch.arange(Wo).view(1, 1, 1, Wo)
    ty, tx = iy - oy * sh + pt, ix - ox * sw + pl
    valid = (ty >= 0) & (ty < kh) & (tx >= 0) & (tx < kw)
    idx = torch.where(valid, ty * kw + tx, torch.full((H, W, Ho, Wo), kh * kw))
    return idx.reshape(H * W, Ho * Wo).to(device)


def depthwise_matrix(weight: torch.Tensor, size, stride, pads, out) -> torch.Tensor:
    """Each channel's depthwise conv as a matrix: [..., C, H·W, Ho·Wo] from weight [..., C, kh, kw]."""
    kh, kw = weight.shape[-2:]
    flat = F.pad(weight.reshape(*weight.shape[:-2], kh * kw), (0, 1))  # the extra tap is a zero
    idx = _matrix_index(tuple(size), (kh, kw), tuple(stride), tuple(pads), tuple(out), weight.device)
    return flat[..., idx]


def _is_depthwise(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    return groups == x.shape[1] == weight.shape[0] and weight.shape[1] == 1


def _per_channel(x, w, bias, stride, pads, out):
    """A depthwise conv whose (cropped) kernel is 1×1: a per-channel multiply of x's samples."""
    (pt, _), (pl, _) = pads
    (sh, sw), (Ho, Wo) = stride, out
    if pt or pl or (x.shape[2] - 1) // sh + 1 < Ho or (x.shape[3] - 1) // sw + 1 < Wo:
        return None  # some outputs read only padding: leave it to the general paths
    xs = x[:, :, : (Ho - 1) * sh + 1: sh, : (Wo - 1) * sw + 1: sw]
    y = xs * w.reshape(1, -1, 1, 1)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def _matmul_depthwise(x, w, bias, stride, pads, out):
    N, C, H, W = x.shape
    m = depthwise_matrix(w[:, 0], (H, W), stride, pads, out)                 # [C, HW, HoWo]
    y = torch.bmm(x.permute(1, 0, 2, 3).reshape(C, N, H * W), m)              # [C, N, HoWo]
    y = y.reshape(C, N, *out).permute(1, 0, 2, 3)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def depthwise_in_channels_last(x: torch.Tensor, weight: torch.Tensor, depthwise: bool) -> bool:
    """A depthwise conv that runs faster in channels_last on this device, given an NCHW `x`.

    Measured on the 2-core CPU (1 thread, forward + backward, both layout copies included): kernels
    with a side of 5 ran 0.42–0.61× the NCHW time (GhostNetV3 5×5 at 32 and 224 px, the DFC's 1×5),
    3×3 kernels 0.7–1.7× (no rule: they stay as they come). CUDA's NCHW depthwise kernels are not
    slow there, so only the CPU switches."""
    return (depthwise and x.device.type == "cpu" and max(weight.shape[2:]) >= 5 and x.dim() == 4
            and x.shape[1] > 1 and x.is_contiguous())


def _dense_one_pixel(x, weight, bias, stride, padding):
    """A dense conv of a 1-pixel map to a 1-pixel map: the one tap that reads the pixel, as a
    matrix product (`F.linear` runs fwd+bwd ~2× faster than mkldnn's conv on such maps: the
    1×1 convs of SE, the head and the last stage at 32 px). None when the output is larger."""
    (kh, kw), (ph, pw) = weight.shape[2:], padding
    if any(1 + 2 * p - k >= s for p, k, s in zip((ph, pw), (kh, kw), stride)) or ph >= kh or pw >= kw:
        return None
    return F.linear(x.flatten(1), weight[:, :, ph, pw], bias)[:, :, None, None]


@torch.fx.wrap
def conv2d_cropped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                   groups: int = 1) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride, padding, 1, groups)` (zero padding, no dilation), computed
    on only the taps that can touch the input (see the module docstring)."""
    stride, padding = tuple(stride), tuple(padding)
    if not eager_shape_logic():
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)
    size = (int(x.shape[2]), int(x.shape[3]))
    if groups == 1 and size == (1, 1):
        y = _dense_one_pixel(x, weight, bias, stride, padding)
        if y is not None:
            return y
    plan = crop_plan(size, (int(weight.shape[2]), int(weight.shape[3])), stride, padding)
    depthwise = _is_depthwise(x, weight, groups)
    if plan is None:
        if depthwise and size[0] * size[1] <= SMALL_MAP_PIXELS:
            pads = ((padding[0], padding[0]), (padding[1], padding[1]))
            out = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(size, padding, weight.shape[2:], stride))
            return _matmul_depthwise(x, weight, bias, stride, pads, out)
        return _conv2d(x, weight, bias, stride, padding, groups, depthwise)
    (ylo, yhi), (xlo, xhi) = plan[0]
    pads, out = plan[1], plan[2]
    w = weight[:, :, ylo:yhi, xlo:xhi]
    if depthwise:
        if w.shape[2:] == (1, 1):
            y = _per_channel(x, w, bias, stride, pads, out)
            if y is not None:
                return y
        if size[0] * size[1] <= SMALL_MAP_PIXELS:
            return _matmul_depthwise(x, w, bias, stride, pads, out)
    (pt, pb), (pl, pr) = pads
    if pt != pb or pl != pr:
        x, (pt, pl) = F.pad(x, (pl, pr, pt, pb)), (0, 0)
    return _conv2d(x, w, bias, stride, (pt, pl), groups, depthwise)


def _conv2d(x, weight, bias, stride, padding, groups: int, depthwise: bool) -> torch.Tensor:
    """`F.conv2d`, in channels_last where `depthwise_in_channels_last` says that is faster (the
    result in x's layout)."""
    if depthwise_in_channels_last(x, weight, depthwise):
        y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, stride, padding, 1, groups)
        return y.contiguous()
    return F.conv2d(x, weight, bias, stride, padding, 1, groups)


class CropConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, state dict and repr) whose forward is `conv2d_cropped`.

    For zero padding without dilation; anything else runs the plain conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return self._cropped_forward(x)

    @torch.jit.unused
    def _cropped_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or self.dilation != (1, 1) or isinstance(self.padding, str):
            return self._conv_forward(x, self.weight, self.bias)
        return conv2d_cropped(x, self.weight, self.bias, self.stride, self.padding, self.groups)
