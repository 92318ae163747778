"""SA-Net: Shuffle Attention for Deep Convolutional Neural Networks (Zhang, Yang; ICASSP 2021,
https://arxiv.org/abs/2102.00240; official code https://github.com/wofmanaf/SA-Net)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import register

__all__ = ["ShuffleAttention", "group_norm", "shuffle_attention_groups"]


def group_norm(gn: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``gn(x)`` through the ATen operator itself: the same values, but a group holding a single
    value (a batch of 1 at 1 x 1 with one channel per group) normalises to about 0 instead of
    raising, as ``nn.GroupNorm``'s Python check ("more than 1 value per channel") does even in
    eval mode, where GroupNorm has no batch statistics to need."""
    return torch.group_norm(x, gn.num_groups, gn.weight, gn.bias, gn.eps)


def shuffle_attention_groups(channels: int, groups: int) -> int:
    """The number of groups G in use: the largest G <= ``groups`` with C % (2 G) == 0 (each group
    is split into two halves of C / (2 G) channels); ``groups`` itself wherever it fits."""
    for g in range(min(groups, channels // 2), 0, -1):
        if channels % (2 * g) == 0:
            return g
    return 0  # C odd: no G fits (AttentionModule's channel_multiple refuses it first)


@register("sa", title="Shuffle Attention",
          paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks "
                "(ICASSP 2021, arXiv:2102.00240)",
          year=2021, kind="hybrid")
class ShuffleAttention(AttentionModule):
    """y = shuffle_2([x_k1 * sigmoid(w1 GAP(x_k1) + b1); x_k2 * sigmoid(w2 GN(x_k2) + b2)]_k).

    C is split into G groups of C / G channels; each group k into halves x_k1 (channel branch:
    global average pooling, a per-channel scale and shift, the gate) and x_k2 (spatial branch:
    GroupNorm with one group per channel, a per-channel scale and shift, the gate). The results
    keep their channels' places; a channel shuffle with 2 groups (channel 2j + i of the output is
    channel i C/2 + j before it) ends the module. The four (1, C/(2G), 1, 1) parameters are shared
    by the G groups and initialised as the official code: w1 = w2 = 0, b1 = b2 = 1 (so every
    factor starts at sigmoid(1)); the GroupNorm (eps 1e-5) keeps its own affine weight 1 and bias 0
    as in the official code.

    Kind ``hybrid``: before the shuffle the factor varies over channels (first halves) and over
    positions (second halves) and is a gate on x; the shuffle then moves every channel to a fixed
    place, :meth:`output_channel_order` (the contract tests compare in input order).

    Args:
        channels: input channels C, even (each group has two halves): an odd C is a ValueError.
        groups: G (default 64, the paper's and the official code's). Where 2 G does not divide C,
            the largest G below it with C % (2 G) == 0 is used instead (32 at C = 64, 8 at C = 16,
            1 at C = 2; every ResNet-50 stage, C = 256 ... 2048, takes G = 64); ``self.groups``
            holds the value in use. The official code needs C % (2 G) == 0 (its reshapes fail
            otherwise); the fallback is how ``sk`` treats its groups here.
        gate_layer: default ``"sigmoid"``.

    The GroupNorm runs through :func:`group_norm` (the same values), so that a batch of 1 at
    1 x 1 with one channel per half is normalised (to about 0) instead of refused.
    """

    channel_multiple = 2

    def __init__(self, channels: int, groups: int = 64, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(groups, "groups", owner)
        self.groups = shuffle_attention_groups(channels, groups)
        if self.groups < 1:  # unreachable with channel_multiple = 2, kept for subclasses
            raise InputError(f"{owner}: channels must be even, got {channels}")
        half = channels // (2 * self.groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)
        self.gate = create_act(gate_layer, owner=owner)

    def output_channel_order(self) -> torch.Tensor:
        """For each output channel j, the input channel it carries: y[:, j] = (x * a)[:, order[j]]."""
        c = self.channels
        return torch.arange(c).view(2, c // 2).t().reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, c, h, w = x.shape
        half = c // (2 * self.groups)
        xg = x.reshape(b * self.groups, c // self.groups, h, w)  # (B G, C/G, H, W)
        x1, x2 = xg[:, :half], xg[:, half:]  # the two halves of every group
        y1 = x1 * self.gate(self.cweight * x1.mean((2, 3), keepdim=True) + self.cbias)  # channel
        y2 = x2 * self.gate(self.sweight * group_norm(self.gn, x2) + self.sbias)  # spatial
        out = torch.cat([y1, y2], 1).reshape(b, c, h, w)  # every channel back in its place
        # channel shuffle, 2 groups: (B, 2, C/2, H, W) -> (B, C/2, 2, H, W)
        return out.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
