"""SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks (Yang, Zhang,
Li, Xie; ICML 2021, PMLR 139:11863-11874, https://proceedings.mlr.press/v139/yang21o.html; official
code https://github.com/ZjjConan/SimAM)."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, create_act
from ..registry import register

__all__ = ["SimAM"]


@register("simam", title="SimAM",
          paper="SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks "
                "(ICML 2021, PMLR 139:11863-11874; no arXiv version)",
          year=2021, kind="hybrid",
          placement_note="per block, after the last BN (a choice: the official networks put it inside "
                         "each block after the 3x3 convolution, before its BN)")
class SimAM(AttentionModule):
    """y = x * sigmoid(1 / e*), e* = 4 (var + lambda) / ((x - mu)^2 + 2 var + 2 lambda): no parameters.

    Each neuron t of a channel gets the minimal energy of the paper's energy function, a linear separation
    of t (label 1) from the other neurons of its channel (label -1) with a penalty lambda * w^2;
    its closed form is e* above, mu and var the channel's mean and variance, computed once
    per channel and shared by its neurons. 1 / e* = (x - mu)^2 / (4 (var + lambda)) + 1/2, always
    in [1/2, inf): a factor per (b, c, h, w), hence the ``hybrid`` kind (a gate: y is 0 where x is).

    Args:
        channels: input channels C (the module has no parameters; C is checked on input).
        e_lambda: lambda of the energy (default 1e-4, the official module's default; the official
            README's ImageNet training commands pass ``--attention_param 0.1`` instead).
        gate_layer: the gate on 1 / e* (default ``"sigmoid"``, the paper's).

    As in the official code, var divides the sum of squares by n = H*W - 1 (the unbiased
    variance). Departure: at H = W = 1 the official n = 0 gives 0 / 0 = NaN; here n is at least
    1, so a 1 x 1 map (where x - mu = 0) gets 1 / e* = 1/2.
    """

    def __init__(self, channels: int, e_lambda: float = 1e-4, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if isinstance(e_lambda, bool) or not isinstance(e_lambda, (int, float)) or not e_lambda > 0:
            raise InputError(f"{owner}: e_lambda must be a positive number, got {e_lambda!r}")
        self.e_lambda = float(e_lambda)
        self.gate = create_act(gate_layer, owner=owner)

    def inverse_energy(self, x: torch.Tensor) -> torch.Tensor:
        """1 / e* of every neuron, (B, C, H, W)."""
        n = max(x.shape[2] * x.shape[3] - 1, 1)
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)  # (t - mu)^2
        var = d.sum((2, 3), keepdim=True) / n  # (B, C, 1, 1)
        return d / (4 * (var + self.e_lambda)) + 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.gate(self.inverse_energy(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, e_lambda={self.e_lambda:g}"
