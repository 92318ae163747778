"""Coordinate Attention for Efficient Mobile Network Design (Hou, Zhou, Feng; CVPR 2021,
https://arxiv.org/abs/2103.02907), and timm's simplified coordinate attention."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..registry import register

__all__ = ["CoordinateAttention", "SimpleCoordinateAttention"]

_PAPER = "Coordinate Attention for Efficient Mobile Network Design (CVPR 2021, arXiv:2103.02907)"


@register("coord", title="Coordinate Attention", paper=_PAPER, year=2021, kind="hybrid",
          placement_note="per block (the paper's MobileNetV2 puts it after the depthwise convolution of "
                         "each block with expansion, on the hidden channels; it gives no ResNet placement)")
class CoordinateAttention(AttentionModule):
    """y_c(i, j) = x_c(i, j) * g^h_c(i) * g^w_c(j), g^h = sigmoid(F_h(f^h)), g^w = sigmoid(F_w(f^w)),
    [f^h, f^w] = act(BN(F_1([z^h, z^w]))), z^h_c(i) = mean_j x_c(i, j), z^w_c(j) = mean_i x_c(i, j).

    Coordinate information embedding: average pooling along each direction, a strip per row
    (z^h, H values per channel) and per column (z^w, W values). Coordinate attention generation:
    the two strips concatenated along the spatial axis go through one shared 1x1 convolution
    F_1 (C -> C/r), BatchNorm and the non-linearity (h-swish, ``nn.Hardswish``, as the official
    code), are split again, and each through its own 1x1 convolution (C/r -> C) and a sigmoid:
    one factor per (channel, row) and one per (channel, column), both multiplied into the input.

    Defaults are the official code's: r = 32 with the hidden width ``max(8, C // 32)``, 1x1
    convolutions with biases, BatchNorm, h-swish. timm's ``CoordAttn`` uses ``C / 16 * 2/3``
    rounded to a multiple of 8 (``rd_ratio=1/24, rd_divisor=8`` here) and no biases
    (``bias=False``).

    Args:
        channels: input channels C.
        rd_ratio: 1/r (default 1/32); rd_channels: the hidden width, overriding it; rd_divisor:
            round the hidden width to a multiple of this as timm does (default ``None``: the
            official ``max(min_rd_channels, C // r)``); min_rd_channels: default 8.
        bias: the 1x1 convolutions have biases (default True).
        act_layer: default ``"hard_swish"``; norm_layer: a callable ``f(C')`` (default
            ``nn.BatchNorm2d``; ``None``: no norm); gate_layer: default ``"sigmoid"``.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 32, rd_channels: int | None = None,
                 rd_divisor: int | None = None, min_rd_channels: int = 8, bias: bool = True,
                 act_layer: LayerSpec = "hard_swish",
                 norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(min_rd_channels, "min_rd_channels", owner)
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor, owner=owner)
        if rd_channels is None and rd_divisor is None:
            hidden = max(min_rd_channels, hidden)
        self.rd_channels = hidden
        self.conv1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.bn1 = norm_layer(hidden) if norm_layer is not None else nn.Identity()
        self.act = create_act(act_layer, owner=owner)
        self.conv_h = nn.Conv2d(hidden, channels, 1, bias=bias)
        self.conv_w = nn.Conv2d(hidden, channels, 1, bias=bias)
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        h, w = x.shape[2:]
        z_h = x.mean(3, keepdim=True)  # (B, C, H, 1): one value per row
        z_w = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1): one value per column
        f = self.act(self.bn1(self.conv1(torch.cat([z_h, z_w], 2))))  # (B, C', H + W, 1)
        f_h, f_w = f.split([h, w], 2)
        g_h = self.gate(self.conv_h(f_h))  # (B, C, H, 1)
        g_w = self.gate(self.conv_w(f_w.transpose(2, 3)))  # (B, C, 1, W)
        return x * g_w * g_h

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"


@register("scoord", title="Simplified Coordinate Attention", paper=_PAPER, year=2021, kind="hybrid")
class SimpleCoordinateAttention(AttentionModule):
    """y = x * sigmoid(a^h + a^w), a^h(i) = F_h(act(F_1(z^h(i)))), a^w(j) = F_w(act(F_1(z^w(j)))).

    timm's ``SimpleCoordAttn``, a lighter coordinate attention: the same direction-wise average
    pooling (z^h per row, z^w per column), one shared linear layer F_1 (C -> C') applied to each
    row's and each column's C-vector, no norm, SiLU, a linear layer per direction back to C, and
    the two added before one sigmoid (coordinate attention multiplies two sigmoids). The module is
    timm's design, not the paper's; its defaults are timm's: C' = C / 6 (timm: ``rd_ratio=0.25``
    times ``se_factor=2/3``) rounded to a multiple of 8, linear layers with biases.

    Args:
        channels: input channels C.
        rd_ratio: default 1/6; rd_channels: the hidden width, overriding it; rd_divisor: round the
            hidden width to a multiple of this (default 8, timm's).
        bias: the linear layers have biases (default True).
        act_layer: default ``"silu"``; gate_layer: default ``"sigmoid"``.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 6, rd_channels: int | None = None,
                 rd_divisor: int | None = 8, bias: bool = True, act_layer: LayerSpec = "silu",
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        self.rd_channels = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor, owner=owner)
        self.fc1 = nn.Linear(channels, self.rd_channels, bias=bias)
        self.act = create_act(act_layer, owner=owner)
        self.fc_h = nn.Linear(self.rd_channels, channels, bias=bias)
        self.fc_w = nn.Linear(self.rd_channels, channels, bias=bias)
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        z_h = x.mean(3).transpose(1, 2)  # (B, H, C): each row's C-vector
        z_w = x.mean(2).transpose(1, 2)  # (B, W, C)
        a_h = self.fc_h(self.act(self.fc1(z_h))).transpose(1, 2).unsqueeze(3)  # (B, C, H, 1)
        a_w = self.fc_w(self.act(self.fc1(z_w))).transpose(1, 2).unsqueeze(2)  # (B, C, 1, W)
        return x * self.gate(a_h + a_w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"
