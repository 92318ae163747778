"""Channel Locality Block: A Variant of Squeeze-and-Excitation (Huayu Li; arXiv preprint 2019,
https://arxiv.org/abs/1901.01493)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import register

__all__ = ["ChannelLocalityBlock"]


@register("clocal", title="Channel Locality (C-Local) block",
          paper="Channel Locality Block: A Variant of Squeeze-and-Excitation (arXiv 2019, "
                "arXiv:1901.01493)",
          year=2019, kind="channel")
class ChannelLocalityBlock(AttentionModule):
    """y = x * sigmoid(conv_{1 x k}(relu(conv_{2 x 1}([GAP(x); GMP(x)])))), over the channel axis.

    Global information: each channel's average and maximum over H x W are stacked into a 2 x C
    map (one input plane); a group of F filters of size 2 x 1 (with bias) learns the relation of
    the two values of each channel, giving F values per channel, followed by ReLU. Nearby
    correlation: a single filter of size F x (1 x k) (with bias) slides over neighbouring channels
    and gives one value per channel; a sigmoid makes it the channel's weight. Instead of SE's
    fully-connected layers, only the k nearest channels interact.

    The defaults are the seed's: F = C // 4 filters and k = C // 8 (each at least 1), i.e.
    F = 16, k = 8 at C = 64.

    Departures from the seed's sketch code, which is a rough draft of the paper's figures:

    - the gate is a sigmoid, as in the paper's description (an SE variant); the sketch multiplies
      the input by the raw ReLU output, which is unbounded and zero for every channel whose
      response is negative;
    - the channel convolution is zero-padded ("same": (k - 1) // 2 channels before, k // 2
      after, as ECA's 1-D convolution does for odd k) so that channel c's weight comes from the
      window around channel c; the sketch convolves without padding (C - k + 1 outputs) and
      stretches them back to C with an adaptive average pooling, which misaligns the weights
      with the channels and blurs them; its pooling after the 2 x 1 convolution is a no-op;
    - no ReLU after the channel convolution (the sketch has one; before a sigmoid it would clamp
      every gate to [0.5, 1)).

    Args:
        channels: input channels C.
        filters: the number F of 2 x 1 filters (default ``max(1, C // 4)``).
        kernel_size: the extent k of the convolution over channels (default ``max(1, C // 8)``).
        bias: both convolutions have a bias (default True, as the sketch's ``nn.Conv2d``).
        act_layer: the activation after the 2 x 1 convolutions (default ``"relu"``).
        gate_layer: the gate (default ``"sigmoid"``).
    """

    def __init__(self, channels: int, filters: int | None = None, kernel_size: int | None = None,
                 bias: bool = True, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        filters = max(1, channels // 4) if filters is None else filters
        kernel_size = max(1, channels // 8) if kernel_size is None else kernel_size
        self.filters = check_positive_int(filters, "filters", owner)
        self.kernel_size = check_positive_int(kernel_size, "kernel_size", owner)
        # "same" zero padding over channels, the extra one after for an even k.
        self.padding = ((kernel_size - 1) // 2, kernel_size // 2)
        self.relation = nn.Conv2d(1, filters, (2, 1), bias=bias)
        self.act = create_act(act_layer, owner=owner)
        self.nearby = nn.Conv2d(filters, 1, (1, kernel_size), bias=bias)
        self.gate = create_act(gate_layer, owner=owner)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel factor, (B, C, 1, 1)."""
        b, c = x.shape[:2]
        s = torch.stack([x.mean((2, 3)), x.amax((2, 3))], 1)  # (B, 2, C)
        s = self.act(self.relation(s.unsqueeze(1)))  # (B, 1, 2, C) -> (B, F, 1, C)
        s = F.pad(s, self.padding)  # (B, F, 1, C + k - 1)
        s = self.nearby(s)  # (B, 1, 1, C)
        return self.gate(s).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, filters={self.filters}, kernel_size={self.kernel_size}"
