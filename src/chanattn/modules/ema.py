"""Efficient Multi-Scale Attention Module with Cross-Spatial Learning (Ouyang et al.; ICASSP 2023,
https://arxiv.org/abs/2305.13563; official code https://github.com/YOLOonMe/EMA-attention-module)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, check_positive_int, largest_divisor_at_most
from ..registry import register
from .shuffle_attention import group_norm

__all__ = ["EfficientMultiScaleAttention"]


@register("ema", title="Efficient Multi-scale Attention",
          paper="Efficient Multi-Scale Attention Module with Cross-Spatial Learning "
                "(ICASSP 2023, arXiv:2305.13563)",
          year=2023, kind="hybrid")
class EfficientMultiScaleAttention(AttentionModule):
    """y_g = x_g * sigmoid(softmax(GAP(x1)) x2 + softmax(GAP(x2)) x1) per group g of C/G channels.

    C is split into G groups, each handled as a sample of C/G channels (the batch becomes B G).
    1x1 branch: average pools along W and along H, one shared 1x1 convolution over their
    concatenation, a sigmoid gate per row and per column, x1 = GN(x_g * gate_h * gate_w).
    3x3 branch: x2 = conv3x3(x_g). Cross-spatial learning: each branch's pooled channel descriptor,
    softmaxed over the group's channels, weighs the other branch's map; the two (1, H W) maps are
    summed, and their sigmoid is the factor of every channel of the group at that position
    (kind ``hybrid``: it varies over groups and positions; a gate, y is 0 where x is).

    Layers as the official code: both convolutions C/G -> C/G with bias (3x3 with padding 1),
    GroupNorm(C/G, C/G) (one group per channel, eps 1e-5), PyTorch's default initialisation. The
    GroupNorm runs through :func:`~chanattn.modules.shuffle_attention.group_norm` (the same
    values), so that a batch of 1 at 1 x 1 with C = G is normalised instead of refused.

    Args:
        channels: input channels C.
        groups: G, the official ``factor`` (default 32, the official default). The official code
            asserts C // G > 0 and needs G to divide C (its reshape); where G does not divide C,
            the largest divisor of C below G is used instead (16 at C = 16, 8 at C = 24, 1 at a
            prime C < 32); ``self.groups`` holds the value in use.
    """

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__(channels)
        check_positive_int(groups, "groups", type(self).__name__)
        self.groups = largest_divisor_at_most(channels, groups)
        cg = channels // self.groups
        self.conv1x1 = nn.Conv2d(cg, cg, 1)
        self.conv3x3 = nn.Conv2d(cg, cg, 3, padding=1)
        self.gn = nn.GroupNorm(cg, cg)

    def attention(self, xg: torch.Tensor) -> torch.Tensor:
        """The factor (B G, 1, H, W) of the grouped input ``xg``, (B G, C/G, H, W)."""
        bg, cg, h, w = xg.shape
        x_h = xg.mean(3, keepdim=True)  # (BG, C/G, H, 1): pooled along W
        x_w = xg.mean(2, keepdim=True).transpose(2, 3)  # (BG, C/G, W, 1): pooled along H
        a_h, a_w = self.conv1x1(torch.cat([x_h, x_w], 2)).split([h, w], 2)
        x1 = group_norm(self.gn, xg * a_h.sigmoid() * a_w.transpose(2, 3).sigmoid())  # (BG, C/G, H, W)
        x2 = self.conv3x3(xg)
        w1 = x1.mean((2, 3)).softmax(-1).unsqueeze(1)  # (BG, 1, C/G)
        w2 = x2.mean((2, 3)).softmax(-1).unsqueeze(1)
        weights = w1 @ x2.reshape(bg, cg, h * w) + w2 @ x1.reshape(bg, cg, h * w)  # (BG, 1, H W)
        return weights.view(bg, 1, h, w).sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, c, h, w = x.shape
        xg = x.reshape(b * self.groups, c // self.groups, h, w)
        return (xg * self.attention(xg)).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
