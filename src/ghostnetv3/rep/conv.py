"""The one re-parameterization primitive: `RepConv2d`.

During training a `RepConv2d` is ``num_conv_branches`` parallel k×k conv+BN branches, an optional
1×1 "scale" conv+BN branch and an optional identity BN branch, summed (GhostNetV3, RepVGG,
MobileOne).  For inference it is one `nn.Conv2d` with bias (`fuse()`).  All BatchNorm folding and
kernel padding of the project live in this file and nowhere else.

Why the parameters are stacked ([B, ...] tensors rather than B sub-modules): the training forward
can then treat branches as one tensor.  Branches whose kernel is 1×1 (the 1×1 conv branches of a
pointwise conv, the scale branch and the identity branch) are merged *exactly* into one conv: in
training mode BN(k⊛x) = a·(k⊛x − μ) + β with a = γ/√(σ²+ε), and μ, σ² of a 1×1 branch are linear /
quadratic forms of the input's channel mean and covariance, so the sum of such branches is a single
conv with the kernel Σ a_b·k_b.  Autograd through the statistics gives the exact gradients, and each
branch's running statistics are updated exactly as its own BatchNorm would.  k×k branches have no
cheap exact shortcut (their statistics need each channel's k²×k² patch covariance), so each runs as
its own conv + BN (dense ones stacked into one conv and one BN call).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .crop import SMALL_MAP_PIXELS, CropConv2d, conv2d_cropped, crop_plan, depthwise_matrix, eager_shape_logic

__all__ = ["RepConv2d", "fold_bn", "REP_INITS"]

REP_INITS = ("reference", "scaled")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def fold_bn(kernel: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, gamma: torch.Tensor,
            beta: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold BN(kernel⊛x) into (kernel', bias'): kernel·γ/√(σ²+ε), β − μ·γ/√(σ²+ε).

    `kernel` has the output channels on dim -4 (any leading dims are branch dims)."""
    t = gamma / torch.sqrt(var + eps)
    return kernel * t[..., None, None, None], beta - mean * t


class RepConv2d(nn.Module):
    """k×k conv with re-parameterizable branches; a drop-in for Conv2d+BatchNorm2d.

    Args:
        num_conv_branches: parallel k×k conv+BN branches (≥1).
        scale_branch: add a 1×1 conv+BN branch where the kernel is larger than 1×1.
        identity_branch: add an identity BN branch where in==out channels and stride is 1.
        exact_fast_path: use the exact merged training forward and the folded eval forward
            (default); False runs every branch as its own conv+BN (the plain per-branch math, which
            `verify_fusion` and the tests compare against).
        rep_init: how the branch BatchNorms' γ start: "reference" (every γ = 1, as the reference
            code and timm) or "scaled" (every γ = 1/√n, n = the branches summed at this site, so the
            sum starts with one conv+BN's variance and SGD moves the fused kernel no faster than one
            conv's; the fused architecture and the fusion math are the same).
        linear_branches: opt-in, NOT the paper's semantics (OREPA-style): during training the
            branches are linear (their BNs use fixed statistics, i.e. act as per-channel scales)
            and one BatchNorm with batch statistics follows their sum, so a training step costs
            about one conv+BN.  Still fuses exactly into one conv.  Default False.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None,
                 groups: int = 1, num_conv_branches: int = 3, scale_branch: bool = True,
                 identity_branch: bool = True, eps: float = 1e-5, momentum: float | None = 0.1,
                 exact_fast_path: bool = True, linear_branches: bool = False, rep_init: str = "reference",
                 device=None, dtype=None):
        super().__init__()
        if rep_init not in REP_INITS:
            raise ValueError(f"rep_init must be one of {', '.join(REP_INITS)}, got {rep_init!r}")
        self.rep_init = rep_init
        if num_conv_branches < 1:
            raise ValueError(f"num_conv_branches must be >= 1, got {num_conv_branches}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        kh, kw = _pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride)
        self.padding = _pair(padding if padding is not None else (kh // 2, kw // 2))
        self.groups = groups
        self.num_conv_branches = num_conv_branches
        self.eps, self.momentum = eps, momentum
        self.exact_fast_path = exact_fast_path
        centred = kh % 2 == 1 and kw % 2 == 1 and self.padding == (kh // 2, kw // 2)
        self.has_scale = bool(scale_branch) and (kh, kw) != (1, 1) and centred
        self.has_identity = (bool(identity_branch) and in_channels == out_channels
                             and self.stride == (1, 1) and centred)
        dd = {"device": device, "dtype": dtype}
        B, cig = num_conv_branches, in_channels // groups
        # [B·Cout, Cin/groups, kh, kw]: 4-D so channels_last and conv kernels apply directly.
        self.weight = nn.Parameter(torch.empty(B * out_channels, cig, kh, kw, **dd))
        self._add_bn("bn", (B, out_channels), dd)
        if self.has_scale:
            self.scale_weight = nn.Parameter(torch.empty(out_channels, cig, 1, 1, **dd))
            self._add_bn("scale_bn", (out_channels,), dd)
        if self.has_identity:
            self._add_bn("identity_bn", (out_channels,), dd)
        self.linear_branches = bool(linear_branches)
        if self.linear_branches:
            self._add_bn("post_bn", (out_channels,), dd)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.reset_parameters()

    def _add_bn(self, prefix: str, shape, dd) -> None:
        setattr(self, f"{prefix}_weight", nn.Parameter(torch.ones(shape, **dd)))
        setattr(self, f"{prefix}_bias", nn.Parameter(torch.zeros(shape, **dd)))
        self.register_buffer(f"{prefix}_running_mean", torch.zeros(shape, **dd))
        self.register_buffer(f"{prefix}_running_var", torch.ones(shape, **dd))

    def _bn(self, prefix: str):
        return (getattr(self, f"{prefix}_running_mean"), getattr(self, f"{prefix}_running_var"),
                getattr(self, f"{prefix}_weight"), getattr(self, f"{prefix}_bias"))

    @property
    def branch_weight(self) -> torch.Tensor:
        """The conv branches' kernels as [B, Cout, Cin/groups, kh, kw]."""
        return self.weight.reshape(self.num_conv_branches, self.out_channels, *self.weight.shape[1:])

    def bn_prefixes(self) -> list[str]:
        return (["bn"] + (["scale_bn"] if self.has_scale else []) + (["identity_bn"] if self.has_identity else [])
                + (["post_bn"] if self.linear_branches else []))

    def reset_parameters(self) -> None:
        for w in self.weight.data.chunk(self.num_conv_branches):  # each branch like an nn.Conv2d
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.has_scale:
            nn.init.kaiming_uniform_(self.scale_weight, a=math.sqrt(5))
        for p in self.bn_prefixes():
            mean, var, gamma, beta = self._bn(p)
            mean.zero_(), var.fill_(1.0), nn.init.ones_(gamma), nn.init.zeros_(beta)
            if self.rep_init == "scaled" and p != "post_bn":
                gamma.data.fill_(1.0 / math.sqrt(self.num_branches))
        self.num_batches_tracked.zero_()

    @property
    def num_branches(self) -> int:
        """Branches summed at this site: conv branches + scale + identity."""
        return self.num_conv_branches + int(self.has_scale) + int(self.has_identity)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"num_conv_branches={self.num_conv_branches}, scale_branch={self.has_scale}, "
                f"identity_branch={self.has_identity}" + (", linear_branches=True" if self.linear_branches else ""))

    # ------------------------------------------------------------------ fusion (eval semantics)
    def _identity_kernel(self, like: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        cig = self.in_channels // self.groups
        k = like.new_zeros(self.out_channels, cig, kh, kw)
        idx = torch.arange(self.out_channels, device=like.device)
        k[idx, idx % cig, kh // 2, kw // 2] = 1.0
        return k

    def _pad_to_kernel(self, k1x1: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        return F.pad(k1x1, [kw // 2, kw // 2, kh // 2, kh // 2])

    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single kernel and bias that equal all branches in eval mode (running statistics)."""
        kernel, bias = self._branch_kernel_bias()
        if self.linear_branches:  # BN(K⊛x + b) = fold of K with mean μ − b
            mean, var, gamma, beta = self._bn("post_bn")
            kernel, bias = fold_bn(kernel, mean - bias, var, gamma, beta, self.eps)
        return kernel, bias

    def _branch_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = fold_bn(self.branch_weight, *self._bn("bn"), self.eps)
        kernel, bias = kernel.sum(0), bias.sum(0)
        if self.has_scale:
            k, b = fold_bn(self.scale_weight, *self._bn("scale_bn"), self.eps)
            kernel, bias = kernel + self._pad_to_kernel(k), bias + b
        if self.has_identity:
            k, b = fold_bn(self._identity_kernel(self.weight), *self._bn("identity_bn"), self.eps)
            kernel, bias = kernel + k, bias + b
        return kernel, bias

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """One `nn.Conv2d` (with bias) computing what this module computes in eval mode (a
        `CropConv2d`: same parameters and state dict, its eager forward skips the taps that only
        read padding on small maps)."""
        kernel, bias = self.get_kernel_bias()
        conv = CropConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                          self.padding, groups=self.groups, bias=True,
                          device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        return conv

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exact_fast_path:
            return self.forward_reference(x)
        if not self.training:  # eval = the fused conv, computed on the fly
            kernel, bias = self.get_kernel_bias()
            return conv2d_cropped(x, kernel, bias, self.stride, self.padding, self.groups)
        if self.linear_branches:
            kernel, bias = self._branch_kernel_bias()
            z = conv2d_cropped(x, kernel, bias, self.stride, self.padding, self.groups)
            return F.batch_norm(z, *self._bn("post_bn"), True, self._momentum(), self.eps)
        return self._forward_train(x)

    def _momentum(self) -> float:
        """The factor nn.BatchNorm2d would use for this step (also advances the counter)."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Every branch as its own conv + BatchNorm: the plain math the fast paths must equal."""
        use_batch = self.training
        mom = self._momentum() if use_batch else 0.0
        if self.linear_branches:  # branches with fixed-statistics BNs, summed, then one BN
            out = self._branch_sum(x, False, 0.0)
            return F.batch_norm(out, *self._bn("post_bn"), use_batch, mom, self.eps)
        return self._branch_sum(x, use_batch, mom)

    def _branch_sum(self, x: torch.Tensor, use_batch: bool, mom: float) -> torch.Tensor:
        out = 0
        for b in range(self.num_conv_branches):
            z = F.conv2d(x, self.branch_weight[b], None, self.stride, self.padding, 1, self.groups)
            out = out + F.batch_norm(z, self.bn_running_mean[b], self.bn_running_var[b],
                                     self.bn_weight[b], self.bn_bias[b], use_batch, mom, self.eps)
        if self.has_scale:
            z = F.conv2d(x, self.scale_weight, None, self.stride, 0, 1, self.groups)
            out = out + F.batch_norm(z, *self._bn("scale_bn"), use_batch, mom, self.eps)
        if self.has_identity:
            out = out + F.batch_norm(x, *self._bn("identity_bn"), use_batch, mom, self.eps)
        return out

    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        mom = self._momentum()
        n_pos = x.shape[0] * math.ceil(x.shape[2] / self.stride[0]) * math.ceil(x.shape[3] / self.stride[1])
        if n_pos < 2:
            raise ValueError("RepConv2d in training mode needs more than 1 value per channel "
                             "(batch size 1 with a 1×1 output); use a larger batch or eval mode")
        depthwise = self.groups == self.in_channels == self.out_channels
        pointwise = self.kernel_size == (1, 1) and self.padding == (0, 0)
        # x sampled at the output positions: what every 1×1 branch (scale, identity) sees.
        xs = x[:, :, :: self.stride[0], :: self.stride[1]] if self.stride != (1, 1) else x
        if pointwise and self.groups == 1 and self._covariance_is_cheaper():
            return self._forward_pointwise_merged(x, xs, mom)
        if depthwise and x.shape[2] * x.shape[3] <= SMALL_MAP_PIXELS and eager_shape_logic():
            return self._forward_depthwise_small_map(x, mom)
        if depthwise and (self.has_scale or self.has_identity):
            a, c = self._channelwise_extras(xs, mom)  # the extras' shift rides on a branch's BN bias
            return torch.addcmul(self._forward_stacked_branches(x, mom, c), xs, a[None, :, None, None])
        out = self._forward_stacked_branches(x, mom)
        if self.has_scale:
            z = F.conv2d(xs, self.scale_weight, None, 1, 0, 1, self.groups)
            out = out + F.batch_norm(z, *self._bn("scale_bn"), True, mom, self.eps)
        if self.has_identity:
            out = out + F.batch_norm(x, *self._bn("identity_bn"), True, mom, self.eps)
        return out

    def _covariance_is_cheaper(self) -> bool:
        # fwd+bwd multiply-adds per position: covariance (2·Cin²) + one conv (3·Cin·Cout)
        # versus B convs (3·B·Cin·Cout).
        cin, cout, B = self.in_channels, self.out_channels, self.num_conv_branches
        return 2 * cin * cin + 3 * cin * cout < 3 * B * cin * cout

    def _forward_stacked_branches(self, x: torch.Tensor, mom: float, shift: torch.Tensor | None = None) -> torch.Tensor:
        """The k×k branches, each with its own BN statistics (+ a per-channel `shift`).

        Dense convs stack all branches into one conv and one BN call.  Grouped/depthwise convs run
        one conv+BN per branch: stacking them needs a B× copy of the input (or a channel-multiplier
        conv), which measured slower on CPU at 224 px (GhostNetV3-1.0 step 4.4 s vs 3.6 s)."""
        B, cout = self.num_conv_branches, self.out_channels
        if self.groups == 1 or B == 1:
            z = conv2d_cropped(x, self.weight, None, self.stride, self.padding, self.groups)
            bias = self.bn_bias if shift is None else torch.cat([self.bn_bias[:1] + shift, self.bn_bias[1:]])
            z = F.batch_norm(z, self.bn_running_mean.view(-1), self.bn_running_var.view(-1),
                             self.bn_weight.view(-1), bias.reshape(-1), True, mom, self.eps)
            return z if B == 1 else z.unflatten(1, (B, cout)).sum(1)
        out = None
        for b, w in enumerate(self.branch_weight):
            z = conv2d_cropped(x, w, None, self.stride, self.padding, self.groups)
            bias = self.bn_bias[b] if shift is None or b else self.bn_bias[b] + shift
            z = F.batch_norm(z, self.bn_running_mean[b], self.bn_running_var[b],
                             self.bn_weight[b], bias, True, mom, self.eps)
            out = z if out is None else out.add_(z)  # BN saves its input, not its output
        return out

    def _small_map_kernels(self, keep) -> torch.Tensor:
        """Every branch's depthwise kernel, cropped to `keep`: [n, C, kh', kw'] (conv branches, then
        the scale branch's 1×1 and the identity's one-hot at the centre tap)."""
        (ylo, yhi), (xlo, xhi) = keep
        kernels = [self.branch_weight[:, :, 0, ylo:yhi, xlo:xhi]]
        cy, cx = self.kernel_size[0] // 2 - ylo, self.kernel_size[1] // 2 - xlo  # the centre is always kept
        centre = [cx, xhi - xlo - 1 - cx, cy, yhi - ylo - 1 - cy]
        if self.has_scale:
            kernels.append(F.pad(self.scale_weight.view(1, -1, 1, 1), centre))
        if self.has_identity:
            kernels.append(F.pad(self.weight.new_ones(1, self.out_channels, 1, 1), centre))
        return torch.cat(kernels)

    def _forward_depthwise_small_map(self, x: torch.Tensor, mom: float) -> torch.Tensor:
        """Depthwise sites on maps of ≤ SMALL_MAP_PIXELS pixels, every branch (conv, scale,
        identity) merged exactly into one per-channel matrix.

        On such a map a depthwise branch is a matrix m_b [HW, HoWo] per channel (the taps that touch
        the input), z_b = x·m_b. Its batch statistics follow from the input's per-channel pixel means
        μ [HW] and covariance Σ [HW, HW] (law of total variance over the output positions o):
        mean_b = mean_o(μ·m_bo), var_b = mean_o(m_boᵀ Σ m_bo) + var_o(μ·m_bo). So the n branches
        cost one covariance and one matrix product instead of n products and n statistics passes,
        and autograd through μ and Σ gives the exact gradients (as `_forward_pointwise_merged`)."""
        N, C, H, W = x.shape
        plan = crop_plan((H, W), self.kernel_size, self.stride, self.padding)
        if plan is None:
            keep = ((0, self.kernel_size[0]), (0, self.kernel_size[1]))
            pads = tuple((p, p) for p in self.padding)
            out = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip((H, W), self.padding, self.kernel_size, self.stride))
        else:
            keep, pads, out = plan
        m = depthwise_matrix(self._small_map_kernels(keep), (H, W), self.stride, pads, out)  # [n, C, HW, HoWo]
        xr = x.permute(1, 0, 2, 3).reshape(C, N, H * W)
        with torch.autocast(x.device.type, enabled=False):  # AMP: batch statistics in fp32, as BatchNorm keeps them
            stat_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            xs, ms = xr.to(stat_dtype), m.to(stat_dtype)
            mu = xs.mean(1)                                                       # [C, HW]
            xc = xs - mu[:, None]
            cov = xc.transpose(1, 2) @ xc / N                                    # [C, HW, HW]
            pos_mean = (mu[None, :, :, None] * ms).sum(2)                         # [n, C, HoWo]
            mean = pos_mean.mean(-1)                                              # [n, C]
            var = ((cov[None] @ ms) * ms).sum((2, 3)) / ms.shape[-1] + pos_mean.var(-1, correction=0)
        count = N * out[0] * out[1]
        B = self.num_conv_branches
        gamma, beta = [self.bn_weight], self.bn_bias.sum(0)
        self._update_running("bn", slice(None), mean[:B], var[:B], count, mom)
        for i, prefix in enumerate(p for p in ("scale_bn", "identity_bn") if p in self.bn_prefixes()):
            self._update_running(prefix, slice(None), mean[B + i], var[B + i], count, mom)
            gamma.append(getattr(self, f"{prefix}_weight")[None])
            # Σβ as a sum, not cat(...).sum(0): autograd would hand every β a row of one expanded
            # gradient, and AccumulateGrad would then keep those aliased rows as their .grad
            beta = beta + getattr(self, f"{prefix}_bias")
        a = torch.cat(gamma) * torch.rsqrt(var + self.eps)                                   # [n, C]
        shift = beta - (a * mean).sum(0)                                                     # [C]
        merged = (a[:, :, None, None] * m).sum(0).to(x.dtype)                               # [C, HW, HoWo]
        # on 1-pixel maps the merged branches are one per-channel scale (a bmm of 1×1s is slow)
        y = xr * merged.view(C, 1, 1) if H * W == 1 else torch.matmul(xr, merged)           # [C, N, HoWo]
        y = (y + shift.to(y.dtype)[:, None, None]).reshape(C, N, *out).permute(1, 0, 2, 3)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def _update_running(self, prefix: str, idx, mean: torch.Tensor, var: torch.Tensor, n: int, mom: float):
        rm, rv = getattr(self, f"{prefix}_running_mean"), getattr(self, f"{prefix}_running_var")
        with torch.no_grad():
            rm[idx] = (1 - mom) * rm[idx] + mom * mean.detach()
            rv[idx] = (1 - mom) * rv[idx] + mom * var.detach() * (n / (n - 1))

    def _forward_pointwise_merged(self, x, xs, mom: float) -> torch.Tensor:
        """1×1 dense branches (+ identity) merged exactly through the input's channel covariance."""
        n = xs.shape[0] * xs.shape[2] * xs.shape[3]
        flat = xs.transpose(0, 1).reshape(self.in_channels, n)
        m = flat.mean(1)
        centred = flat - m[:, None]
        cov = centred @ centred.t() / n
        W = self.branch_weight.flatten(2)                        # [B, Cout, Cin]
        mean = W @ m                                              # [B, Cout]
        var = ((W @ cov) * W).sum(-1)                             # diag(W Σ Wᵀ), [B, Cout]
        self._update_running("bn", slice(None), mean, var, n, mom)
        k, bias = fold_bn(W[..., None, None], mean, var, self.bn_weight, self.bn_bias, self.eps)
        kernel, bias = k.sum(0), bias.sum(0)
        if self.has_identity:
            ivar = torch.diagonal(cov)
            self._update_running("identity_bn", slice(None), m, ivar, n, mom)
            k, b = fold_bn(self._identity_kernel(W), m, ivar, self.identity_bn_weight,
                           self.identity_bn_bias, self.eps)
            kernel, bias = kernel + k, bias + b
        return conv2d_cropped(x, kernel, bias, self.stride, (0, 0), 1)

    def _channelwise_extras(self, xs: torch.Tensor, mom: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise scale + identity branches: per-channel affine maps of x, merged exactly into
        one (a, c) with extras = xs·a + c."""
        n = xs.shape[0] * xs.shape[2] * xs.shape[3]
        var_x, m = torch.var_mean(xs, dim=(0, 2, 3), correction=0)
        a = xs.new_zeros(self.out_channels)
        c = xs.new_zeros(self.out_channels)
        if self.has_scale:
            w = self.scale_weight.view(-1)
            mean, var = w * m, w * w * var_x
            self._update_running("scale_bn", slice(None), mean, var, n, mom)
            k, b = fold_bn(w[:, None, None, None], mean, var, self.scale_bn_weight, self.scale_bn_bias, self.eps)
            a, c = a + k.view(-1), c + b
        if self.has_identity:
            self._update_running("identity_bn", slice(None), m, var_x, n, mom)
            k, b = fold_bn(torch.ones_like(m)[:, None, None, None], m, var_x, self.identity_bn_weight,
                           self.identity_bn_bias, self.eps)
            a, c = a + k.view(-1), c + b
        return a, c  # the extras are xs·a + c
