"""BAM in training: x * (1 + g), g = sigmoid(a), by an autograd Function that saves x and g (which
the sigmoid keeps anyway), not 1 + g: 2.4 input sizes with the spatial branch's (B, C/r, H, W)
activations, where the formula keeps 3.4. (Recomputing the sigmoid from the small Mc and Ms
instead, 1.4 input sizes, made the training step 20-40% slower on CPU, one thread, 8x64x28x28: not
done.)"""

from __future__ import annotations

import torch

from ..modules.bam import BottleneckAttention
from .registry import FastPath, register


def _bam(m: BottleneckAttention, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    mc = m.channel_att(x.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
    ms = m.spatial_att(x)  # (B, 1, H, W)
    a = mc * ms if m.fusion == "mul" else mc + ms  # (B, C, H, W)
    # x * (1 + gate(a)) without keeping 1 + gate(a) (the sigmoid keeps its output anyway)
    return _OnePlusGate.apply(x, m.gate(a))


class _OnePlusGate(torch.autograd.Function):
    """y = x * (1 + s); saves x and s, not 1 + s (the backward adds the 1 again: the same values,
    bit for bit). Under plain autograd s is also kept by the sigmoid that made it, so that the
    plain formula keeps x, s and 1 + s, and this keeps x and s."""

    @staticmethod
    def forward(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x * (1 + s)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, s = ctx.saved_tensors
        gx = torch.add(s, 1).mul_(g) if ctx.needs_input_grad[0] else None  # (1 + s) * g, one buffer
        gs = g * x if ctx.needs_input_grad[1] else None
        return gx, gs


register(FastPath(
    "bam.one_plus_gate", BottleneckAttention, _bam, purpose="memory", autograd=True,
    summary="x * (1 + gate) by an autograd Function that saves x and the gate, not 1 + gate",
    examples=(("bam", {"fusion": "sum"}),)))
