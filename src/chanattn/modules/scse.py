"""Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks (Roy,
Navab, Wachinger; MICCAI 2018, https://arxiv.org/abs/1803.02579; the authors' code
https://github.com/ai-med/squeeze_and_excitation)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, create_act, reduced_channels
from ..registry import register

__all__ = ["ConcurrentSpatialChannelSE"]

FUSIONS = ("add", "max")


@register("scse", title="Concurrent spatial and channel SE (scSE)",
          paper="Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks "
                "(MICCAI 2018, arXiv:1803.02579)",
          year=2018, kind="hybrid",
          placement_note="per block (a choice: the paper puts it after each convolutional block of "
                         "segmentation FCNs, which have no residual blocks)")
class ConcurrentSpatialChannelSE(AttentionModule):
    """y = x * s_c + x * s_s (or the element-wise max of the two), s_c = cSE(x), s_s = sSE(x).

    cSE (SE's channel gate): s_c = sigmoid(FC(ReLU(FC(GAP(x))))), C -> C/r -> C, both FCs with
    bias (the authors' ``nn.Linear`` layers), r = 2. sSE: s_s = sigmoid(conv1x1(x)), C -> 1 with
    bias: one factor per position. The sum is x * (s_c + s_s), a factor varying over channels and
    positions (kind ``hybrid``; a gate: y is 0 where x is); the max picks x * s_c or x * s_s per
    element, a factor of x as well.

    Args:
        channels: input channels C.
        rd_ratio: 1/r (default 1/2, the authors' ``reduction_ratio=2``); rd_channels: the hidden
            width, overriding it; rd_divisor: round it as timm does (default ``None``: C // r).
        act_layer: default ``"relu"``; gate_layer: of both branches, default ``"sigmoid"``.
        fusion: ``"add"`` (default: the MICCAI paper's element-wise addition, also what most
            reimplementations use) or ``"max"`` (element-wise max: the authors' code, whose
            ``ChannelSpatialSELayer`` returns ``torch.max(cSE(x), sSE(x))``, and the journal version
            of the paper, IEEE TMI 2018, where max-out aggregation did best; see the authors'
            replies in ai-med/squeeze_and_excitation issues #3 and #10).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 2, rd_channels: int | None = None,
                 rd_divisor: int | None = None, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid", fusion: str = "add") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if fusion not in FUSIONS:
            raise InputError(f"{owner}: fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        self.rd_channels = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor, owner=owner)
        # cSE
        self.fc1 = nn.Conv2d(channels, self.rd_channels, 1, bias=True)
        self.act = create_act(act_layer, owner=owner)
        self.fc2 = nn.Conv2d(self.rd_channels, channels, 1, bias=True)
        # sSE
        self.conv = nn.Conv2d(channels, 1, 1, bias=True)
        self.gate = create_act(gate_layer, owner=owner)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """s_c, (B, C, 1, 1)."""
        return self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """s_s, (B, 1, H, W)."""
        return self.gate(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        y_c = x * self.channel_gate(x)
        y_s = x * self.spatial_gate(x)
        if self.fusion == "add":
            return y_c + y_s
        return torch.maximum(y_c, y_s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, fusion={self.fusion!r}"
