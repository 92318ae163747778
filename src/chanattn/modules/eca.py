"""ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks (Wang et al.;
CVPR 2020, https://arxiv.org/abs/1910.03151)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import Stage, register

__all__ = ["RELEASED_KERNELS", "EfficientChannelAttention", "eca_kernel_size"]

#: The kernel sizes per stage of the released ECA-ResNets (official README: eca_resnet18_k3577,
#: eca_resnet34_k3357, eca_resnet50_k3557, eca_resnet101_k3357, eca_resnet152_k3357).
RELEASED_KERNELS: dict[str, tuple[int, ...]] = {
    "resnet18": (3, 5, 7, 7), "resnet34": (3, 3, 5, 7), "resnet50": (3, 5, 5, 7),
    "resnet101": (3, 3, 5, 7), "resnet152": (3, 3, 5, 7),
}


def _released_kernels(stage: Stage) -> dict:
    """The kernel of the released ECA-ResNet in this stage; elsewhere the adaptive rule."""
    kernels = RELEASED_KERNELS.get(stage.arch or "")
    if kernels is None or not 0 <= stage.index < len(kernels):
        return {}
    return {"kernel_size": kernels[stage.index]}


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA's adaptive kernel: t = int(|(log2(C) + b) / gamma|), k = t if t is odd else t + 1.

    C = 64, 256, 512, 2048 give 3, 5, 5, 7.
    """
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


@register("eca", title="Efficient Channel Attention",
          paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks "
                "(CVPR 2020, arXiv:1910.03151)",
          year=2020, kind="channel", stage_kwargs=_released_kernels,
          placement_note="every block; in ResNet-18/34/50/101/152 the kernel sizes of the released models "
                         "per stage (RELEASED_KERNELS), elsewhere the adaptive rule")
class EfficientChannelAttention(AttentionModule):
    """y = x * sigmoid(conv1d_k(GAP(x))): a 1-D convolution over the channel axis, no bias.

    The kernel size k adapts to C (:func:`eca_kernel_size`); the official ImageNet weights were
    trained with hand-set k = 3, 5, 5, 7 per stage, which ``kernel_size=`` reproduces.

    Training saves x and the (B, C, 1, 1) gate.

    Args:
        channels: input channels C.
        kernel_size: an odd k overriding the adaptive rule.
        gamma, beta: constants of the adaptive rule (default 2 and 1).
        gate_layer: the gate (default ``"sigmoid"``).
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2,
                 beta: float = 1, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise InputError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.gate = create_act(gate_layer, owner=owner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, c = x.shape[:2]
        s = x.mean((2, 3)).view(b, 1, c)  # (B, 1, C): channels as a sequence
        s = self.conv(s).view(b, c, 1, 1)
        return x * self.gate(s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
