"""Bilinear Attention Networks for Person Retrieval (Fang, Zhou, Roy, Petersson, Harandi; ICCV 2019,
https://openaccess.thecvf.com/content_ICCV_2019/html/Fang_Bilinear_Attention_Networks_for_Person_Retrieval_ICCV_2019_paper.html,
official code https://github.com/PengfeiFANGanu/Attention-in-Attention-Networks): the bilinear
attention (Bi-attention) block with its attention-in-attention (AiA) mechanism."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..registry import register

__all__ = ["BilinearAttention"]

_PAPER = "Bilinear Attention Networks for Person Retrieval (ICCV 2019)"


@register("bilinear", title="Bilinear attention (attention-in-attention)", paper=_PAPER, year=2019,
          kind="hybrid")
class BilinearAttention(AttentionModule):
    """y = x * sigmoid(omega(GAP(x~)) * varphi(x~)), x~ = Vec(Utri(phi(x) phi(x)^T)) per position.

    The Bi-attention block (Fang et al., 2019), the paper's equations:

        x~ = Bi(phi(X)) = Vec(Utri(phi(X) phi(X)^T))   (at each position (i, j))
        x^ = omega(GAP(x~)) ⊙ varphi(x~)
        s  = sigmoid(x^),  Y = s ⊙ X

    - phi, the embedding: 1x1 conv C -> C' with BN and ReLU, (B, C', H, W);
    - Bi: at each position, the outer product of the C' features with itself, its upper
      triangle (diagonal included) as D = C'(C'+1)/2 second-order features, (B, D, H, W);
    - omega, the inner channel attention: GAP of x~, then 1x1 conv D -> C with BN and ReLU,
      (B, C, 1, 1);
    - varphi, the outer (per-position) channel attention: 1x1 conv D -> C with BN and ReLU on
      x~, (B, C, H, W);
    - the inner attention re-weights the outer one channel by channel (attention in attention),
      and the sigmoid of the product scales the input: a factor per channel and position.

    Choices, from the official code (``BilinearAttention`` in ``models/bilinear_baseline_AIA.py``)
    where the paper leaves them open: phi, omega and varphi are conv-BN-ReLU blocks, C' = C // 16,
    and no residual term (``output = sigmoid(mCha * output) * input_x``). With ReLU in omega and
    varphi the gate lies in [0.5, 1), as in the official code; ``act_layer="identity"`` lets it
    span (0, 1). Departures: the convolutions before a BN have no bias (the official ones do; BN
    cancels a bias); the upper triangle is taken in row-major order (the official code
    concatenates the diagonals of the lower triangle: the same features in another order, so
    official weights need a permutation of omega's and varphi's input channels); and C' is capped
    at ``rd_max`` = 32 by default so that the block stays affordable when placed in every block
    of a wide network: the second-order width D grows as C'^2, and varphi costs C * D
    multiply-adds per position (C = 2048 with the uncapped C // 16 = 128 gives D = 8256, 17 M
    MACs per position; with the cap D = 528). The cap leaves the reference's own use (C = 480,
    C' = 30) unchanged; ``rd_max=None`` removes it.

    Args:
        channels: input channels C.
        rd_ratio: C' / C, the embedding's reduction (default 1/16, the official code).
        rd_channels: C', overriding ``rd_ratio`` and ``rd_max``.
        rd_max: the largest C' from ``rd_ratio`` (default 32; ``None``: no cap).
        act_layer: the activation of phi, omega and varphi (default ``"relu"``).
        gate_layer: default ``"sigmoid"``.
    """

    batchnorm_on_pooled = True  # omega's BN normalises the pooled (B, C, 1, 1) features

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_max: int | None = 32, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if rd_channels is None and rd_max is not None:
            rd_max = check_positive_int(rd_max, "rd_max", owner)
            rd = min(reduced_channels(channels, rd_ratio, owner=owner), rd_max)
        else:
            rd = reduced_channels(channels, rd_ratio, rd_channels, owner=owner)
        self.rd_channels = rd
        self.rd_max = rd_max
        d = rd * (rd + 1) // 2
        self.bilinear_channels = d

        self.embed = nn.Sequential(nn.Conv2d(channels, rd, 1, bias=False), nn.BatchNorm2d(rd),
                                   create_act(act_layer, owner=owner))
        self.inner = nn.Sequential(nn.Conv2d(d, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                   create_act(act_layer, owner=owner))
        self.outer = nn.Sequential(nn.Conv2d(d, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                   create_act(act_layer, owner=owner))
        self.gate = create_act(gate_layer, owner=owner)
        # The upper triangle of the rd x rd pair matrix, with the diagonal: row and column indices
        # (D,) each. Buffers, so that they follow the module's device and torch.compile sees
        # tensors it can guard on; not persistent (no state dict key: computed from rd_channels).
        rows, cols = torch.triu_indices(rd, rd)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def init_non_persistent_buffers(self) -> None:
        """(Re)computes :attr:`rows` and :attr:`cols` in place on their device (timm's name for this
        hook: ``timm.models.reinit_non_persistent_buffers`` calls it)."""
        with torch.no_grad():
            rows, cols = torch.triu_indices(self.rd_channels, self.rd_channels, device=self.rows.device)
            self.rows.copy_(rows)
            self.cols.copy_(cols)

    def _apply(self, fn, recurse=True):
        # ``to_empty`` (materialising a module built on the meta device) leaves buffers
        # uninitialised, and the indices are in no state dict: they are recomputed after every
        # move, in place (a cheap (2, D) computation; ``.to()``, ``.cuda()`` and ``share_memory()``
        # keep them as they are anyway).
        super()._apply(fn, recurse)
        self.init_non_persistent_buffers()
        return self

    def bilinear_features(self, x: torch.Tensor) -> torch.Tensor:
        """x~: the upper triangle of phi(x) phi(x)^T at each position, (B, D, H, W)."""
        z = self.embed(x)  # (B, C', H, W)
        return z.index_select(1, self.rows) * z.index_select(1, self.cols)  # (B, D, H, W)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The factor, (B, C, H, W)."""
        xt = self.bilinear_features(x)  # (B, D, H, W)
        inner = self.inner(xt.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
        outer = self.outer(xt)  # (B, C, H, W)
        return self.gate(inner * outer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"bilinear_channels={self.bilinear_channels}")
