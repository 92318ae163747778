"""Strip pooling attention as timm defines it (``StripAttn``), after Strip Pooling: Rethinking
Spatial Pooling for Scene Parsing (Hou, Zhang, Cheng, Feng; CVPR 2020, https://arxiv.org/abs/2003.13328)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import register

__all__ = ["StripAttention"]


@register("strip", title="Strip pooling attention",
          paper="Strip Pooling: Rethinking Spatial Pooling for Scene Parsing (CVPR 2020, arXiv:2003.13328)",
          year=2020, kind="hybrid")
class StripAttention(AttentionModule):
    """y_c(i, j) = x_c(i, j) * sigmoid(K^h * z^h_c (i) + K^w * z^w_c (j)), z^h_c(i) = mean_j x_c(i, j),
    z^w_c(j) = mean_i x_c(i, j), K^h, K^w depthwise 1-D kernels of size k.

    timm's minimal strip attention (``create_attn("strip")``): strip pooling along each direction,
    a depthwise 1-D convolution per direction (k = 3, no bias; ``use_conv=False`` drops them),
    the two broadcast to H x W and added, and a sigmoid gate on the input.

    The paper's strip pooling module (SPNet's ``SPBlock``) differs: full (not depthwise) 3x1 and
    1x3 convolutions, each followed by BatchNorm, a ReLU after the sum, then a 1x1 convolution
    (with bias) before the sigmoid; it gates the output of a bottleneck's 3x3 convolution. This
    module is timm's, as issue 16 asks (``strip`` as timm defines it).

    Args:
        channels: input channels C.
        kernel_size: k, odd (default 3).
        use_conv: the depthwise convolutions (default True; False: the pooled strips themselves).
        bias: the convolutions have biases (default False).
        gate_layer: default ``"sigmoid"``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, use_conv: bool = True, bias: bool = False,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.use_conv = use_conv
        if use_conv:
            pad = kernel_size // 2
            self.conv_h = nn.Conv2d(channels, channels, (kernel_size, 1), padding=(pad, 0), groups=channels,
                                    bias=bias)
            self.conv_w = nn.Conv2d(channels, channels, (1, kernel_size), padding=(0, pad), groups=channels,
                                    bias=bias)
        else:
            self.conv_h = nn.Identity()
            self.conv_w = nn.Identity()
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        a_h = self.conv_h(x.mean(3, keepdim=True))  # (B, C, H, 1)
        a_w = self.conv_w(x.mean(2, keepdim=True))  # (B, C, 1, W)
        return x * self.gate(a_h + a_w)  # the sum broadcasts to (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, use_conv={self.use_conv}"
