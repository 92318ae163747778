"""CBAM (and its channel and spatial modules alone): the native operator in inference, and two
PyTorch paths, each kept for the mode in which it beat both the formula and ``torch.compile`` of
the formula (benchmarks/README.md, "Fast paths").

- ``*.native``: inference on float32 NCHW CPU tensors by the C++ operator ``chanattn::cbam_forward``
  (:mod:`chanattn.fast.native`): per sample, pool over H and W, the MLP, pool x * channel gate over
  C, the KxK convolution, and write the output, all while the sample is in cache (about one read and
  one write of the tensor from memory). It also applies under ``torch.compile`` (the operator has a
  fake implementation; the compiler calls it), not under ``torch.export`` or ``torch.jit``.
- ``cbam_channel.pytorch`` (inference): both poolings in one pass over each chunk of the batch while
  in cache, the max over short rows by overlapping windows, the MLP once for both descriptors as
  matrix products (:mod:`chanattn.fast.functional`).
- ``cbam_spatial.pytorch`` (training): mean and max over C in one pass while in cache, the 2 -> 1
  convolution with the batch folded into channels.

Measured and deleted (benchmarks/results/fast_paths_cpu.txt, 2026-12-01): CBAM's own PyTorch path
in inference (4-10% slower than the compiled formula at every shape), its training path that saved
x * channel gate once less (the compiled formula saves as little, 1.4-2.9x faster), and the channel
stage's path in training and the spatial stage's in inference (slower than the compiled formula).
Where the operator does not apply, CBAM runs its formula, whose channel and spatial stages take
their own paths.

Every path pools [mean_C; max_C]; with the spatial stage's ``pool_order="max_mean"`` (the official
code's [max_C; mean_C]) the PyTorch path swaps the pooled map's two channels before the convolution,
and the operator gets the convolution's weight with its two input channels swapped.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modules.cbam import CBAM, CBAMChannelAttention, CBAMSpatialAttention
from . import native
from .functional import (
    avg_max_pool_channels,
    avg_max_pool_space,
    conv2d_few_channels,
    linear_1x1,
)
from .registry import FastPath, register

# -- the PyTorch paths ------------------------------------------------------------------------------


def _excite_pooled(m: CBAMChannelAttention, avg: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """The channel factor (B, C, 1, 1) from the two pooled descriptors, each (B, C)."""
    b = avg.shape[0]
    # Both poolings go through the shared MLP as one batch of 2B, as matrix products.
    pooled = torch.cat([avg, mx], 0)
    # under autograd the convolutions themselves: in CBAM the spatial stage's BatchNorm would
    # amplify the matrix products' different rounding
    h = m.act(linear_1x1(m.fc1, pooled, exact_under_grad=True).view(2 * b, -1, 1, 1))
    s = linear_1x1(m.fc2, h.flatten(1), exact_under_grad=True)  # (2B, C)
    return m.gate((s[:b] + s[b:]).view(b, -1, 1, 1))


def _channel_factor(m: CBAMChannelAttention, x: torch.Tensor) -> torch.Tensor:
    """The channel factor, (B, C, 1, 1); both poolings in one pass over ``x`` where it can."""
    return _excite_pooled(m, *avg_max_pool_space(x))


def _spatial_excite(m: CBAMSpatialAttention, pooled: torch.Tensor) -> torch.Tensor:
    """The spatial factor (B, 1, H, W) from [mean_C; max_C], (B, 2, H, W), in that order whatever
    ``pool_order`` (the two channels swapped here for ``"max_mean"``, as the formula stacks them)."""
    if m.norm:
        m._require_batch_stats(pooled.shape[0] * pooled.shape[2] * pooled.shape[3])
    if m.pool_order == "max_mean":
        pooled = pooled.flip(1)  # [max_C; mean_C]
    return m.gate(m.bn(conv2d_few_channels(m.conv, pooled)))


def _channel(m: CBAMChannelAttention, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    return x * _channel_factor(m, x)


def _spatial(m: CBAMSpatialAttention, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    return x * _spatial_excite(m, avg_max_pool_channels(x))


# -- the native operator ----------------------------------------------------------------------------


def _plain_1x1(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1)


def _float32_cpu(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous())
               for t in tensors)


def _channel_native_config(m: CBAMChannelAttention) -> str | None:
    """None where the kernel computes this channel stage, else why not."""
    if type(m.act) is not nn.ReLU or type(m.gate) is not nn.Sigmoid:
        return "the kernel computes ReLU and the sigmoid gate only"
    if not (_plain_1x1(m.fc1) and _plain_1x1(m.fc2)):
        return "the kernel computes plain 1x1 layers only"
    if not _float32_cpu(m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias):
        return "the kernel takes float32 CPU parameters only"
    return None


def _spatial_native_config(m: CBAMSpatialAttention) -> str | None:
    conv, k = m.conv, m.kernel_size
    if type(m.gate) is not nn.Sigmoid:
        return "the kernel computes the sigmoid gate only"
    if not (type(conv) is nn.Conv2d and conv.bias is None and conv.kernel_size == (k, k)
            and conv.padding == (k // 2, k // 2) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros"):
        return "the kernel computes the module's own 2 -> 1 convolution only (no bias)"
    if m.norm:
        bn = m.bn
        if type(bn) is not nn.BatchNorm2d or bn.running_mean is None or bn.running_var is None:
            return "the kernel computes a BatchNorm2d with running statistics only"
        if bn.training:
            return "the BatchNorm is in training mode (the kernel uses running statistics)"
        if not _float32_cpu(bn.weight, bn.bias, bn.running_mean, bn.running_var):
            return "the kernel takes float32 CPU parameters only"
    if not _float32_cpu(conv.weight):
        return "the kernel takes float32 CPU parameters only"
    return None


def _cbam_native_config(m: CBAM) -> str | None:
    return _channel_native_config(m.channel) or _spatial_native_config(m.spatial)


def _bn(m: CBAMSpatialAttention) -> nn.Module | None:
    return m.bn if m.norm else None


def _conv_weight(m: CBAMSpatialAttention) -> torch.Tensor:
    """The 2 -> 1 convolution's weight (1, 2, K, K) for the operator, which pools [mean_C; max_C]:
    with ``pool_order="max_mean"`` its two input channels swapped (a contiguous copy)."""
    weight = m.conv.weight
    return weight.flip(1) if m.pool_order == "max_mean" else weight


def _channel_native(m: CBAMChannelAttention, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    return native.cbam_forward(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)


def _spatial_native(m: CBAMSpatialAttention, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    return native.cbam_forward(x, conv_weight=_conv_weight(m), bn=_bn(m))


def _cbam_native(m: CBAM, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    ch, sp = m.channel, m.spatial
    return native.cbam_forward(x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias,
                               _conv_weight(sp), _bn(sp))


def _native_why() -> str:
    return f"the native kernel is not in use: {native.status().reason}"


_NATIVE = dict(purpose="speed", autograd=False, dtypes=(torch.float32,), devices=("cpu",),
               layouts=("contiguous",), requires=native.available, requires_why=_native_why,
               under_compile=True)
_SUMMARY = "C++ operator chanattn::cbam_forward, sample by sample while in cache"

register(FastPath("cbam.native", CBAM, _cbam_native, summary=_SUMMARY, configured=_cbam_native_config,
                  module_mode="eval",
                  examples=(("cbam", {"kernel_size": 3, "norm": False, "bias": False}),
                            ("cbam", {"pool_order": "max_mean"})), **_NATIVE))
register(FastPath("cbam_channel.native", CBAMChannelAttention, _channel_native, summary=_SUMMARY,
                  configured=_channel_native_config, **_NATIVE))
register(FastPath(
    "cbam_channel.pytorch", CBAMChannelAttention, _channel, purpose="speed", autograd=False,
    summary="both poolings in one pass while in cache, the MLP once on both as matrix products"))
register(FastPath("cbam_spatial.native", CBAMSpatialAttention, _spatial_native, summary=_SUMMARY,
                  configured=_spatial_native_config, module_mode="eval",
                  examples=(("cbam_spatial", {"norm": False}), ("cbam_spatial", {"pool_order": "max_mean"})),
                  **_NATIVE))
register(FastPath(
    "cbam_spatial.pytorch", CBAMSpatialAttention, _spatial, purpose="speed", autograd=True,
    summary="mean and max over C in one pass while in cache, the 2 -> 1 convolution with the batch "
            "folded into channels",
    examples=(("cbam_spatial", {"pool_order": "max_mean"}),)))
