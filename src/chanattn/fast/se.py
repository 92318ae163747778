"""SE, SE-Var-2 and SE-Var-3 (eSE): the 1x1 layers on the pooled (B, C) features as matrix products.

On a (B, C, 1, 1) tensor a 1x1 convolution is a fully-connected layer, and ``F.linear`` is several
times faster there than the convolution (no oneDNN set-up for a 1x1 map), forward and backward
(:func:`chanattn.fast.functional.linear_1x1`).
"""

from __future__ import annotations

import torch

from ..modules.se import SEVar2, SEVar3, SqueezeExcite
from .functional import linear_1x1
from .registry import FastPath, register


def _se(m: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    b = x.shape[0]
    h = m.act(linear_1x1(m.fc1, x.mean((2, 3))).view(b, -1, 1, 1))
    return x * m.gate(linear_1x1(m.fc2, h.flatten(1)).view(b, -1, 1, 1))


def _one_layer(m: SEVar2 | SEVar3, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    b = x.shape[0]
    return x * m.gate(linear_1x1(m.fc, x.mean((2, 3))).view(b, -1, 1, 1))


register(FastPath(
    "se.matmul", SqueezeExcite, _se, purpose="speed", autograd=None,
    summary="the MLP's 1x1 convolutions as matrix products on the pooled (B, C) features",
    examples=(("se", {"rd_divisor": 8}),)))
register(FastPath(
    "se_var2.affine", SEVar2, _one_layer, purpose="speed", autograd=None,
    summary="the depthwise 1x1 convolution as a per-channel affine map on (B, C)",
    examples=(("se_var2", {"bias": True}),)))
register(FastPath(
    "se_var3.matmul", SEVar3, _one_layer, purpose="speed", autograd=None,
    summary="the 1x1 convolution as a matrix product on (B, C)",
    examples=(("se_var3", {"gate_layer": "hard_sigmoid"}),)))
