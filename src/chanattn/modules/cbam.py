"""CBAM: Convolutional Block Attention Module (Woo, Park, Lee, Kweon; ECCV 2018,
https://arxiv.org/abs/1807.06521): channel attention, spatial attention, and both in sequence."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import register
from .se import SqueezeExcite

__all__ = ["CBAM", "CBAMChannelAttention", "CBAMSpatialAttention"]

_PAPER = "CBAM: Convolutional Block Attention Module (ECCV 2018, arXiv:1807.06521)"


@register("cbam_channel", title="CBAM channel attention", paper=_PAPER, year=2018,
          kind="channel")
class CBAMChannelAttention(SqueezeExcite):
    """y = x * sigmoid(MLP(GAP(x)) + MLP(GMP(x))), one MLP C -> C/r -> C shared by both poolings.

    The MLP is SE's (:class:`~chanattn.modules.se.SqueezeExcite`: ``fc1``, ``act``, ``fc2``,
    ``gate``, same arguments and defaults); CBAM feeds it the max-pooled descriptor as well.

    Args:
        channels: input channels C.
        rd_ratio: 1/r (default 1/16); rd_channels: the hidden width, overriding it;
        rd_divisor: round the hidden width as timm does (default ``None``: ``C // r``).
        act_layer: default ``"relu"``; gate_layer: default ``"sigmoid"``.
        bias: the MLP has biases (default True: the official code's ``nn.Linear``; timm's
            ``CbamModule`` defaults to ``mlp_bias=False``).

    """

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel factor (B, C, 1, 1): mean and max over H, W, the shared MLP of 1x1
        convolutions, the sum, the gate."""
        pooled = [x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)]
        s = [self.fc2(self.act(self.fc1(p))) for p in pooled]
        return self.gate(s[0] + s[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)


@register("cbam_spatial", title="CBAM spatial attention", paper=_PAPER, year=2018,
          kind="spatial")
class CBAMSpatialAttention(AttentionModule):
    """y = x * sigmoid(BN(conv7x7([mean_c(x); max_c(x)]))): one factor per position.

    The 2 -> 1 convolution has no bias and is followed by BatchNorm, as in the official code (the
    paper does not mention the BN; ``norm=False`` drops it).

    Args:
        channels: input channels C (the module's parameters do not depend on it).
        kernel_size: the convolution's odd kernel (default 7).
        norm: BatchNorm after the convolution (default True).
        gate_layer: default ``"sigmoid"``.

    """

    def __init__(self, channels: int, kernel_size: int = 7, norm: bool = True,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.norm = norm
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1) if norm else nn.Identity()
        self.gate = create_act(gate_layer, owner=owner)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial factor (B, 1, H, W): mean and max over C, the convolution, BN, the gate."""
        if self.norm:
            self._require_batch_stats(x.shape[0] * x.shape[2] * x.shape[3])
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)  # (B, 2, H, W)
        return self.gate(self.bn(self.conv(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, norm={self.norm}"


@register("cbam", title="CBAM", paper=_PAPER, year=2018, kind="hybrid")
class CBAM(AttentionModule):
    """y = S(C(x)): channel attention, then spatial attention on its output.

    Args:
        channels: input channels C.
        rd_ratio, rd_channels, rd_divisor, act_layer, bias: of the channel attention
            (:class:`CBAMChannelAttention`).
        kernel_size, norm: of the spatial attention (:class:`CBAMSpatialAttention`).
        gate_layer: the gate of both (default ``"sigmoid"``).

    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int | None = None, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid", bias: bool = True, kernel_size: int = 7,
                 norm: bool = True) -> None:
        super().__init__(channels)
        self.channel = CBAMChannelAttention(channels, rd_ratio, rd_channels, rd_divisor,
                                            act_layer, gate_layer, bias)
        self.spatial = CBAMSpatialAttention(channels, kernel_size, norm, gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = x * self.channel.attention(x)
        return x * self.spatial.attention(x)
