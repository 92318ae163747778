"""ELA: Efficient Local Attention for Deep Convolutional Neural Networks (Wei Xu, Yi Wan; 2024,
https://arxiv.org/abs/2403.01123)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, largest_divisor_at_most
from ..registry import register

__all__ = ["EfficientLocalAttention"]


class _GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also takes groups of one value (a 1-pixel strip of a channel alone
    in its group), which torch refuses: such a value normalises to 0 (x - mean = 0), so the output
    is the bias ((x - x) * weight + bias keeps a NaN or Inf of x non-finite)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // (x.shape[0] * self.num_groups) > 1:
            return super().forward(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = x - x
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


@register("ela", title="Efficient Local Attention",
          paper="ELA: Efficient Local Attention for Deep Convolutional Neural Networks (arXiv 2024, "
                "arXiv:2403.01123)",
          year=2024, kind="hybrid")
class EfficientLocalAttention(AttentionModule):
    """y_c(i, j) = x_c(i, j) * sigmoid(GN(F(z^h_c))(i)) * sigmoid(GN(F(z^w_c))(j)), F a depthwise 1-D
    convolution, z^h_c(i) = mean_j x_c(i, j), z^w_c(j) = mean_i x_c(i, j).

    Coordinate attention's direction-wise pooling without its channel reduction: each channel's
    row strip z^h (H values) and column strip z^w (W values) go through a depthwise 1-D
    convolution of size k (no bias), GroupNorm and a sigmoid, and both factors multiply the input.
    As the paper's listing, one convolution and one GroupNorm serve both directions (``shared``),
    k = 7 and GroupNorm has 16 groups; the paper's variants differ in k and the number of groups
    (``kernel_size``, ``num_groups``).

    Departures: where 16 groups do not divide C, GroupNorm uses the largest divisor of C below 16
    (the listing's ``nn.GroupNorm(16, C)`` fails there), so the module takes any C; a group of one
    value (one channel per group, a strip of length 1) normalises to 0, which ``nn.GroupNorm``
    refuses to compute.
    timm's ``EfficientLocalAttn`` differs from the paper in three ways that the options give:
    separate convolutions and norms per direction (``shared=False``), GroupNorm with one group
    (``num_groups=1``) and a SiLU between the norm and the sigmoid (``act_layer="silu"``). (timm's
    docstring names this arXiv id with another paper's title.)

    Args:
        channels: input channels C.
        kernel_size: k, odd (default 7).
        num_groups: GroupNorm's groups, at most (default 16; ``None``: no norm).
        shared: one convolution and one norm for both directions (default True, the paper's).
        bias: the convolutions have biases (default False).
        act_layer: between the norm and the gate (default ``None``: none, as the paper).
        gate_layer: default ``"sigmoid"``.
    """

    def __init__(self, channels: int, kernel_size: int = 7, num_groups: int | None = 16,
                 shared: bool = True, bias: bool = False, act_layer: LayerSpec = None,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.shared = shared
        self.num_groups = None
        if num_groups is not None:
            check_positive_int(num_groups, "num_groups", owner)
            self.num_groups = largest_divisor_at_most(channels, num_groups)

        def conv(kernel: tuple[int, int]) -> nn.Conv2d:
            pad = (kernel[0] // 2, kernel[1] // 2)
            return nn.Conv2d(channels, channels, kernel, padding=pad, groups=channels, bias=bias)

        def norm() -> nn.Module:
            return nn.Identity() if self.num_groups is None else _GroupNorm(self.num_groups, channels)

        if shared:
            # one (k, 1) kernel over a column-shaped strip: the width strip is transposed to it
            self.conv = conv((kernel_size, 1))
            self.norm = norm()
        else:
            self.conv_h = conv((kernel_size, 1))
            self.conv_w = conv((1, kernel_size))
            self.norm_h = norm()
            self.norm_w = norm()
        self.act = create_act(act_layer, owner=owner)
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        z_h = x.mean(3, keepdim=True)  # (B, C, H, 1)
        z_w = x.mean(2, keepdim=True)  # (B, C, 1, W)
        if self.shared:
            a_h = self.norm(self.conv(z_h))
            a_w = self.norm(self.conv(z_w.transpose(2, 3))).transpose(2, 3)
        else:
            a_h = self.norm_h(self.conv_h(z_h))
            a_w = self.norm_w(self.conv_w(z_w))
        return x * self.gate(self.act(a_h)) * self.gate(self.act(a_w))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, num_groups={self.num_groups}, "
                f"shared={self.shared}")
