"""SRM: A Style-based Recalibration Module for Convolutional Neural Networks (HyunJae Lee,
Hyo-Eun Kim, Hyeonseob Nam; ICCV 2019, https://arxiv.org/abs/1903.10829)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, create_act
from ..registry import register

__all__ = ["SRM"]


@register("srm", title="Style-based Recalibration Module",
          paper="SRM: A Style-based Recalibration Module for Convolutional Neural Networks "
                "(ICCV 2019, arXiv:1903.10829)",
          year=2019, kind="channel")
class SRM(AttentionModule):
    """y = x * sigmoid(BN(w_c1 * mean_c(x) + w_c2 * std_c(x))), std_c = sqrt(var_c(x) + eps).

    Style pooling takes each channel's mean and standard deviation over H x W; style integration
    is a channel-wise fully-connected layer (CFC: two weights per channel, no bias, a depthwise
    map of the (mean, std) pair) followed by BatchNorm over the pooled (B, C, 1, 1) values and a
    sigmoid. The CFC weights start at zero, as in the official code, so at initialisation the gate
    is sigmoid(BN(0)) for every input (0.5 in training mode with a fresh BN).

    The variance is the unbiased one (divided by H*W - 1) by default: the official code
    (``x.view(N, C, -1).var(dim=2) + eps``) and the seed's snippet (``.std(-1)``) both use torch's
    unbiased default. That estimate is undefined for a 1 x 1 map (0 / 0 = NaN, even with ``eps``
    added); here it is taken as 0 there (the divisor is ``max(H*W - 1, 1)``), so the module stays
    finite at H = W = 1, where std = sqrt(eps). ``unbiased=False`` divides by H*W instead. The
    seed's snippet also has no ``eps`` (NaN gradients for constant channels); ``eps`` is added
    under the square root as in the official code.

    The BatchNorm normalises pooled features, so training needs a batch of at least 2.
    All of SRM's parameters (``cfc``, ``bn.weight``, ``bn.bias``) are trained without weight decay
    in the reference (:meth:`no_weight_decay`).

    Args:
        channels: input channels C.
        eps: added to the variance under the square root (default 1e-5).
        unbiased: divide the variance by H*W - 1 (default True, the official code) or by H*W.
        gate_layer: the gate (default ``"sigmoid"``).
    """

    batchnorm_on_pooled = True

    def __init__(self, channels: int, eps: float = 1e-5, unbiased: bool = True,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise InputError(f"{owner}: eps must be a positive number, got {eps!r}")
        self.eps = float(eps)
        self.unbiased = bool(unbiased)
        # CFC: one (mean, std) weight pair per channel, zero at initialisation.
        self.cfc = nn.Parameter(torch.zeros(channels, 2))
        self.bn = nn.BatchNorm2d(channels)
        self.gate = create_act(gate_layer, owner=owner)

    def style_pooling(self, x: torch.Tensor) -> torch.Tensor:
        """Each channel's (mean, std) over H x W: (B, C, 2)."""
        b, c, h, w = x.shape
        n = h * w
        flat = x.reshape(b, c, n)  # (B, C, H*W)
        mean = flat.mean(2, keepdim=True)  # (B, C, 1)
        divisor = max(n - 1, 1) if self.unbiased else n
        var = (flat - mean).pow(2).sum(2, keepdim=True) / divisor  # (B, C, 1)
        std = (var + self.eps).sqrt()
        return torch.cat([mean, std], 2)  # (B, C, 2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel factor, (B, C, 1, 1)."""
        t = self.style_pooling(x)  # (B, C, 2)
        z = (t * self.cfc).sum(2)  # (B, C): the channel-wise FC
        z = self.bn(z[:, :, None, None])  # (B, C, 1, 1)
        return self.gate(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters()}

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}, unbiased={self.unbiased}"
