"""Bilinear attention in training: two autograd Functions that save less, 2.3x the input at
8x64x28x28 and 2.7x at 8x256x14x14, against 4.6x and 5.7x for the formula. The pair products save
phi(x) instead of their two (B, D, H, W) factors; the outer branch's BN, ReLU, the product with the
inner attention, the gate and the product with x save x, the outer convolution's output and the
inner attention only (:class:`_OuterGate`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..modules.bilinear import BilinearAttention
from .recompute import BNConfig, bn_apply, bn_args, bn_backward, bn_forward, bn_saved
from .registry import FastPath, register


def _bilinear(m: BilinearAttention, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    z = m.embed(x)  # (B, C', H, W)
    xt = _PairProducts.apply(z, m.rows, m.cols)  # (B, D, H, W)
    inner = m.inner(xt.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
    conv, bn, act = m.outer
    if not (type(bn) is nn.BatchNorm2d and type(act) is nn.ReLU and type(m.gate) is nn.Sigmoid):
        return x * m.gate(inner * m.outer(xt))
    o = conv(xt)  # (B, C, H, W)
    return _OuterGate.apply(x, o, inner, bn.weight, bn.bias, *bn_args(bn, o.shape))[0]


class _PairProducts(torch.autograd.Function):
    """z[:, rows] * z[:, cols], (B, D, H, W), saving z (B, C', H, W) only: autograd keeps both
    selected (B, D, H, W) factors, D = C'(C'+1)/2 channels each. The backward selects them again
    and adds the two products back into z's channels (as ``index_select``'s backward does)."""

    @staticmethod
    def forward(z, rows, cols):
        return z.index_select(1, rows) * z.index_select(1, cols)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        z, rows, cols = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        dz = torch.zeros_like(z).index_add_(1, rows, g * z.index_select(1, cols))
        return dz.index_add_(1, cols, g * z.index_select(1, rows)), None, None


class _OuterGate(torch.autograd.Function):
    """x * sigmoid(inner * ReLU(BN(o))) saving x, o (the outer convolution's output, BN's input),
    inner (B, C, 1, 1) and BN's per-channel statistics: autograd would also keep the ReLU's output
    and the gate, two more (B, C, H, W) tensors. The backward recomputes them elementwise and runs
    BN's own backward (``native_batch_norm_backward``); BN's running statistics are updated once,
    in the forward (:mod:`chanattn.fast.recompute`)."""

    @staticmethod
    def forward(x, o, inner, bn_w, bn_b, running_mean, running_var, cfg: BNConfig):
        y, s1, s2 = bn_forward(o, bn_w, bn_b, running_mean, running_var, cfg)
        out = torch.mul(inner, y.relu_()).sigmoid_().mul_(x)  # x * sigmoid(inner * ReLU(y))
        return out, s1, s2

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, o, inner, bn_w, bn_b, running_mean, running_var, cfg = inputs
        _, s1, s2 = output
        ctx.mark_non_differentiable(s1, s2)
        ctx.set_materialize_grads(False)
        ctx.cfg = cfg
        ctx.save_for_backward(x, o, inner, bn_w, bn_b, *bn_saved(cfg, running_mean, running_var, s1, s2))

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, _gs1, _gs2):
        if gy is None:
            return (None,) * 8
        x, o, inner, bn_w, bn_b, *stats = ctx.saved_tensors
        need = ctx.needs_input_grad
        a = bn_apply(o, bn_w, bn_b, stats, ctx.cfg).relu_()
        g = torch.mul(inner, a).sigmoid_()
        dx = gy * g if need[0] else None
        dp = torch.ops.aten.sigmoid_backward(gy * x, g)  # the gate's pre-activation
        del g
        d_inner = (dp * a).sum((2, 3), keepdim=True) if need[2] else None
        dy = torch.ops.aten.threshold_backward(dp.mul_(inner), a, 0)
        del dp, a
        do, dw, db = bn_backward(dy, o, bn_w, stats, ctx.cfg, (need[1], need[3], need[4]))
        return dx, do, d_inner, dw, db, None, None, None



register(FastPath(
    "bilinear.recompute", BilinearAttention, _bilinear, purpose="memory", autograd=True,
    summary="the pair products and the outer branch's BN-ReLU-gate as autograd Functions that "
            "recompute instead of saving",
    examples=(("bilinear", {"act_layer": "identity"}),)))
