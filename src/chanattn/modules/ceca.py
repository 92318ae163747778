"""Circular ECA: ECA-Net's channel attention with circular padding over the channels (ECA-Net:
Efficient Channel Attention for Deep Convolutional Neural Networks, Wang et al.; CVPR 2020,
https://arxiv.org/abs/1910.03151; the circular variant is timm's ``CecaModule``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import register
from .eca import eca_kernel_size

__all__ = ["CircularECA"]


@register("ceca", title="Circular Efficient Channel Attention",
          paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks "
                "(CVPR 2020, arXiv:1910.03151)",
          year=2020, kind="channel")
class CircularECA(AttentionModule):
    """y_c = x_c * sigmoid(sum_{j=0}^{k-1} w_j * s_{(c + j - (k-1)/2) mod C}), s = GAP(x).

    ECA (:class:`~chanattn.modules.eca.EfficientChannelAttention`) with the 1-D convolution over
    the channels padded circularly instead of with zeros: the first and last channels see each
    other as neighbours, so every channel has k neighbours. The variant is timm's
    (``create_attn("ceca")``); the kernel size k follows ECA's adaptive rule.

    Departures from timm's ``CecaModule``:

    - the adaptive k is ECA's (:func:`~chanattn.modules.eca.eca_kernel_size`, as ``eca`` here);
      timm raises it to at least 3, which differs for C < 8 (ECA's rule gives k = 1 there);
      ``kernel_size=3`` gives timm's;
    - the wrap-around is an index modulo C, so k may exceed C (a circular convolution wraps more
      than once); timm pads with ``F.pad(mode="circular")``, which fails where (k - 1)/2 > C;
    - timm's ``act_layer`` only adds a bias to the convolution (the activation is never applied):
      ``bias=True`` gives that convolution here, without pretending to an activation.

    Args:
        channels: input channels C.
        kernel_size: an odd k overriding the adaptive rule.
        gamma, beta: constants of the adaptive rule (default 2 and 1).
        bias: the convolution has a bias (default False, as ECA).
        gate_layer: the gate (default ``"sigmoid"``).
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2,
                 beta: float = 1, bias: bool = False, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.padding = (kernel_size - 1) // 2
        self.conv = nn.Conv1d(1, 1, kernel_size, bias=bias)  # no padding: the input is wrapped
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, c = x.shape[:2]
        s = x.mean((2, 3))  # (B, C)
        # the wrapped sequence: position i reads channel (i - p) mod C, for i < C + 2p
        index = torch.arange(-self.padding, c + self.padding, device=x.device) % c
        s = s.index_select(1, index).view(b, 1, c + 2 * self.padding)
        s = F.conv1d(s, self.conv.weight, self.conv.bias).view(b, c, 1, 1)
        return x * self.gate(s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
