"""GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond (Cao, Xu, Lin, Wei, Hu;
ICCV Workshops 2019, https://arxiv.org/abs/1904.11492; extended as Global Context Networks, TPAMI
2020, https://arxiv.org/abs/2012.13375): the global context (GC) block, with the transform's output
added to every position (``gc``, the paper's block) or used as a sigmoid gate (``gca``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, create_act, reduced_channels
from ..registry import register

__all__ = ["ChannelLayerNorm", "GlobalContext", "GlobalContextGate"]

_PAPER = ("GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond (ICCV Workshops 2019, "
          "arXiv:1904.11492)")
_FUSIONS = ("add", "mul", "both")
_POOLINGS = ("att", "avg")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) tensor at each position, with a weight and a
    bias per channel: GCNet's ``LayerNorm([C', 1, 1])`` on the (B, C', 1, 1) context.

    Args:
        num_channels: C.
        eps: added to the variance (default 1e-5, ``nn.LayerNorm``'s as in the official code;
            timm's ``LayerNorm2d`` uses 1e-6).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def _transform(channels: int, hidden: int, norm_layer: Callable[[int], nn.Module] | None,
               act_layer: LayerSpec, owner: str) -> nn.Sequential:
    """The bottleneck transform: 1x1 conv C -> C', LayerNorm, ReLU, 1x1 conv C' -> C (with biases)."""
    norm = ChannelLayerNorm(hidden) if norm_layer is None else norm_layer(hidden)
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), norm, create_act(act_layer, owner=owner),
                         nn.Conv2d(hidden, channels, 1))


def _c3_to_c5(stage):
    """GCNet's ResNet-50: GC blocks in the stages c3 to c5 (layer2-4), none in c2; backbones of
    another depth get one per block of every stage."""
    return None if stage.num_stages == 4 and stage.first else {}


_GC_NOTE = ("per block after the last 1x1 convolution and its BN, before the addition, in stages "
            "c3-c5 of a four-stage ResNet (GCNet's Table 3 'after 1x1, c3-c5'); every stage elsewhere")


@register("gc", title="Global Context block", paper=_PAPER, year=2019, kind="communication",
          stage_kwargs=_c3_to_c5, placement_note=_GC_NOTE)
class GlobalContext(AttentionModule):
    """y = x + W2 ReLU(LN(W1 c)), c = sum_j softmax_j(w_k . x_j) x_j: attention pooling, transform,
    fusion by addition.

    The GC block of GCNet. Context modelling: a 1x1 convolution (C -> 1, with bias) gives one logit
    per position, a softmax over the H x W positions turns them into weights, and the context c
    (B, C, 1, 1) is the weighted sum of the positions' features. Transform: a bottleneck of 1x1
    convolutions C -> C/r -> C with LayerNorm and ReLU between. Fusion: the transform's output is
    added to the features at every position (the paper's block; ``fusion="mul"`` multiplies by
    its sigmoid instead, and ``"both"`` does the multiplication, then the addition, as the
    official ``fusion_types=("channel_mul", "channel_add")``).

    The output is not a gate on the input (it adds a term per (b, c)), so the kind is
    ``communication``: a message computed from every position, passed through the channels and
    added back. Initialisation as the official code: the logit convolution Kaiming-normal (fan-in),
    the last convolution of each transform zero (weight and bias), so that the block starts as the
    identity (``fusion="add"``) or as x / 2 (``"mul"``: sigmoid(0) = 1/2).

    Departures from timm's ``GlobalContext`` (``create_attn("gc")`` is its sigmoid gate, our
    ``gca``; ``create_attn("gca")`` its addition, our ``gc``): the hidden width is the official
    ``int(C / r)`` with r = 16 (timm: ``C / 8`` rounded to the nearest integer; ``rd_divisor=1``
    rounds as timm); the LayerNorm's epsilon is 1e-5 (timm's ``LayerNorm2d``: 1e-6); both
    transforms start with their last convolution at zero (timm zeroes the weight of the addition's
    only, and ignores its own ``init_last_zero`` argument).

    Args:
        channels: input channels C.
        rd_ratio: 1/r (default 1/16, the paper's ImageNet and COCO r16 models); rd_channels: the
            hidden width C', overriding it; rd_divisor: round C' as timm does (default ``None``:
            ``int(C / r)``, at least 1).
        act_layer: between the transform's layers (default ``"relu"``).
        norm_layer: a callable ``f(C')`` returning the norm after the first layer (default
            ``None``: :class:`ChannelLayerNorm` with eps 1e-5).
        gate_layer: the gate of the ``"mul"`` fusion (default ``"sigmoid"``).
        fusion: ``"add"`` (default), ``"mul"`` or ``"both"``.
        pooling: ``"att"`` (default, attention pooling) or ``"avg"`` (global average pooling, the
            official code's other option: then the block is SE-like context modelling).
        zero_init_last: start the last convolution of each transform at zero (default True).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int | None = None, act_layer: LayerSpec = "relu",
                 norm_layer: Callable[[int], nn.Module] | None = None, gate_layer: LayerSpec = "sigmoid",
                 fusion: str = "add", pooling: str = "att", zero_init_last: bool = True) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if fusion not in _FUSIONS:
            raise InputError(f"{owner}: fusion must be one of {_FUSIONS}, got {fusion!r}")
        if pooling not in _POOLINGS:
            raise InputError(f"{owner}: pooling must be one of {_POOLINGS}, got {pooling!r}")
        self.fusion = fusion
        self.pooling = pooling
        self.rd_channels = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor, owner=owner)
        self.conv_mask = nn.Conv2d(channels, 1, 1) if pooling == "att" else None
        # the addition's transform registered first, as the official code and timm
        self.channel_add = (_transform(channels, self.rd_channels, norm_layer, act_layer, owner)
                            if fusion in ("add", "both") else None)
        self.channel_mul = (_transform(channels, self.rd_channels, norm_layer, act_layer, owner)
                            if fusion in ("mul", "both") else None)
        self.gate = create_act(gate_layer, owner=owner) if self.channel_mul is not None else None
        self.reset_parameters(zero_init_last)

    def reset_parameters(self, zero_init_last: bool = True) -> None:
        """The official initialisation (see the class docstring)."""
        if self.conv_mask is not None:
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        for transform in (self.channel_add, self.channel_mul):
            if transform is not None and zero_init_last:
                nn.init.zeros_(transform[-1].weight)
                nn.init.zeros_(transform[-1].bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The global context c, (B, C, 1, 1): the softmax-weighted sum of the positions (or their
        mean with ``pooling="avg"``)."""
        b, c, h, w = x.shape
        if self.conv_mask is None:
            return x.mean((2, 3), keepdim=True)
        weights = self.conv_mask(x).view(b, h * w, 1).softmax(1)  # (B, HW, 1): sums to 1 over HW
        return torch.bmm(x.reshape(b, c, h * w), weights).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        c = self.context(x)
        out = x
        if self.channel_mul is not None:
            out = out * self.gate(self.channel_mul(c))
        if self.channel_add is not None:
            out = out + self.channel_add(c)
        return out

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, fusion={self.fusion!r}, "
                f"pooling={self.pooling!r}")


@register("gca", title="Global Context attention (sigmoid gate)", paper=_PAPER, year=2019, kind="channel",
          stage_kwargs=_c3_to_c5, placement_note=_GC_NOTE)
class GlobalContextGate(GlobalContext):
    """y = x * sigmoid(W2 ReLU(LN(W1 c))), c the attention-pooled context: GC with fusion by
    multiplication.

    :class:`GlobalContext` with ``fusion="mul"``: the transform of the attention-pooled context
    gates the channels, as SE's excitation does (the official code's ``channel_mul`` fusion; timm's
    ``GlobalContext`` default, which timm's ``create_attn`` calls ``"gc"``). One factor per
    (b, c): a channel module.

    Args:
        channels, rd_ratio, rd_channels, rd_divisor, act_layer, norm_layer, gate_layer, pooling,
        zero_init_last: as :class:`GlobalContext` (defaults r = 16, ReLU, LayerNorm with eps 1e-5,
        sigmoid, attention pooling, the last convolution at zero: the gate starts at 1/2, as the
        official ``last_zero_init``; ``zero_init_last=False`` keeps PyTorch's initialisation, as
        timm does).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int | None = None, act_layer: LayerSpec = "relu",
                 norm_layer: Callable[[int], nn.Module] | None = None, gate_layer: LayerSpec = "sigmoid",
                 pooling: str = "att", zero_init_last: bool = True) -> None:
        super().__init__(channels, rd_ratio, rd_channels, rd_divisor, act_layer, norm_layer, gate_layer,
                         fusion="mul", pooling=pooling, zero_init_last=zero_init_last)
