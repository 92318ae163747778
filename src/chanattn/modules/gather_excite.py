"""Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks (Hu, Shen, Albanie,
Sun, Vedaldi; NeurIPS 2018, https://arxiv.org/abs/1810.12348): GE-θ-, GE-θ and GE-θ+."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, create_act, reduced_channels
from ..registry import Stage, register

__all__ = ["GatherExcite", "GatherExciteTheta", "GatherExciteThetaMinus", "GatherExciteThetaPlus"]

_PAPER = ("Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks "
          "(NeurIPS 2018, arXiv:1810.12348)")


def _pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class GatherExcite(AttentionModule):
    """y = x * sigmoid(upsample(excite(gather(x)))), the gather pooling over a neighbourhood of
    ``extent`` (0 = the whole map) and the result spread back by nearest upsampling.

    Gather, by ``parametric_gather``:
      - False (GE-θ-): average pooling, kernel 2e-1, stride e, padding e-1, padding not counted,
        which gives ceil(H/e) x ceil(W/e); global extent: the mean over H x W.
      - True (GE-θ, GE-θ+): log2(e) depthwise 3x3 stride-2 convolutions, each followed by BN, with
        ReLU between them and none after the last; global extent: one depthwise convolution with
        a kernel of the whole H x W (the input size is fixed: ``spatial_size``) and BN.
    Excite, by ``mlp``: none (GE-θ-, GE-θ) or SE's 1x1 conv C -> C/16 -> C with ReLU (GE-θ+).

    The seed's GE-θ snippet builds its gather as ``n * [conv, bn, relu]``, which repeats the same
    layer objects and so shares their weights across steps; here each step has its own layers.
    Its GE-θ- snippet tests an undefined ``extent_ratio``; here ``extent=0`` means global.

    Args:
        channels: input channels C.
        extent: e; 0 for a global extent. With ``parametric_gather``, a power of two.
        parametric_gather: depthwise convolutions instead of average pooling.
        mlp: an SE-style excite before the upsampling (GE-θ+).
        spatial_size: (H, W) of the input, needed for a global parametric gather.
        rd_ratio, rd_channels: the MLP's reduction (default 1/16).
        act_layer: default ``"relu"``; gate_layer: default ``"sigmoid"``.
    """

    def __init__(self, channels: int, extent: int = 0, parametric_gather: bool = False,
                 mlp: bool = False, spatial_size: int | tuple[int, int] | None = None,
                 rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0:
            raise InputError(f"{owner}: extent must be an int >= 0 (0 = global), got {extent!r}")
        self.extent = extent
        self.parametric_gather = parametric_gather
        self.spatial_size = _pair(spatial_size)
        self.gather: nn.Module | None = None

        if parametric_gather:
            if extent == 0:
                if self.spatial_size is None or min(self.spatial_size) < 1:
                    raise InputError(
                        f"{owner}: a global extent with a parametric gather needs "
                        f"spatial_size=(H, W) of the input, got {spatial_size!r}"
                    )
                self.gather = nn.Sequential(
                    nn.Conv2d(channels, channels, self.spatial_size, groups=channels, bias=False),
                    nn.BatchNorm2d(channels),
                )
            else:
                steps = round(math.log2(extent)) if extent >= 2 else -1
                if steps < 1 or 2 ** steps != extent:
                    raise InputError(
                        f"{owner}: with a parametric gather, extent must be 0 or a power of two "
                        f">= 2, got {extent}"
                    )
                layers: list[nn.Module] = []
                for i in range(steps):
                    if i > 0:
                        layers.append(create_act(act_layer, owner=owner))
                    layers += [
                        nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels,
                                  bias=False),
                        nn.BatchNorm2d(channels),
                    ]
                self.gather = nn.Sequential(*layers)

        self.mlp: nn.Module | None = None
        if mlp:
            hidden = reduced_channels(channels, rd_ratio, rd_channels, owner=owner)
            self.mlp = nn.Sequential(
                nn.Conv2d(channels, hidden, 1),
                create_act(act_layer, owner=owner),
                nn.Conv2d(hidden, channels, 1),
            )
        self.gate = create_act(gate_layer, owner=owner)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        e = self.extent
        if self.gather is None:
            if e == 0:
                return x.mean((2, 3), keepdim=True)
            return F.avg_pool2d(x, 2 * e - 1, stride=e, padding=e - 1, count_include_pad=False)
        if e == 0:
            if self.spatial_size is not None and (h, w) != self.spatial_size:
                raise InputError(
                    f"{self._label()} has a global parametric gather built for inputs of "
                    f"H x W = {self.spatial_size[0]} x {self.spatial_size[1]}, got {h} x {w}"
                )
            self._require_batch_stats(x.shape[0])
        else:
            self._require_batch_stats(x.shape[0] * math.ceil(h / e) * math.ceil(w / e))
        return self.gather(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        g = self._gather(x)  # (B, C, ceil(H/e), ceil(W/e)), or (B, C, 1, 1) when global
        if self.mlp is not None:
            g = self.mlp(g)
        if g.shape[2] != 1 or g.shape[3] != 1:
            g = F.interpolate(g, size=(x.shape[2], x.shape[3]), mode="nearest")
        return x * self.gate(g)

    def extra_repr(self) -> str:
        size = f", spatial_size={self.spatial_size}" if self.spatial_size else ""
        return f"channels={self.channels}, extent={self.extent}{size}"


def _global_extent(stage: Stage) -> dict:
    """The global extent of the paper's headline GE-θ and GE-θ+ models: a depthwise gather over
    the whole map of each stage (its feature size at the model's input size)."""
    if stage.size is None:
        return {}
    return {"extent": 0, "spatial_size": tuple(stage.size)}


_GLOBAL_NOTE = ("every block, with the global extent of the paper's headline models (Table 3: "
                "GE-θ/GE-θ+ ResNet-50): the gather's kernel is each stage's feature size at the model's "
                "input size, so the model takes that input size only")


@register("ge_theta_minus", title="Gather-Excite θ-", paper=_PAPER, year=2018, kind="hybrid",
          placement_note="every block, global extent (the module's default)")
class GatherExciteThetaMinus(GatherExcite):
    """GE-θ-: no parameters; y = x * sigmoid(upsample(avgpool_e(x))).

    With the default global extent (``extent=0``) it equals ``se_var1``: x * sigmoid(GAP(x)).
    See :class:`GatherExcite` for the arguments.
    """

    def __init__(self, channels: int, extent: int = 0, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels, extent=extent, gate_layer=gate_layer)


@register("ge_theta", title="Gather-Excite θ", paper=_PAPER, year=2018, kind="hybrid",
          stage_kwargs=_global_extent, placement_note=_GLOBAL_NOTE)
class GatherExciteTheta(GatherExcite):
    """GE-θ: a gather of depthwise strided convolutions; y = x * sigmoid(upsample(gather(x))).

    The default extent is 8, the largest local extent of the paper's tables: the global extent
    (``extent=0``) fixes the input size and needs ``spatial_size``. See :class:`GatherExcite`.
    """

    def __init__(self, channels: int, extent: int = 8,
                 spatial_size: int | tuple[int, int] | None = None,
                 act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels, extent=extent, parametric_gather=True,
                         spatial_size=spatial_size, act_layer=act_layer, gate_layer=gate_layer)


@register("ge_theta_plus", title="Gather-Excite θ+", paper=_PAPER, year=2018, kind="hybrid",
          stage_kwargs=_global_extent, placement_note=_GLOBAL_NOTE)
class GatherExciteThetaPlus(GatherExcite):
    """GE-θ+: GE-θ's gather and an SE-style excite (1x1 convs C -> C/16 -> C, with bias) before
    the upsampling. Default extent 8, as :class:`GatherExciteTheta`."""

    def __init__(self, channels: int, extent: int = 8,
                 spatial_size: int | tuple[int, int] | None = None, rd_ratio: float = 1 / 16,
                 rd_channels: int | None = None, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels, extent=extent, parametric_gather=True, mlp=True,
                         spatial_size=spatial_size, rd_ratio=rd_ratio, rd_channels=rd_channels,
                         act_layer=act_layer, gate_layer=gate_layer)
