"""CBAM: Convolutional Block Attention Module (Woo, Park, Lee, Kweon; ECCV 2018,
https://arxiv.org/abs/1807.06521): channel attention, spatial attention, and both in sequence."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..functional import (
    apply_spatial_gate,
    avg_max_pool_channels,
    avg_max_pool_space,
    conv2d_few_channels,
    eager_fast_path,
    grad_needed,
    linear_1x1,
    scale_then_avg_max_pool_channels,
)
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..native import cbam_forward
from ..registry import register
from .se import SqueezeExcite

__all__ = ["CBAM", "CBAMChannelAttention", "CBAMSpatialAttention"]

_PAPER = "CBAM: Convolutional Block Attention Module (ECCV 2018, arXiv:1807.06521)"


@register("cbam_channel", title="CBAM channel attention", paper=_PAPER, year=2018,
          kind="channel")
class CBAMChannelAttention(SqueezeExcite):
    """y = x * sigmoid(MLP(GAP(x)) + MLP(GMP(x))), one MLP C -> C/r -> C shared by both poolings.

    The MLP is SE's (:class:`~chanattn.modules.se.SqueezeExcite`: ``fc1``, ``act``, ``fc2``,
    ``gate``, same arguments and defaults); CBAM feeds it the max-pooled descriptor as well.

    Args:
        channels: input channels C.
        rd_ratio: 1/r (default 1/16); rd_channels: the hidden width, overriding it;
        rd_divisor: round the hidden width as timm does (default ``None``: ``C // r``).
        act_layer: default ``"relu"``; gate_layer: default ``"sigmoid"``.
        bias: the MLP has biases (default True: the official code's ``nn.Linear``; timm's
            ``CbamModule`` defaults to ``mlp_bias=False``).

    ``forward``: without autograd, on float32 NCHW CPU tensors with the default ReLU and sigmoid,
    the native kernel (:mod:`chanattn.native`: both poolings in one read, then the rescale, sample
    by sample); otherwise the two poolings chunk by chunk (the second reads from cache), the max
    over short rows by overlapping windows, the MLP as matrix products (:mod:`chanattn.functional`).
    ``forward_reference`` is the plain formula. Training saves x, the (B, C) maxima and the gate.
    """

    def excite_pooled(self, avg: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        """The channel factor (B, C, 1, 1) from the two pooled descriptors, each (B, C)."""
        b = avg.shape[0]
        # Both poolings go through the shared MLP as one batch of 2B, as matrix products.
        pooled = torch.cat([avg, mx], 0)
        # under autograd the convolutions themselves: in CBAM the spatial stage's BatchNorm would
        # amplify the matrix products' different rounding
        h = self.act(linear_1x1(self.fc1, pooled, exact_under_grad=True).view(2 * b, -1, 1, 1))
        s = linear_1x1(self.fc2, h.flatten(1), exact_under_grad=True)  # (2B, C)
        return self.gate((s[:b] + s[b:]).view(b, -1, 1, 1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel factor, (B, C, 1, 1); both poolings in one pass over ``x`` where it can."""
        return self.excite_pooled(*avg_max_pool_space(x))

    def native_args(self) -> dict | None:
        """The MLP as the native kernel takes it (:func:`chanattn.native.cbam_forward`), or None
        where the kernel does not compute this configuration (an activation other than ReLU, a
        gate other than the sigmoid)."""
        if type(self.act) is not nn.ReLU or type(self.gate) is not nn.Sigmoid:
            return None
        return {"fc1_weight": self.fc1.weight, "fc1_bias": self.fc1.bias,
                "fc2_weight": self.fc2.weight, "fc2_bias": self.fc2.bias}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not grad_needed(x, self) and eager_fast_path():
            args = self.native_args()
            out = None if args is None else cbam_forward(x, conv_weight=None, **args)
            if out is not None:
                return out
        return x * self.attention(x)

    def attention_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula of the channel factor: mean and max over H, W, the shared MLP of 1x1
        convolutions, the sum, the gate."""
        pooled = [x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)]
        s = [self.fc2(self.act(self.fc1(p))) for p in pooled]
        return self.gate(s[0] + s[1])

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula, for tests."""
        self._check_input(x)
        return x * self.attention_reference(x)


@register("cbam_spatial", title="CBAM spatial attention", paper=_PAPER, year=2018,
          kind="spatial")
class CBAMSpatialAttention(AttentionModule):
    """y = x * sigmoid(BN(conv7x7([mean_c(x); max_c(x)]))): one factor per position.

    The 2 -> 1 convolution has no bias and is followed by BatchNorm, as in the official code (the
    paper does not mention the BN; ``norm=False`` drops it).

    Args:
        channels: input channels C (the module's parameters do not depend on it).
        kernel_size: the convolution's odd kernel (default 7).
        norm: BatchNorm after the convolution (default True).
        gate_layer: default ``"sigmoid"``.

    ``forward``: without autograd, on float32 NCHW CPU tensors with BN in eval mode and the
    sigmoid gate, the native kernel (:mod:`chanattn.native`: the mean and the max over C in one
    read, the convolution and the rescale, sample by sample while it is in cache). Otherwise the
    two poolings chunk by chunk (each chunk pooled twice while in cache; the whole batch where it
    fits in cache), and on CPU the 2 -> 1 convolution as a depthwise one with the batch folded into
    the channels, without autograd. Training saves x, the
    (B, 2, H, W) pooled map (an autograd Function recomputes the max's positions from it) and the
    gate. ``forward_reference`` is the plain formula.
    """

    def __init__(self, channels: int, kernel_size: int = 7, norm: bool = True,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.norm = norm
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1) if norm else nn.Identity()
        self.gate = create_act(gate_layer, owner=owner)

    def excite_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The spatial factor (B, 1, H, W) from [mean_C; max_C], (B, 2, H, W)."""
        if self.norm:
            self._require_batch_stats(pooled.shape[0] * pooled.shape[2] * pooled.shape[3])
        return self.gate(self.bn(conv2d_few_channels(self.conv, pooled)))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial factor, (B, 1, H, W); both poolings over C in one pass over ``x``."""
        return self.excite_pooled(avg_max_pool_channels(x))

    def native_args(self) -> dict | None:
        """The convolution and the BatchNorm as the native kernel takes them, or None where it
        does not compute this configuration (a gate other than the sigmoid, a convolution with a
        bias; the kernel itself declines BN in training mode)."""
        if type(self.gate) is not nn.Sigmoid or self.conv.bias is not None:
            return None
        return {"conv_weight": self.conv.weight, "bn": self.bn if self.norm else None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not grad_needed(x, self) and eager_fast_path():
            args = self.native_args()
            out = None if args is None else cbam_forward(x, None, None, None, None, **args)
            if out is not None:
                return out
        return x * self.attention(x)

    def attention_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula of the spatial factor."""
        if self.norm:
            self._require_batch_stats(x.shape[0] * x.shape[2] * x.shape[3])
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)  # (B, 2, H, W)
        return self.gate(self.bn(self.conv(pooled)))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula, for tests."""
        self._check_input(x)
        return x * self.attention_reference(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, norm={self.norm}"


@register("cbam", title="CBAM", paper=_PAPER, year=2018, kind="hybrid")
class CBAM(AttentionModule):
    """y = S(C(x)): channel attention, then spatial attention on its output.

    Args:
        channels: input channels C.
        rd_ratio, rd_channels, rd_divisor, act_layer, bias: of the channel attention
            (:class:`CBAMChannelAttention`).
        kernel_size, norm: of the spatial attention (:class:`CBAMSpatialAttention`).
        gate_layer: the gate of both (default ``"sigmoid"``).

    ``forward`` without autograd: on float32 NCHW CPU tensors (ReLU and sigmoid, BN in eval mode),
    the native kernel of :mod:`chanattn.native`: per sample, pool over H and W, the MLP, pool
    x * channel_gate over C, the 7x7 convolution, and write the output, all while the sample is
    in cache (about one read and one write of the tensor from memory; the output is the only
    full-size tensor). Elsewhere (other dtypes, channels_last, GPUs, no C compiler),
    y = x * channel_gate is written once, pooled over C chunk by chunk while in cache, and
    multiplied by the spatial gate in place. With autograd, two Functions
    (:func:`chanattn.functional.scale_then_avg_max_pool_channels`,
    :func:`~chanattn.functional.apply_spatial_gate`) save x, the channel gate, the (B, 2, H, W)
    pooled map and the spatial gate, not y: about 1x the input where the plain formula
    (``forward_reference``) keeps 2x.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int | None = None, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid", bias: bool = True, kernel_size: int = 7,
                 norm: bool = True) -> None:
        super().__init__(channels)
        self.channel = CBAMChannelAttention(channels, rd_ratio, rd_channels, rd_divisor,
                                            act_layer, gate_layer, bias)
        self.spatial = CBAMSpatialAttention(channels, kernel_size, norm, gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        grad = grad_needed(x, self)
        if not grad and eager_fast_path():
            # The native kernel (chanattn.native), where it is built and takes this configuration.
            ch, sp = self.channel.native_args(), self.spatial.native_args()
            out = None if ch is None or sp is None else cbam_forward(x, **ch, **sp)
            if out is not None:
                return out
        cg = self.channel.attention(x)  # (B, C, 1, 1)
        # y = x * cg and its two poolings over C, chunk by chunk while in cache.
        pooled, y = scale_then_avg_max_pool_channels(x, cg, grad)
        sg = self.spatial.excite_pooled(pooled)  # (B, 1, H, W)
        # y * sg: in place without autograd; with it, saving x, cg and sg rather than y.
        return apply_spatial_gate(x, cg, sg, y, grad)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula, for tests: channel attention, then spatial attention on its output."""
        self._check_input(x)
        x = x * self.channel.attention_reference(x)
        return x * self.spatial.attention_reference(x)
