"""Selective Kernel Networks (Li, Wang, Hu, Yang; CVPR 2019, https://arxiv.org/abs/1903.06586)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import (
    AttentionModule,
    LayerSpec,
    check_positive_int,
    create_act,
    largest_divisor_at_most,
    reduced_channels,
)
from ..registry import register

__all__ = ["SelectiveKernel"]


@register("sk", title="Selective Kernel",
          paper="Selective Kernel Networks (CVPR 2019, arXiv:1903.06586)",
          year=2019, kind="branch", placement="replace_conv",
          placement_note="in place of each block's 3x3 convolution (SKNet: the bottleneck's middle "
                         "convolution), with the block's stride")
class SelectiveKernel(AttentionModule):
    """V = sum_m a_m ⊙ U_m, a = softmax over branches of FC_m(z), z = ReLU(BN(FC(GAP(sum_m U_m)))).

    Split: M grouped 3x3 convolutions, branch m with dilation m+1 (the paper's 5x5 branch is a
    3x3 with dilation 2, as in the paper's own implementation), each followed by BN and ReLU.
    Fuse: the branches' sum, global average pooling, an FC to d = max(C/r, L) without bias, BN,
    ReLU. Select: one FC per branch back to C (computed as one FC to M*C), softmax over the
    branches, and the weighted sum.

    SK is a drop-in replacement for a 3x3 convolution (the middle convolution of a bottleneck),
    not a gate on an existing tensor: with ``stride=2`` the output is downsampled.

    Args:
        channels: input channels C.
        out_channels: output channels (default C).
        stride: of the branch convolutions (default 1).
        groups: of the branch convolutions (default 32, the paper's G). Where it does not divide
            both C and ``out_channels``, the largest divisor of both below it is used instead
            (for example 16 at C = 16, 1 at C = 15); ``self.groups`` holds the value in use.
        num_branches: M (default 2).
        rd_ratio: 1/r (default 1/16); min_rd_channels: L (default 32);
        rd_channels: d, overriding both.
        act_layer: default ``"relu"``; norm_layer: default ``nn.BatchNorm2d``.
    """

    batchnorm_on_pooled = True  # the fuse step's BN sees (B, d) vectors

    def __init__(self, channels: int, out_channels: int | None = None, stride: int = 1,
                 groups: int = 32, num_branches: int = 2, rd_ratio: float = 1 / 16,
                 min_rd_channels: int = 32, rd_channels: int | None = None,
                 act_layer: LayerSpec = "relu", norm_layer=nn.BatchNorm2d) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        out_channels = channels if out_channels is None else out_channels
        check_positive_int(out_channels, "out_channels", owner)
        check_positive_int(stride, "stride", owner)
        check_positive_int(groups, "groups", owner)
        check_positive_int(num_branches, "num_branches", owner)
        check_positive_int(min_rd_channels, "min_rd_channels", owner)
        self.out_channels = out_channels
        self.stride = stride
        self.groups = largest_divisor_at_most(math.gcd(channels, out_channels), groups)
        self.num_branches = num_branches
        if rd_channels is None:
            rd_channels = max(reduced_channels(out_channels, rd_ratio, owner=owner), min_rd_channels)
        self.rd_channels = check_positive_int(rd_channels, "rd_channels", owner)

        self.branches = nn.ModuleList()
        for m in range(num_branches):
            dilation = m + 1
            self.branches.append(nn.Sequential(
                nn.Conv2d(channels, out_channels, 3, stride=stride, padding=dilation,
                          dilation=dilation, groups=self.groups, bias=False),
                norm_layer(out_channels),
                create_act(act_layer, owner=owner),
            ))
        self.fc_reduce = nn.Conv2d(out_channels, self.rd_channels, 1, bias=False)
        self.bn = norm_layer(self.rd_channels)
        self.act = create_act(act_layer, owner=owner)
        self.fc_select = nn.Conv2d(self.rd_channels, out_channels * num_branches, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        u = torch.stack([branch(x) for branch in self.branches], 1)  # (B, M, C', H', W')
        b, m, c = u.shape[:3]
        z = u.sum(1).mean((2, 3), keepdim=True)  # (B, C', 1, 1)
        z = self.act(self.bn(self.fc_reduce(z)))  # (B, d, 1, 1)
        a = self.fc_select(z).view(b, m, c, 1, 1).softmax(1)  # (B, M, C', 1, 1)
        return (u * a).sum(1)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, out_channels={self.out_channels}, "
                f"stride={self.stride}, groups={self.groups}, num_branches={self.num_branches}, "
                f"rd_channels={self.rd_channels}")
