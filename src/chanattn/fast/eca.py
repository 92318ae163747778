"""ECA: the 1-D convolution across the pooled channels as k shifted multiply-adds (CPU, inference)."""

from __future__ import annotations

import torch

from ..modules.eca import EfficientChannelAttention
from .functional import conv1d_channels
from .registry import FastPath, register


def _eca(m: EfficientChannelAttention, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    b, c = x.shape[:2]
    s = conv1d_channels(x.mean((2, 3)), m.conv.weight)  # (B, C)
    return x * m.gate(s.view(b, c, 1, 1))


register(FastPath(
    "eca.shifted_sums", EfficientChannelAttention, _eca, purpose="speed", autograd=False,
    devices=("cpu",),
    summary="the 1-D convolution over the pooled channels as k shifted multiply-adds",
    examples=(("eca", {"kernel_size": 7}),)))
