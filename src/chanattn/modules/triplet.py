"""Rotate to Attend: Convolutional Triplet Attention Module (Misra, Nalamada, Arasanipalai, Hou;
WACV 2021, https://arxiv.org/abs/2010.03045; official code
https://github.com/landskape-ai/triplet-attention)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import register

__all__ = ["TripletAttention", "ZPoolGate"]


class ZPoolGate(nn.Module):
    """One branch of triplet attention: a = sigmoid(BN(conv_k([max_1(z); mean_1(z)]))).

    Z-pool reduces dim 1 of its input by its maximum and its mean (in that order, as the official
    ``ZPool``), a k x k convolution (2 -> 1, no bias) and BatchNorm (eps 1e-5 and momentum 0.01,
    the official ``BasicConv``'s; PyTorch's momentum convention) follow, then the gate.

    The convolution is initialised Kaiming-normal (fan-out, ReLU gain), as the official ResNet
    initialises every ``conv`` weight; the BN has weight 1 and bias 0.
    """

    def __init__(self, kernel_size: int = 7, gate_layer: LayerSpec = "sigmoid", *, owner: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.gate = create_act(gate_layer, owner=owner)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The factor (B, 1, P, Q) for z (B, R, P, Q), pooled over R."""
        pooled = torch.cat([z.amax(1, keepdim=True), z.mean(1, keepdim=True)], 1)  # (B, 2, P, Q)
        return self.gate(self.bn(self.conv(pooled)))


@register("triplet", title="Triplet Attention",
          paper="Rotate to Attend: Convolutional Triplet Attention Module (WACV 2021, arXiv:2010.03045)",
          year=2021, kind="hybrid")
class TripletAttention(AttentionModule):
    """y = x * (a_cw + a_hc + a_hw) / 3: three Z-pool gates, over H, over W and over C.

    Branch ``cw`` sees x with C and H swapped, (B, H, C, W): Z-pool over H, a k x k convolution on
    the (C, W) plane, a factor a_cw (B, C, 1, W). Branch ``hc`` sees (B, W, H, C): Z-pool over W, a
    factor a_hc (B, C, H, 1) from the (H, C) plane. Branch ``hw`` is CBAM's spatial gate on x,
    a_hw (B, 1, H, W). The paper averages the three branches' outputs x * a; the factor here is
    their average, the same sum. The paper speaks of rotating x by 90 degrees; the official code
    (and this module) swaps the axes instead (a transpose, which is a rotation followed by a flip:
    the convolution sees the plane mirrored, equivalent up to a mirrored kernel).

    Args:
        channels: input channels C (the parameters do not depend on it).
        kernel_size: of the three convolutions (default 7; the official README also gives k = 3).
        no_spatial: drop the ``hw`` branch and average the other two (the official option).
        gate_layer: default ``"sigmoid"``.

    Departure from the official code: its ResNet initialisation zeroes the weight of the ``hw``
    branch's BN (its loop sets every BN weight whose name contains "SpatialGate" to 0, a leftover
    of CBAM's code, under the module's older names), so that branch starts at sigmoid(0) = 1/2
    everywhere; here the three branches start alike (BN weight 1), as the paper describes them.
    """

    def __init__(self, channels: int, kernel_size: int = 7, no_spatial: bool = False,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.no_spatial = bool(no_spatial)
        self.cw = ZPoolGate(kernel_size, gate_layer, owner=owner)
        self.hc = ZPoolGate(kernel_size, gate_layer, owner=owner)
        self.hw = None if self.no_spatial else ZPoolGate(kernel_size, gate_layer, owner=owner)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The factor (B, C, H, W): the average of the branches' factors."""
        b, c, h, w = x.shape
        if self.training:  # each branch's BN normalises one map of B x (its plane) values
            planes = [c * w, h * c] + ([] if self.hw is None else [h * w])
            self._require_batch_stats(b * min(planes))
        a_cw = self.cw(x.transpose(1, 2)).transpose(1, 2)  # (B, H, C, W) -> (B, 1, C, W) -> (B, C, 1, W)
        a_hc = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # (B, W, H, C) -> (B, C, H, 1)
        if self.hw is None:
            return (a_cw + a_hc) / 2
        return (a_cw + a_hc + self.hw(x)) / 3  # (B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, no_spatial={self.no_spatial}"
