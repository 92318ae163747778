"""ECA-NS, the non-shared variant of efficient channel attention in ECA-Net: Efficient Channel
Attention for Deep Convolutional Neural Networks (Wang et al.; CVPR 2020,
https://arxiv.org/abs/1910.03151; official code https://github.com/BangguWu/ECANet,
``models/eca_ns.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import register
from .eca import eca_kernel_size

__all__ = ["EfficientChannelAttentionNS"]


@register("eca_ns", title="ECA-NS (per-channel kernels)",
          paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks "
                "(CVPR 2020, arXiv:1910.03151)",
          year=2020, kind="channel")
class EfficientChannelAttentionNS(AttentionModule):
    """y = x * sigmoid(s), s_i = sum_j w_i^j y_{i+j-(k-1)/2}, y = GAP(x): each channel its own k weights.

    The paper's Eq. (7) (Table 2's "ECA-NS", k x C parameters): channel i's weight comes from its
    k neighbouring channels (zero-padded at the ends) with weights of its own; ECA (``eca``, Eq. 9)
    shares one kernel among all channels. As the official ``eca_ns.py``: a window of k channels
    centred on i (its ``unfold`` with padding (k-1)/2), weights stored as a depthwise
    ``Conv1d(C, C, k, groups=C, bias=False)`` with that layer's default initialisation.
    ``forward`` multiplies each channel's window of k entries of the zero-padded pooled vector by
    its row of weights.

    Args:
        channels: input channels C.
        kernel_size: k, odd (default 3: Table 2 compares ECA-NS with ECA at k = 3; the official
            layer takes ``k_size`` with no default). ``None``: ECA's adaptive rule
            (:func:`~chanattn.modules.eca.eca_kernel_size` with ``gamma``, ``beta``).
        gamma, beta: of the adaptive rule (default 2 and 1).
        gate_layer: default ``"sigmoid"``.

    The paper's band matrix (its Eq. 6) puts row i's k weights on columns i ... i+k-1; its Eq. (7)
    and the official code centre them on i, as here.
    """

    def __init__(self, channels: int, kernel_size: int | None = 3, gamma: float = 2, beta: float = 1,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)  # (C, 1, k)
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, c = x.shape[:2]
        k = self.kernel_size
        y = F.pad(x.mean((2, 3)), ((k - 1) // 2, (k - 1) // 2))  # (B, C + k - 1), zeros at the ends
        # (B, C): s_i = sum_j w_i^j y_{i+j-p}, over the k-windows of the padded vector (a batched
        # product, so that count_macs sees its k C multiply-adds per sample)
        s = torch.einsum("bcj,cj->bc", y.unfold(1, k, 1), self.conv.weight.view(c, k))
        return x * self.gate(s.view(b, c, 1, 1))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
