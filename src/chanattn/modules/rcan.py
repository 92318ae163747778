"""Image Super-Resolution Using Very Deep Residual Channel Attention Networks (Zhang et al.;
ECCV 2018, https://arxiv.org/abs/1807.02758): the channel attention (CA) layer of RCAN."""

from __future__ import annotations

from ..layers import LayerSpec
from ..registry import register
from .se import SqueezeExcite

__all__ = ["RCANChannelAttention"]


@register("rcan_ca", title="RCAN channel attention",
          paper="Image Super-Resolution Using Very Deep Residual Channel Attention Networks "
                "(ECCV 2018, arXiv:1807.02758)",
          year=2018, kind="channel")
class RCANChannelAttention(SqueezeExcite):
    """y = x * sigmoid(conv1x1(relu(conv1x1(GAP(x))))), C -> C/r -> C, convolutions with bias.

    RCAN's CA layer is SE written with 1x1 convolutions; it is registered on its own so that the
    super-resolution paper's module has its own name and defaults (r = 16, hidden ``C // r``).

    Args:
        channels: input channels C.
        rd_ratio: 1/r (default 1/16).
        rd_channels: the hidden width, overriding ``rd_ratio``.
        act_layer: default ``"relu"``; gate_layer: default ``"sigmoid"``.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=None,
                         act_layer=act_layer, gate_layer=gate_layer, bias=True)
