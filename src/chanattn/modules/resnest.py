"""ResNeSt: Split-Attention Networks (Zhang, Wu, Zhang, Zhu, Lin, Zhang, Sun, He, Mueller, Manmatha,
Li, Smola; CVPR Workshops 2022, https://arxiv.org/abs/2004.08955): the split-attention convolution."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, make_divisible
from ..registry import register

__all__ = ["SplitAttention"]


def _cardinality(in_channels: int, out_channels: int, hidden: int, radix: int, wanted: int) -> int:
    """The largest K <= ``wanted`` for which the split-attention layers can be grouped: K * radix
    divides the input channels, K divides the output channels and the hidden width."""
    for k in range(wanted, 0, -1):
        if in_channels % (k * radix) == 0 and out_channels % k == 0 and hidden % k == 0:
            return k
    return 1


@register("splat", title="Split Attention",
          paper="ResNeSt: Split-Attention Networks (CVPR Workshops 2022, arXiv:2004.08955)",
          year=2020, kind="branch", placement="replace_conv",
          placement_note="in place of each block's 3x3 convolution (ResNeSt's bottleneck), with the "
                         "block's stride")
class SplitAttention(AttentionModule):
    """V^k = sum_{i=1}^{R} a^k_i ⊙ U_{R(k-1)+i}, a^k_i(c) = softmax_i(G^k_c(s^k)) (R = 1: sigmoid),
    s^k = GAP(sum_i U_{R(k-1)+i}), G = FC(ReLU(BN(FC(s)))).

    ResNeSt's split-attention convolution, a drop-in replacement for a 3x3 convolution (the
    middle convolution of a bottleneck, with its BN and ReLU). Split: one grouped convolution
    with K * R groups (cardinality K, radix R) gives R splits of C' = ``out_channels`` channels
    each, followed by BN and ReLU. Within each cardinal group (C'/K channels of every split), the
    splits are summed and average-pooled; two grouped 1x1 convolutions (K groups, with biases;
    C' -> d -> R * C', with BN and ReLU between) give R logits per channel, a softmax over the R
    splits (a sigmoid where R = 1) gives the weights, and the output is the weighted sum of the
    splits. d = max(C_in * R / 4, 32) (the official ``reduction_factor=4``).

    The layout is the official code's: split r is channels r*C' ... (r+1)*C' - 1 of the
    convolution's output; the logits of cardinal group k come out of the second 1x1 convolution
    as R consecutive blocks of C'/K. With ``stride=2`` the output is downsampled.

    Where K * R does not divide the input channels, or K the output channels or d, the largest K
    below ``groups`` that does is used instead (as ``sk`` does; MobileNetV2 asks for a depthwise
    unit, ``groups=C``, which becomes K = C / R); ``self.cardinality`` holds the value in use. The
    input channels must be a multiple of R (``channel_multiple`` = 2 with the default R = 2).

    Departures from timm's ``SplitAttn``: BatchNorm by default (timm: none unless its ResNeSt
    passes ``norm_layer``); ``rd_channels`` is d itself (timm multiplies it by R); d rounds as
    the official code (``rd_divisor=8`` rounds as timm). The convolutions start Kaiming-normal
    (fan-out, ReLU gain), as the official ResNeSt initialises every convolution.

    Args:
        channels: input channels C_in.
        out_channels: C' (default C_in).
        stride: of the grouped convolution (default 1).
        groups: the cardinality K (default 1, ResNeSt-50's 2s1x64d).
        radix: R (default 2).
        rd_ratio: d / (C_in * R) (default 1/4); rd_channels: d, overriding it; min_rd_channels:
            the smallest d (default 32); rd_divisor: round d as timm does (default ``None``).
        kernel_size: of the grouped convolution (default 3); dilation: default 1.
        act_layer: default ``"relu"``; norm_layer: a callable ``f(channels)`` (default
            ``nn.BatchNorm2d``; ``None``: no norm).
    """

    channel_multiple = 2  # the radix: the grouped convolution splits the input into R groups
    batchnorm_on_pooled = True  # the attention's BN sees (B, d) vectors

    def __init__(self, channels: int, out_channels: int | None = None, stride: int = 1, groups: int = 1,
                 radix: int = 2, rd_ratio: float = 1 / 4, rd_channels: int | None = None,
                 min_rd_channels: int = 32, rd_divisor: int | None = None, kernel_size: int = 3,
                 dilation: int = 1, act_layer: LayerSpec = "relu",
                 norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d) -> None:
        nn.Module.__init__(self)  # the channel check depends on the radix: done here
        owner = type(self).__name__
        self.channels = check_positive_int(channels, "channels", owner)
        out_channels = channels if out_channels is None else out_channels
        for value, what in ((out_channels, "out_channels"), (stride, "stride"), (groups, "groups"),
                            (radix, "radix"), (min_rd_channels, "min_rd_channels"),
                            (kernel_size, "kernel_size"), (dilation, "dilation")):
            check_positive_int(value, what, owner)
        if channels % radix:
            raise InputError(f"{owner}: channels must be a multiple of radix={radix} (the grouped "
                             f"convolution splits them into {radix} groups), got {channels}")
        if rd_channels is not None:
            hidden = check_positive_int(rd_channels, "rd_channels", owner)
        elif not (isinstance(rd_ratio, (int, float)) and rd_ratio > 0):
            raise InputError(f"{owner}: rd_ratio must be a positive number, got {rd_ratio!r}")
        elif rd_divisor is not None:
            hidden = make_divisible(channels * radix * rd_ratio, check_positive_int(rd_divisor, "rd_divisor",
                                                                                    owner), min_rd_channels)
        else:
            hidden = max(math.floor(channels * radix * rd_ratio + 1e-6), min_rd_channels)
        self.out_channels = out_channels
        self.stride = stride
        self.radix = radix
        self.rd_channels = hidden
        self.cardinality = k = _cardinality(channels, out_channels, hidden, radix, groups)

        def norm(n: int) -> nn.Module:
            return nn.Identity() if norm_layer is None else norm_layer(n)

        self.conv = nn.Conv2d(channels, out_channels * radix, kernel_size, stride,
                              padding=dilation * (kernel_size // 2), dilation=dilation, groups=k * radix,
                              bias=False)
        self.bn0 = norm(out_channels * radix)
        self.act0 = create_act(act_layer, owner=owner)
        self.fc1 = nn.Conv2d(out_channels, hidden, 1, groups=k)
        self.bn1 = norm(hidden)
        self.act1 = create_act(act_layer, owner=owner)
        self.fc2 = nn.Conv2d(hidden, out_channels * radix, 1, groups=k)
        for conv in (self.conv, self.fc1, self.fc2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def attention(self, gap: torch.Tensor) -> torch.Tensor:
        """The split weights a, (B, R, C', 1, 1), from the pooled sum of the splits (B, C', 1, 1):
        softmax over the R splits of each channel (a sigmoid where R = 1)."""
        b = gap.shape[0]
        k, r = self.cardinality, self.radix
        logits = self.fc2(self.act1(self.bn1(self.fc1(gap))))  # (B, R*C', 1, 1): group k holds [r, C'/K]
        logits = logits.view(b, k, r, -1)
        a = logits.softmax(2) if r > 1 else logits.sigmoid()
        return a.transpose(1, 2).reshape(b, r, self.out_channels, 1, 1)  # a[:, r, k*C'/K + j]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        u = self.act0(self.bn0(self.conv(x)))  # (B, R*C', H', W')
        b, _, h, w = u.shape
        splits = u.view(b, self.radix, self.out_channels, h, w)  # split r: channels r*C' ... (r+1)*C'-1
        gap = splits.sum(1).mean((2, 3), keepdim=True)  # (B, C', 1, 1)
        return (splits * self.attention(gap)).sum(1)  # (B, C', H', W')

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, out_channels={self.out_channels}, stride={self.stride}, "
                f"cardinality={self.cardinality}, radix={self.radix}, rd_channels={self.rd_channels}")
