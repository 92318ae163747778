"""FcaNet: Frequency Channel Attention Networks (Zequn Qin, Pengyi Zhang, Fei Wu, Xi Li;
ICCV 2021, https://arxiv.org/abs/2012.11879)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..registry import Stage, register

__all__ = ["FREQ_TABLES", "FrequencyChannelAttention", "dct_basis_1d", "frequency_indices"]

# The frequency orderings of FcaNet on a 7 x 7 grid, as (u, v) = (vertical, horizontal) index
# pairs: "top" is the order of the single-frequency ImageNet accuracies of the paper's ablation,
# "low" a zig-zag from the lowest frequencies, "bot" the reverse order of "top". The first n
# entries of a list give the ``top<n>`` / ``low<n>`` / ``bot<n>`` selection.
_TOP = ((0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0), (5, 0), (1, 6), (3, 0),
        (0, 4), (0, 6), (0, 3), (3, 5), (2, 2), (4, 6), (6, 3), (3, 3), (5, 3), (5, 5), (2, 1),
        (6, 1), (5, 2), (5, 4), (3, 2), (3, 1), (4, 1), (2, 3), (2, 0), (6, 5), (1, 3))
_LOW = ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (2, 1), (1, 2), (2, 2), (0, 3), (3, 0),
        (4, 0), (0, 4), (1, 3), (3, 1), (0, 5), (1, 4), (2, 3), (3, 2), (4, 1), (5, 0), (0, 6),
        (1, 5), (2, 4), (3, 3), (4, 2), (5, 1), (6, 0), (1, 6), (2, 5), (3, 4), (4, 3))
_BOT = ((6, 6), (1, 4), (3, 4), (3, 6), (2, 6), (4, 3), (1, 1), (2, 4), (4, 4), (4, 5), (5, 6),
        (1, 5), (4, 2), (6, 2), (2, 5), (5, 1), (6, 4), (1, 3), (6, 5), (2, 0), (2, 3), (4, 1),
        (3, 1), (3, 2), (5, 4), (5, 2), (6, 1), (2, 1), (5, 5), (5, 3), (3, 3), (6, 3))

#: ``"top16"`` -> its 16 (u, v) pairs on the 7 x 7 grid; n in 1, 2, 4, 8, 16, 32.
FREQ_TABLES: dict[str, tuple[tuple[int, int], ...]] = {
    f"{prefix}{n}": table[:n]
    for prefix, table in (("top", _TOP), ("low", _LOW), ("bot", _BOT))
    for n in (1, 2, 4, 8, 16, 32)
}

#: The grid the tables are given on.
TABLE_GRID = 7


def frequency_indices(freq_sel: str | Sequence[tuple[int, int]], dct_h: int = 7, dct_w: int = 7,
                      *, owner: str = "FrequencyChannelAttention") -> list[tuple[int, int]]:
    """The (u, v) frequencies of a selection on a dct_h x dct_w grid.

    ``freq_sel`` is a table name (``"top16"``, ``"low4"``, ...; see :data:`FREQ_TABLES`) or a
    sequence of (u, v) pairs; both are on the 7 x 7 grid and are scaled by (dct_h // 7,
    dct_w // 7), so that, e.g., (1, 1) on 7 x 7 is (2, 2) on 14 x 14.
    """
    if isinstance(freq_sel, str):
        if freq_sel not in FREQ_TABLES:
            raise InputError(
                f"{owner}: unknown frequency selection {freq_sel!r}; expected one of "
                f"{', '.join(FREQ_TABLES)} or a sequence of (u, v) pairs"
            )
        pairs = list(FREQ_TABLES[freq_sel])
    else:
        pairs = [tuple(p) for p in freq_sel]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise InputError(f"{owner}: freq_sel must be a non-empty sequence of (u, v) pairs, "
                             f"got {freq_sel!r}")
        for u, v in pairs:
            if not (isinstance(u, int) and isinstance(v, int) and 0 <= u < TABLE_GRID
                    and 0 <= v < TABLE_GRID):
                raise InputError(f"{owner}: a frequency (u, v) must be ints in [0, {TABLE_GRID}) "
                                 f"on the 7 x 7 grid, got {(u, v)!r}")
    sh, sw = dct_h // TABLE_GRID, dct_w // TABLE_GRID
    return [(u * sh, v * sw) for u, v in pairs]


def dct_basis_1d(freq: int, size: int) -> list[float]:
    """The orthonormal DCT-II basis vector of ``freq`` on ``size`` points:
    b_k(t) = s_k cos(pi k (t + 1/2) / N), s_0 = 1/sqrt(N), s_k = sqrt(2/N)."""
    scale = math.sqrt((1.0 if freq == 0 else 2.0) / size)
    return [scale * math.cos(math.pi * freq * (t + 0.5) / size) for t in range(size)]


def _stage_grid(stage: Stage) -> dict:
    """FcaNet's DCT grid in a stage: the stage's feature size (the official c2wh: 56, 28, 14, 7
    at 224 x 224), at least the tables' 7 x 7 (smaller maps are pooled up to it)."""
    if stage.size is None:
        return {}
    return {"dct_h": max(TABLE_GRID, stage.size[0]), "dct_w": max(TABLE_GRID, stage.size[1])}


@register("fca", title="Multi-spectral channel attention (FcaNet)",
          paper="FcaNet: Frequency Channel Attention Networks (ICCV 2021, arXiv:2012.11879)",
          year=2021, kind="channel", stage_kwargs=_stage_grid,
          placement_note="every block; the DCT grid of each stage is its feature size at the model's "
                         "input size (official model/fcanet.py, c2wh = 56/28/14/7 at 224), at least 7 x 7")
class FrequencyChannelAttention(AttentionModule):
    """y = x * sigmoid(W2 relu(W1 [sum_{h,w} x_c B_{g(c)}(h, w)]_c)): SE on multi-spectral pooling.

    The channels are split into n consecutive groups (n = the number of selected frequencies,
    16 by default); group i is pooled with the 2D DCT-II basis function of frequency (u_i, v_i),
    B(h, w) = b_u(h) b_v(w) (orthonormal 1-D bases, as in the official code), on a dct_h x dct_w
    grid. The bases are a fixed buffer (``dct_weight``, one (dct_h, dct_w) map per channel), not
    parameters. Inputs of another size are adaptive-average-pooled to dct_h x dct_w first (always
    applied: at the grid's own size it is the identity). The frequency (0, 0) pools
    sum(x) / sqrt(dct_h dct_w) = sqrt(dct_h dct_w) * GAP(x): with ``freq_sel="top1"`` the module
    is a bias-free SE on a scaled GAP.

    The tables (``top``, ``low``, ``bot`` with 1, 2, 4, 8, 16, 32 frequencies) are the official
    code's, given on a 7 x 7 grid and scaled by dct_h // 7 and dct_w // 7. The excitation is the
    official code's: two fully-connected layers without bias, hidden width C // r.

    ``channels`` must be a multiple of 16 (the default 16 groups; a ValueError otherwise), and of
    the number of frequencies where that is larger (32 for the ``*32`` tables). The official
    ImageNet models set dct_h = dct_w to the stage's feature size (56, 28, 14, 7); the default
    here is 7 x 7.

    Args:
        channels: input channels C, a multiple of 16.
        rd_ratio: 1/r (default 1/16); rd_channels: the hidden width, overriding it.
        dct_h, dct_w: the DCT grid (default 7 x 7; at least 7, the tables' grid).
        freq_sel: a table name (default ``"top16"``) or a sequence of (u, v) pairs on the 7 x 7
            grid.
        act_layer: default ``"relu"``; gate_layer: default ``"sigmoid"``.
    """

    channel_multiple = 16

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 dct_h: int = 7, dct_w: int = 7,
                 freq_sel: str | Sequence[tuple[int, int]] = "top16",
                 act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(dct_h, "dct_h", owner)
        check_positive_int(dct_w, "dct_w", owner)
        if dct_h < TABLE_GRID or dct_w < TABLE_GRID:
            raise InputError(
                f"{owner}: dct_h and dct_w must be >= {TABLE_GRID} (the frequency tables are "
                f"given on a 7 x 7 grid and scaled by dct_h // 7), got {dct_h} x {dct_w}"
            )
        freqs = frequency_indices(freq_sel, dct_h, dct_w, owner=owner)
        n = len(freqs)
        if channels % n:
            raise InputError(
                f"{owner}: channels must be a multiple of the number of frequencies "
                f"({n} for freq_sel={freq_sel!r}), got {channels}"
            )
        self.dct_h, self.dct_w = dct_h, dct_w
        self.freq_sel = freq_sel if isinstance(freq_sel, str) else "custom"
        self.frequencies = freqs
        self.register_buffer("dct_weight", self._dct_filters(freqs, channels, dct_h, dct_w))
        hidden = reduced_channels(channels, rd_ratio, rd_channels, owner=owner)
        self.rd_channels = hidden
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.act = create_act(act_layer, owner=owner)
        self.fc2 = nn.Linear(hidden, channels, bias=False)
        self.gate = create_act(gate_layer, owner=owner)

    @staticmethod
    def _dct_filters(freqs: list[tuple[int, int]], channels: int, h: int, w: int) -> torch.Tensor:
        """(C, h, w): channel c holds the basis of its group's frequency."""
        per_group = channels // len(freqs)
        maps = []
        for u, v in freqs:
            bu = torch.tensor(dct_basis_1d(u, h), dtype=torch.float64)
            bv = torch.tensor(dct_basis_1d(v, w), dtype=torch.float64)
            maps.append(torch.outer(bu, bv).expand(per_group, h, w))
        return torch.cat(maps, 0).float()  # (C, h, w)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel factor, (B, C, 1, 1)."""
        b, c = x.shape[:2]
        h, w = x.shape[2], x.shape[3]
        basis = self.dct_weight.to(x.dtype)  # (C, dct_h, dct_w)
        kh, kw = h // self.dct_h, w // self.dct_w
        if (h, w) == (self.dct_h, self.dct_w):
            # adaptive pooling to the same size is the identity (and slow on CPU)
            y = (x * basis).sum((2, 3))  # (B, C): one DCT coefficient per channel
        elif h == kh * self.dct_h and w == kw * self.dct_w and kh * kw <= 4:
            # block means times the basis = x times the basis repeated over each block / (kh kw):
            # one pass over x instead of ATen's CPU pooling, ~8x faster at 14x14 -> 7x7
            up = basis.repeat_interleave(kh, 1).repeat_interleave(kw, 2)  # (C, H, W)
            y = (x * up).sum((2, 3)) / (kh * kw)
        else:
            pooled = F.adaptive_avg_pool2d(x, (self.dct_h, self.dct_w))  # (B, C, dct_h, dct_w)
            y = (pooled * basis).sum((2, 3))
        y = self.fc2(self.act(self.fc1(y)))
        return self.gate(y).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"dct=({self.dct_h}, {self.dct_w}), freq_sel={self.freq_sel!r}")
