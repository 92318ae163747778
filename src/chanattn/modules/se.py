"""Squeeze-and-Excitation Networks (Hu, Shen, Sun; CVPR 2018, https://arxiv.org/abs/1709.01507),
and the SE variants of ECA-Net (Wang et al.; CVPR 2020, https://arxiv.org/abs/1910.03151), the
third of which is eSE of CenterMask (Lee, Park; CVPR 2020, https://arxiv.org/abs/1911.06667)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, LayerSpec, create_act, reduced_channels
from ..registry import register

__all__ = ["SEVar1", "SEVar2", "SEVar3", "SqueezeExcite"]

_SE_PAPER = "Squeeze-and-Excitation Networks (CVPR 2018, arXiv:1709.01507)"
_ECA_PAPER = ("ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks "
              "(CVPR 2020, arXiv:1910.03151)")


@register("se", title="Squeeze-and-Excitation", paper=_SE_PAPER, year=2018, kind="channel")
class SqueezeExcite(AttentionModule):
    """y = x * gate(W2 act(W1 GAP(x) + b1) + b2), W1: C -> C/r, W2: C/r -> C.

    Squeeze-and-Excitation (Hu et al., 2018). Defaults are the paper's: r = 16, ReLU, sigmoid,
    fully-connected layers with bias as in the official code (written as 1x1 convolutions on the
    pooled (B, C, 1, 1) tensor, which is the same map).

    Args:
        channels: input channels C.
        rd_ratio: 1/r, the reduction of the hidden layer (default 1/16).
        rd_channels: the hidden width, overriding ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this as timm does (``None``: the
            paper's ``C // r``, at least 1; timm's SEModule uses 8).
        act_layer: activation between the two layers (default ``"relu"``).
        gate_layer: the gate (default ``"sigmoid"``).
        bias: the layers have biases (default True, the official code).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int | None = None, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid", bias: bool = True) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor, owner=owner)
        self.rd_channels = hidden
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.act = create_act(act_layer, owner=owner)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.fc2(self.act(self.fc1(s)))
        return x * self.gate(s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"


@register("se_var1", title="SE-Var-1", paper=_ECA_PAPER, year=2020, kind="channel")
class SEVar1(AttentionModule):
    """y = x * sigmoid(GAP(x)): SE with the excitation reduced to the gate; no parameters.

    Equals global-extent GE-θ- (``ge_theta_minus`` with ``extent=0``).

    Args:
        channels: input channels C.
        gate_layer: the gate (default ``"sigmoid"``).
    """

    def __init__(self, channels: int, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        self.gate = create_act(gate_layer, owner=type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.gate(x.mean((2, 3), keepdim=True))


@register("se_var2", title="SE-Var-2", paper=_ECA_PAPER, year=2020, kind="channel")
class SEVar2(AttentionModule):
    """y = x * sigmoid(w ⊙ GAP(x)), w in R^C: one weight per channel (a depthwise 1x1 conv).

    Args:
        channels: input channels C.
        bias: add a per-channel bias (default False, the paper's equation; the seed's snippet
            uses ``Conv2d``'s default bias, ``bias=True`` gives that).
        gate_layer: the gate (default ``"sigmoid"``).
    """

    def __init__(self, channels: int, bias: bool = False, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        self.fc = nn.Conv2d(channels, channels, 1, groups=channels, bias=bias)
        self.gate = create_act(gate_layer, owner=type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


@register("se_var3", title="SE-Var-3 (eSE)", paper=_ECA_PAPER, year=2020, kind="channel", aliases=("ese",))
class SEVar3(AttentionModule):
    """y = x * sigmoid(W GAP(x) + b), W in R^{C x C}: one full layer, no reduction.

    The same module as eSE (effective SE) of CenterMask/VoVNetV2. eSE's official code and timm's
    ``EffectiveSEModule`` use a bias and a hard sigmoid gate; the ECA paper writes a sigmoid.

    Args:
        channels: input channels C.
        bias: the layer has a bias (default True, eSE's official code).
        gate_layer: the gate (default ``"sigmoid"``, the ECA paper; ``"hard_sigmoid"`` is eSE's).
    """

    def __init__(self, channels: int, bias: bool = True, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        self.fc = nn.Conv2d(channels, channels, 1, bias=bias)
        self.gate = create_act(gate_layer, owner=type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))
