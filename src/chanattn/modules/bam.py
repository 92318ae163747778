"""BAM: Bottleneck Attention Module (Park, Woo, Lee, Kweon; BMVC 2018,
https://arxiv.org/abs/1807.06514)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..registry import register

__all__ = ["BottleneckAttention"]

_FUSIONS = ("mul", "sum")


@register("bam", title="Bottleneck Attention Module",
          paper="BAM: Bottleneck Attention Module (BMVC 2018, arXiv:1807.06514)",
          year=2018, kind="hybrid", placement="after_stage",
          placement_note="once after each stage followed by a downsampling (the paper: at every bottleneck "
                         "of the network; stages 1-3 of a ResNet), not inside the blocks")
class BottleneckAttention(AttentionModule):
    """y = x * (1 + sigmoid(Mc(x) ∘ Ms(x))), Mc of shape (B, C, 1, 1), Ms of shape (B, 1, H, W).

    Channel branch: GAP -> FC(C -> C/r) -> BN -> ReLU -> FC(C/r -> C).
    Spatial branch: 1x1 conv (C -> C/r) -> BN -> ReLU -> ``num_dilated`` x [3x3 conv, dilation
    d, padding d -> BN -> ReLU] -> 1x1 conv (C/r -> 1).

    The paper combines the branches with a sum (``fusion="sum"``); the official code multiplies
    them (``fusion="mul"``, the default). The official code pools with a kernel of the input's
    height, which assumes H = W; this one pools globally and works at any H, W. The paper places
    BAM once at the end of each of the stages 1-3 of a ResNet, not in every block.

    Args:
        channels: input channels C.
        rd_ratio: 1/r of both branches (default 1/16); rd_channels: the hidden width instead.
        dilation: of the spatial branch's 3x3 convolutions (default 4).
        num_dilated: how many of them (default 2).
        fusion: ``"mul"`` (default, official code) or ``"sum"`` (paper).
        act_layer: default ``"relu"``; gate_layer: default ``"sigmoid"``.
    """

    batchnorm_on_pooled = True  # the channel branch's BN sees (B, C/r) vectors

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 dilation: int = 4, num_dilated: int = 2, fusion: str = "mul",
                 act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if fusion not in _FUSIONS:
            raise InputError(f"{owner}: fusion must be one of {_FUSIONS}, got {fusion!r}")
        check_positive_int(dilation, "dilation", owner)
        if isinstance(num_dilated, bool) or not isinstance(num_dilated, int) or num_dilated < 0:
            raise InputError(f"{owner}: num_dilated must be an int >= 0, got {num_dilated!r}")
        hidden = reduced_channels(channels, rd_ratio, rd_channels, owner=owner)
        self.rd_channels = hidden
        self.fusion = fusion
        self.dilation = dilation

        self.channel_att = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),  # FC on the pooled (B, C, 1, 1) tensor
            nn.BatchNorm2d(hidden),
            create_act(act_layer, owner=owner),
            nn.Conv2d(hidden, channels, 1),
        )
        spatial: list[nn.Module] = [
            nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), create_act(act_layer, owner=owner)
        ]
        for _ in range(num_dilated):
            spatial += [
                nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(hidden),
                create_act(act_layer, owner=owner),
            ]
        spatial.append(nn.Conv2d(hidden, 1, 1))
        self.spatial_att = nn.Sequential(*spatial)
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        mc = self.channel_att(x.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
        ms = self.spatial_att(x)  # (B, 1, H, W)
        a = mc * ms if self.fusion == "mul" else mc + ms  # (B, C, H, W)
        return x * (1 + self.gate(a))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"dilation={self.dilation}, fusion={self.fusion!r}")
