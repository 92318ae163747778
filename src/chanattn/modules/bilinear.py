"""Bilinear Attention Networks for Person Retrieval (Fang, Zhou, Roy, Petersson, Harandi; ICCV 2019,
https://openaccess.thecvf.com/content_ICCV_2019/html/Fang_Bilinear_Attention_Networks_for_Person_Retrieval_ICCV_2019_paper.html,
official code https://github.com/PengfeiFANGanu/Attention-in-Attention-Networks): the bilinear
attention (Bi-attention) block with its attention-in-attention (AiA) mechanism."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..recompute import BNConfig, bn_apply, bn_args, bn_backward, bn_forward, bn_saved, recompute_applies
from ..registry import register

__all__ = ["BilinearAttention"]

_PAPER = "Bilinear Attention Networks for Person Retrieval (ICCV 2019)"


@functools.lru_cache(maxsize=64)
def _upper_triangle(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of torch.triu_indices(n, n) on ``device``: constants, not buffers, so that a
    module built on the meta device and materialised with ``to_empty`` keeps them."""
    rows, cols = torch.triu_indices(n, n, device=device)
    return rows, cols


class _PairProducts(torch.autograd.Function):
    """z[:, rows] * z[:, cols], (B, D, H, W), saving z (B, C', H, W) only: autograd keeps both
    selected (B, D, H, W) factors, D = C'(C'+1)/2 channels each. The backward selects them again
    and adds the two products back into z's channels (as ``index_select``'s backward does)."""

    @staticmethod
    def forward(z, rows, cols):
        return z.index_select(1, rows) * z.index_select(1, cols)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        z, rows, cols = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        dz = torch.zeros_like(z).index_add_(1, rows, g * z.index_select(1, cols))
        return dz.index_add_(1, cols, g * z.index_select(1, rows)), None, None


class _OuterGate(torch.autograd.Function):
    """x * sigmoid(inner * ReLU(BN(o))) saving x, o (the outer convolution's output, BN's input),
    inner (B, C, 1, 1) and BN's per-channel statistics: autograd would also keep the ReLU's output
    and the gate, two more (B, C, H, W) tensors. The backward recomputes them elementwise and runs
    BN's own backward (``native_batch_norm_backward``); BN's running statistics are updated once,
    in the forward (:mod:`chanattn.recompute`)."""

    @staticmethod
    def forward(x, o, inner, bn_w, bn_b, running_mean, running_var, cfg: BNConfig):
        y, s1, s2 = bn_forward(o, bn_w, bn_b, running_mean, running_var, cfg)
        out = torch.mul(inner, y.relu_()).sigmoid_().mul_(x)  # x * sigmoid(inner * ReLU(y))
        return out, s1, s2

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, o, inner, bn_w, bn_b, running_mean, running_var, cfg = inputs
        _, s1, s2 = output
        ctx.mark_non_differentiable(s1, s2)
        ctx.set_materialize_grads(False)
        ctx.cfg = cfg
        ctx.save_for_backward(x, o, inner, bn_w, bn_b, *bn_saved(cfg, running_mean, running_var, s1, s2))

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, _gs1, _gs2):
        if gy is None:
            return (None,) * 8
        x, o, inner, bn_w, bn_b, *stats = ctx.saved_tensors
        need = ctx.needs_input_grad
        a = bn_apply(o, bn_w, bn_b, stats, ctx.cfg).relu_()
        g = torch.mul(inner, a).sigmoid_()
        dx = gy * g if need[0] else None
        dp = torch.ops.aten.sigmoid_backward(gy * x, g)  # the gate's pre-activation
        del g
        d_inner = (dp * a).sum((2, 3), keepdim=True) if need[2] else None
        dy = torch.ops.aten.threshold_backward(dp.mul_(inner), a, 0)
        del dp, a
        do, dw, db = bn_backward(dy, o, bn_w, stats, ctx.cfg, (need[1], need[3], need[4]))
        return dx, do, d_inner, dw, db, None, None, None


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

    ``forward_reference`` is the plain formula. ``forward`` computes the same; in training (where
    autograd records, in eager mode) two autograd Functions save less: 2.3x the input at
    8x64x28x28 and 2.7x at 8x256x14x14, against 4.6x and 5.7x for the plain formula.
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

    @property
    def rows(self) -> torch.Tensor:
        """Row indices of the upper triangle of the rd x rd pair matrix (with the diagonal)."""
        return _upper_triangle(self.rd_channels, self.embed[0].weight.device)[0]

    @property
    def cols(self) -> torch.Tensor:
        """Column indices of the upper triangle, paired with :attr:`rows`."""
        return _upper_triangle(self.rd_channels, self.embed[0].weight.device)[1]

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
        """``forward_reference``'s result. Where autograd records (eager mode, no autocast), two
        autograd Functions save less for backward: the pair products save phi(x) instead of their
        two (B, D, H, W) factors, and the outer branch's BN, ReLU, the product with the inner
        attention, the gate and the product with x save x, the outer convolution's output and
        inner only (see :class:`_OuterGate`)."""
        self._check_input(x)
        if not recompute_applies(x, self):
            return x * self.attention(x)
        z = self.embed(x)  # (B, C', H, W)
        xt = _PairProducts.apply(z, self.rows, self.cols)  # (B, D, H, W)
        inner = self.inner(xt.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
        conv, bn, act = self.outer
        if not (type(bn) is nn.BatchNorm2d and type(act) is nn.ReLU and type(self.gate) is nn.Sigmoid):
            return x * self.gate(inner * self.outer(xt))
        o = conv(xt)  # (B, C, H, W)
        return _OuterGate.apply(x, o, inner, bn.weight, bn.bias, *bn_args(bn, o.shape))[0]

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula, for tests."""
        self._check_input(x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"bilinear_channels={self.bilinear_channels}")
