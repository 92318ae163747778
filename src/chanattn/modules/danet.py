"""The channel attention module (CAM) of Dual Attention Network for Scene Segmentation (Fu et al.;
CVPR 2019, https://arxiv.org/abs/1809.02983; official code https://github.com/junfu1115/DANet,
``encoding/nn/da_att.py``)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule
from ..registry import register

__all__ = ["DANetChannelAttention"]

AFFINITIES = ("official", "paper")


@register("danet_cam", title="DANet channel attention module (CAM)",
          paper="Dual Attention Network for Scene Segmentation (CVPR 2019, arXiv:1809.02983)",
          year=2019, kind="communication", placement="head",
          placement_note="once, on the backbone's last feature map (DANet's head; the paper applies it "
                         "to a 3x3 convolution's C/4 channels beside the position attention module, "
                         "which chanattn does not build)")
class DANetChannelAttention(AttentionModule):
    """y = gamma * (A X) + X, A = softmax_j(max_j' E_ij' - E_ij), E = X X^T (C x C), X = x as (C, H W).

    Every output channel i is x_i plus gamma times a convex combination of all channels, weighted
    by their affinity to channel i; gamma is one scalar initialised to 0, so the module is the
    identity at initialisation.

    The affinity, verified in the official ``CAM_Module``: ``energy_new = max(energy, -1) -
    energy`` then ``softmax(energy_new)`` over the last axis. The row maximum is a constant of
    each row and cancels in the softmax, so A_ij = exp(-E_ij) / sum_j exp(-E_ij): the official
    code weighs each channel by its *dissimilarity* to channel i, whereas the paper's Eq. (3)
    takes the softmax of the energy itself, exp(E_ij) / sum_j exp(E_ij) (a channel weighs most
    the channels most similar to it, itself first). ``affinity`` chooses; the default follows the
    official code, which trained the published models.

    Kind ``communication``: channels exchange messages (A X) and the result is added back to x.
    It is not a channel gate (y / x varies over positions), nor a gate at all (y is not 0 where x
    is, since A X mixes in the other channels).

    Args:
        channels: input channels C (the parameter, gamma, does not depend on it).
        affinity: ``"official"`` (default, softmax of max - E) or ``"paper"`` (softmax of E).

    In DANet the CAM sits in the segmentation head, on a 3x3 convolution's output of C/4 channels
    of the dilated ResNet's last stage, not in every block.
    """

    def __init__(self, channels: int, affinity: str = "official") -> None:
        super().__init__(channels)
        if affinity not in AFFINITIES:
            raise InputError(f"{type(self).__name__}: affinity must be one of {AFFINITIES}, got {affinity!r}")
        self.affinity = affinity
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """A, (B, C, C): row i holds the weights of the channels in output channel i."""
        q = x.reshape(x.shape[0], x.shape[1], -1)  # (B, C, H W)
        energy = q @ q.transpose(1, 2)  # (B, C, C)
        if self.affinity == "official":
            energy = energy.amax(-1, keepdim=True) - energy
        return energy.softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, c, h, w = x.shape
        out = self.attention_matrix(x) @ x.reshape(b, c, h * w)  # (B, C, H W)
        return self.gamma * out.view(b, c, h, w) + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, affinity={self.affinity!r}"
