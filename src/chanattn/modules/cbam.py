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

#: ``pool_order`` of the spatial attention: the paper's [mean; max], the official code's [max; mean]
POOL_ORDERS = ("mean_max", "max_mean")

_INIT_NOTE = ("per block on the residual branch after the last BN (the paper's Fig. 3); in a model the "
              "spatial BN's weight starts at 0, as the official ResidualNet initialises it "
              "(zero_init_spatial_bn=True; attn_kwargs can turn it off)")


def _official_init(stage) -> dict:
    """In every stage: the official ResidualNet's initialisation of the spatial gate's BN weight
    to 0 (MODELS/model_resnet.py of Jongchan/attention-module)."""
    return {"zero_init_spatial_bn": True}


def _check_choice(value, what: str, choices: tuple[str, ...], owner: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{owner}: {what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_bool(value, what: str, owner: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{owner}: {what} must be True or False, got {value!r}")
    return value


def _check_momentum(value, owner: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(f"{owner}: bn_momentum must be a number in [0, 1] or None, got {value!r}")
    return float(value)


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
          kind="spatial", stage_kwargs=_official_init, placement_note=_INIT_NOTE)
class CBAMSpatialAttention(AttentionModule):
    """y = x * sigmoid(BN(conv7x7([mean_c(x); max_c(x)]))): one factor per position.

    The 2 -> 1 convolution has no bias and is followed by BatchNorm, as in the official code (the
    paper does not mention the BN; ``norm=False`` drops it).

    Paper and official code (Jongchan/attention-module, MODELS/cbam.py and MODELS/model_resnet.py):

    - pool order: the paper stacks [mean; max] (Sec. 3, "Spatial attention module"); the official
      ``ChannelPool`` stacks [max; mean]. Default the paper's, ``pool_order="mean_max"``;
      ``"max_mean"`` is the official code's, whose 7x7 weights then load unchanged (the same
      module with the convolution's two input channels swapped).
    - BN momentum: the official ``BasicConv`` builds this BN with ``momentum=0.01`` (PyTorch's
      default, and timm's, is 0.1). Default 0.01, the official code's: the BN is the official
      code's addition (the paper has none), so its settings are the official ones; the running
      statistics that eval mode uses move 10x slower per step than with 0.1.
    - BN weight init: the official ``ResidualNet`` sets this BN's weight to 0 (the gate starts at
      sigmoid(0) = 1/2 everywhere); ``zero_init_spatial_bn=True`` does that. Default False here
      (PyTorch's weight 1); :func:`chanattn.create_model` and :func:`chanattn.attach` pass True
      (the registry's ``stage_kwargs``), as the official ResNets, unless ``attn_kwargs`` says
      ``zero_init_spatial_bn=False``. Without a BN (``norm=False``) it has nothing to set.

    Args:
        channels: input channels C (the module's parameters do not depend on it).
        kernel_size: the convolution's odd kernel (default 7).
        norm: BatchNorm after the convolution (default True).
        gate_layer: default ``"sigmoid"``.
        bn_momentum: the BN's momentum (default 0.01, the official code's; None: a cumulative
            average, as ``nn.BatchNorm2d``).
        pool_order: ``"mean_max"`` (default, the paper's) or ``"max_mean"`` (the official code's).
        zero_init_spatial_bn: start the BN's weight at 0 (default False; see above).

    ``forward``: without autograd, on float32 NCHW CPU tensors with BN in eval mode and the
    sigmoid gate, the native kernel (:mod:`chanattn.native`: the mean and the max over C in one
    read, the convolution and the rescale, sample by sample while it is in cache). Otherwise the
    two poolings chunk by chunk (each chunk pooled twice while in cache; the whole batch where it
    fits in cache), and on CPU the 2 -> 1 convolution as a depthwise one with the batch folded into
    the channels, without autograd. Training saves x, the
    (B, 2, H, W) pooled map (an autograd Function recomputes the max's positions from it) and the
    gate. ``forward_reference`` is the plain formula. With ``pool_order="max_mean"`` the fast paths
    pool [mean; max] as always and swap the convolution's input channels (the native kernel) or
    the pooled map's two channels.
    """

    def __init__(self, channels: int, kernel_size: int = 7, norm: bool = True,
                 gate_layer: LayerSpec = "sigmoid", bn_momentum: float | None = 0.01,
                 pool_order: str = "mean_max", zero_init_spatial_bn: bool = False) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.norm = norm
        self.bn_momentum = _check_momentum(bn_momentum, owner)
        self.pool_order = _check_choice(pool_order, "pool_order", POOL_ORDERS, owner)
        self.zero_init_spatial_bn = _check_bool(zero_init_spatial_bn, "zero_init_spatial_bn", owner)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, momentum=self.bn_momentum) if norm else nn.Identity()
        if norm and self.zero_init_spatial_bn:
            nn.init.zeros_(self.bn.weight)
        self.gate = create_act(gate_layer, owner=owner)

    def excite_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The spatial factor (B, 1, H, W) from [mean_C; max_C], (B, 2, H, W), in that order
        whatever ``pool_order`` (swapped here for ``"max_mean"``)."""
        if self.norm:
            self._require_batch_stats(pooled.shape[0] * pooled.shape[2] * pooled.shape[3])
        if self.pool_order == "max_mean":
            pooled = pooled.flip(1)  # [max_C; mean_C], (B, 2, H, W)
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
        weight = self.conv.weight  # (1, 2, K, K); the kernel pools [mean; max]
        if self.pool_order == "max_mean":
            weight = weight.flip(1)
        return {"conv_weight": weight, "bn": self.bn if self.norm else None}

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
        mean, mx = x.mean(1, keepdim=True), x.amax(1, keepdim=True)
        pooled = torch.cat([mean, mx] if self.pool_order == "mean_max" else [mx, mean], 1)  # (B, 2, H, W)
        return self.gate(self.bn(self.conv(pooled)))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula, for tests."""
        self._check_input(x)
        return x * self.attention_reference(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, norm={self.norm}, "
                f"bn_momentum={self.bn_momentum}, pool_order={self.pool_order!r}")


@register("cbam", title="CBAM", paper=_PAPER, year=2018, kind="hybrid", stage_kwargs=_official_init,
          placement_note=_INIT_NOTE)
class CBAM(AttentionModule):
    """y = S(C(x)): channel attention, then spatial attention on its output.

    Args:
        channels: input channels C.
        rd_ratio, rd_channels, rd_divisor, act_layer, bias: of the channel attention
            (:class:`CBAMChannelAttention`).
        kernel_size, norm: of the spatial attention (:class:`CBAMSpatialAttention`).
        gate_layer: the gate of both (default ``"sigmoid"``).
        bn_momentum, pool_order, zero_init_spatial_bn: of the spatial attention, where the paper
            and the official code differ (:class:`CBAMSpatialAttention`): defaults 0.01 (the
            official code's; the paper has no BN), ``"mean_max"`` (the paper's; the official code
            stacks ``"max_mean"``) and False (the official ResidualNet zeroes the spatial BN's
            weight; :func:`chanattn.create_model` and :func:`chanattn.attach` pass True).

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
                 norm: bool = True, bn_momentum: float | None = 0.01, pool_order: str = "mean_max",
                 zero_init_spatial_bn: bool = False) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        # checked here so that the errors name CBAM
        _check_momentum(bn_momentum, owner)
        _check_choice(pool_order, "pool_order", POOL_ORDERS, owner)
        _check_bool(zero_init_spatial_bn, "zero_init_spatial_bn", owner)
        self.channel = CBAMChannelAttention(channels, rd_ratio, rd_channels, rd_divisor,
                                            act_layer, gate_layer, bias)
        self.spatial = CBAMSpatialAttention(channels, kernel_size, norm, gate_layer, bn_momentum,
                                            pool_order, zero_init_spatial_bn)

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
