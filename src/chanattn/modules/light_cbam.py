"""Light CBAM: timm's ``LightCbamModule``, a lighter variant of CBAM: Convolutional Block Attention
Module (Woo, Park, Lee, Kweon; ECCV 2018, https://arxiv.org/abs/1807.06521)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..registry import register

__all__ = ["LightCBAM"]


@register("lcbam", title="Light CBAM",
          paper="CBAM: Convolutional Block Attention Module (ECCV 2018, arXiv:1807.06521)",
          year=2018, kind="hybrid")
class LightCBAM(AttentionModule):
    """x' = x * sigmoid(MLP((GAP(x) + GMP(x)) / 2)), y = x' * sigmoid(BN(conv((mean_c x' + max_c x') / 2))).

    CBAM with each attention fed one descriptor instead of two: the channel attention averages
    the average- and max-pooled descriptors before the shared MLP (C -> C/r -> C, one MLP pass
    instead of two), and the spatial attention averages the mean and the max over channels into
    one map before a k x k convolution (1 -> 1, no bias) and BatchNorm (CBAM: two maps, 2 -> 1).
    Channel attention first, then spatial attention on its output, as CBAM.

    The module is timm's experiment (``create_attn("lcbam")``); the rest follows this library's
    ``cbam``: r = 16 with the hidden width ``C // r`` and an MLP with biases (CBAM's official
    code). timm's ``LightCbamModule`` defaults to no MLP biases (``bias=False``) and rounds the
    hidden width to the nearest integer (``rd_divisor=1``).

    timm's bug, not copied: its light channel attention applies ``torch.sigmoid`` whatever
    ``gate_layer`` is, and its light spatial attention is not given ``gate_layer`` either, so the
    option has no effect there; here ``gate_layer`` is the gate of both (tested in
    tests/test_timm_parity.py).

    Args:
        channels: input channels C.
        rd_ratio: 1/r (default 1/16); rd_channels: the hidden width, overriding it; rd_divisor:
            round the hidden width as timm does (default ``None``: ``C // r``, at least 1).
        act_layer: default ``"relu"``; gate_layer: default ``"sigmoid"``.
        bias: the MLP has biases (default True).
        kernel_size: of the spatial convolution, odd (default 7).
        norm: BatchNorm after the spatial convolution (default True, as CBAM's official code).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int | None = None, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid", bias: bool = True, kernel_size: int = 7,
                 norm: bool = True) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.rd_channels = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor, owner=owner)
        self.kernel_size = kernel_size
        self.norm = norm
        self.fc1 = nn.Conv2d(channels, self.rd_channels, 1, bias=bias)
        self.act = create_act(act_layer, owner=owner)
        self.fc2 = nn.Conv2d(self.rd_channels, channels, 1, bias=bias)
        self.conv = nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1) if norm else nn.Identity()
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, _, h, w = x.shape
        if self.norm:
            self._require_batch_stats(b * h * w)  # the spatial BN: one value per position
        pooled = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.amax((2, 3), keepdim=True)  # (B, C, 1, 1)
        x = x * self.gate(self.fc2(self.act(self.fc1(pooled))))
        pooled = 0.5 * x.mean(1, keepdim=True) + 0.5 * x.amax(1, keepdim=True)  # (B, 1, H, W)
        return x * self.gate(self.bn(self.conv(pooled)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, kernel_size={self.kernel_size}"
