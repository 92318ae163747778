"""Gated Channel Transformation for Visual Recognition (Zongxin Yang, Linchao Zhu, Yu Wu, Yi Yang;
CVPR 2020, https://arxiv.org/abs/1909.11519)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule
from ..registry import register

__all__ = ["GCT"]

_MODES = ("l2", "l1")


@register("gct", title="Gated Channel Transformation",
          paper="Gated Channel Transformation for Visual Recognition (CVPR 2020, arXiv:1909.11519)",
          year=2020, kind="channel", placement="every_conv",
          placement_note="before every convolution, the stem and the shortcuts included, as the official "
                         "GCT-ResNet (PyTorch/resnet.py) and the paper's default setting; that ResNet is v1 "
                         "(create_model(..., stride_in_1x1=True))")
class GCT(AttentionModule):
    """y = x * (1 + tanh(s_c * gamma_c / ||s||_CN + beta_c)), s_c = alpha_c * ||x_c||_p.

    Global context embedding, channel normalisation and gating adaptation of GCT:

    - ``l2`` (default): s_c = alpha_c * (sum_{h,w} x_c^2 + eps)^0.5, and the channel norm is
      (mean_c s_c^2 + eps)^0.5;
    - ``l1``: s_c = alpha_c * sum_{h,w} |x_c|, and the channel norm is mean_c |s_c| + eps.

    alpha starts at 1, gamma and beta at 0, so the module is the identity at initialisation. The
    norms are per sample (over H, W, then over C), so there are no batch statistics. beta is
    trained without weight decay in the reference (:meth:`no_weight_decay`).

    Departures from the official code: an unknown mode is a ValueError at construction (the
    official code prints and calls ``sys.exit()`` in ``forward``); its ``after_relu`` flag, which
    skips the ``abs`` of ``l1`` mode for non-negative inputs, is not offered, since ``abs`` gives
    the same result on such inputs and the right one on any other.

    Args:
        channels: input channels C.
        eps: the epsilon of the embedding and of the channel norm (default 1e-5).
        mode: ``"l2"`` (default) or ``"l1"``.
    """

    def __init__(self, channels: int, eps: float = 1e-5, mode: str = "l2") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if mode not in _MODES:
            raise InputError(f"{owner}: mode must be one of {_MODES}, got {mode!r}")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise InputError(f"{owner}: eps must be a positive number, got {eps!r}")
        self.eps = float(eps)
        self.mode = mode
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel factor 1 + tanh(...), (B, C, 1, 1)."""
        if self.mode == "l2":
            embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.eps).sqrt() * self.alpha
            norm = self.gamma / (embedding.pow(2).mean(1, keepdim=True) + self.eps).sqrt()
        else:  # l1
            embedding = x.abs().sum((2, 3), keepdim=True) * self.alpha
            norm = self.gamma / (embedding.abs().mean(1, keepdim=True) + self.eps)
        return 1.0 + torch.tanh(embedding * norm + self.beta)  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)

    def no_weight_decay(self) -> set[str]:
        return {"beta"}

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}, eps={self.eps}"
