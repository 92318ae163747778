"""Non-Local Neural Networks With Grouped Bilinear Attentional Transforms (Chi, Yuan, Mu, Wang;
CVPR 2020, https://openaccess.thecvf.com/content_CVPR_2020/html/Chi_Non-Local_Neural_Networks_With_Grouped_Bilinear_Attentional_Transforms_CVPR_2020_paper.html;
official code https://github.com/BA-Transform/BAT-Image-Classification): the BAT block."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..registry import register

__all__ = ["BilinearAttentionalTransform", "strip_max_pool"]


def _conv_norm_act(cin: int, cout: int, bias: bool, norm_layer, act_layer: LayerSpec,
                   owner: str) -> nn.Sequential:
    """1x1 convolution, norm, activation."""
    norm = nn.Identity() if norm_layer is None else norm_layer(cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=bias), norm, create_act(act_layer, owner=owner))


def strip_max_pool(e: torch.Tensor, bins: int, dim: int) -> torch.Tensor:
    """``F.adaptive_max_pool2d`` of (B, k, H, W) to ``bins`` x 1 (``dim=2``) or 1 x ``bins``
    (``dim=3``): bin i is the maximum over the whole other axis and over positions
    floor(i n / bins) ... ceil((i + 1) n / bins) - 1 of this one (n = H or W; bins overlap where
    n < bins). Written as slices so that ONNX exports it (it has no adaptive max pooling)."""
    n = e.shape[dim]
    out = []
    for i in range(bins):
        start, end = (i * n) // bins, -(-(i + 1) * n // bins)
        out.append(e.narrow(dim, start, end - start).amax((2, 3), keepdim=True))  # (B, k, 1, 1)
    return torch.cat(out, dim)


@register("bat", title="Bilinear Attentional Transform (BAT block)",
          paper="Non-Local Neural Networks With Grouped Bilinear Attentional Transforms (CVPR 2020)",
          year=2020, kind="communication",
          placement_note="per block (a choice: the paper's ResNet-50 puts it on the output of blocks 2 "
                         "and 4 of stage 2 and 2, 4, 6 of stage 3, none elsewhere)")
class BilinearAttentionalTransform(AttentionModule):
    """y = x + Dropout(E(T(R(x)))), T(X)_c = (P_g ⊗ I_t) X_c (Q_g ⊗ I_u) for the channels c of group g.

    A non-local block whose attention is a bilinear transform of each channel's map. R: 1x1
    convolution C -> C' (C' = C / 2) with BN and ReLU. The transform T: a 1x1 convolution with BN
    and ReLU embeds the C' channels in k groups (k = 4); max pooling to s x 1 (rows) and 1 x s
    (columns) and an s x 1 (1 x s) convolution give, per group, two s x s matrices (s = 7 the
    block size), through a sigmoid; P is normalised to rows summing to 1, Q to columns summing
    to 1. Each is expanded to the map's size as a Kronecker product with the identity (P ⊗ I_t,
    t = H / s: row i*t + a mixes the rows j*t + a of the other blocks), and every channel of group
    g is transformed as P_g X Q_g; a 1x1 convolution with BN and ReLU follows. E: a 1x1 convolution
    C' -> C with BN and ReLU, dropout (p = 0.2, the official code's for ResNet-50 and deeper), and
    the result is added to the input. The output is not a gate on the input, so the kind is
    ``communication``: positions exchange messages along rows and columns and the result is added
    back.

    Defaults are the official code's (``BATBlock(r=2, s=7, k=4, dropout=0.2)``): 1x1 convolutions
    with biases, Kaiming-normal (fan-out) weights, BN weights 1.

    Departures: inputs whose H or W is not a multiple of s are zero-padded at the bottom and right
    to the next multiple for the transform and cropped back (the official code and timm assert
    divisibility; at multiples of s nothing changes); the columns' Kronecker factor uses W / s
    (the official code uses H / s for both, so it takes only square maps; timm uses W / s); C'
    rounds up to a multiple of k, so that the groups split it evenly (C' = C / 2 wherever C is a
    multiple of 8). timm's ``BatNonLocalAttn`` defaults differ: C' = C / 4 rounded to a multiple
    of 8, k = 2 groups, no biases in the 1x1 convolutions (``rd_channels``, ``groups=2``,
    ``bias=False`` give them).

    Args:
        channels: input channels C.
        rd_ratio: C' / C (default 1/2); rd_channels: C', overriding it; rd_divisor: round C' as
            timm does (default ``None``).
        block_size: s (default 7).
        groups: k (default 4).
        drop_rate: of the channel dropout before the addition (default 0.2).
        bias: the 1x1 convolutions have biases (default True; the s x 1 and 1 x s always do).
        act_layer: default ``"relu"``; norm_layer: a callable ``f(channels)`` (default
            ``nn.BatchNorm2d``; ``None``: no norm).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 2, rd_channels: int | None = None,
                 rd_divisor: int | None = None, block_size: int = 7, groups: int = 4, drop_rate: float = 0.2,
                 bias: bool = True, act_layer: LayerSpec = "relu",
                 norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        s = self.block_size = check_positive_int(block_size, "block_size", owner)
        k = self.groups = check_positive_int(groups, "groups", owner)
        if not (isinstance(drop_rate, (int, float)) and 0 <= drop_rate < 1):
            raise InputError(f"{owner}: drop_rate must be in [0, 1), got {drop_rate!r}")
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor, owner=owner)
        if rd_channels is None:
            hidden = -(-hidden // k) * k
        elif hidden % k:
            raise InputError(f"{owner}: rd_channels must be a multiple of groups={k}, got {hidden}")
        self.rd_channels = hidden
        self.reduce = _conv_norm_act(channels, hidden, bias, norm_layer, act_layer, owner)
        # the bilinear transform
        self.embed = _conv_norm_act(hidden, k, bias, norm_layer, act_layer, owner)
        self.conv_p = nn.Conv2d(k, s * s * k, (s, 1))
        self.conv_q = nn.Conv2d(k, s * s * k, (1, s))
        self.project = _conv_norm_act(hidden, hidden, bias, norm_layer, act_layer, owner)
        self.expand = _conv_norm_act(hidden, channels, bias, norm_layer, act_layer, owner)
        self.dropout = nn.Dropout2d(drop_rate)
        self.has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def attention_matrices(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P and Q, each (B, k, s, s), from the embedding e (B, k, H, W): rows of P and columns
        of Q sum to 1."""
        b = e.shape[0]
        s, k = self.block_size, self.groups
        p = self.conv_p(strip_max_pool(e, s, 2)).view(b, k, s, s).sigmoid()
        q = self.conv_q(strip_max_pool(e, s, 3)).view(b, k, s, s).sigmoid()
        return p / p.sum(3, keepdim=True), q / q.sum(2, keepdim=True)

    def transform(self, xl: torch.Tensor) -> torch.Tensor:
        """T: (B, C', H, W) -> (B, C', H, W), the grouped bilinear transform and its projection."""
        b, c, h, w = xl.shape
        s, k = self.block_size, self.groups
        p, q = self.attention_matrices(self.embed(xl))
        t, u = math.ceil(h / s), math.ceil(w / s)
        xp = F.pad(xl, (0, s * u - w, 0, s * t - h))  # (B, C', s*t, s*u)
        # row j*t + a, column l*u + n; group g holds channels g*C'/k ... (g+1)*C'/k - 1
        xp = xp.reshape(b, k, c // k, s, t, s, u)
        # (P ⊗ I_t) X (Q ⊗ I_u): y[i*t + a, m*u + n] = sum_{j,l} P[i, j] x[j*t + a, l*u + n] Q[l, m]
        y = torch.einsum("bgij,bgcjaln,bglm->bgciamn", p, xp, q).reshape(b, c, s * t, s * u)
        return self.project(y[:, :, :h, :w])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, _, h, w = x.shape
        if self.has_batchnorm:
            self._require_batch_stats(b * h * w)
        return x + self.dropout(self.expand(self.transform(self.reduce(x))))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, block_size={self.block_size}, "
                f"groups={self.groups}")
