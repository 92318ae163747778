"""GSoP in training: the reduction and the covariance as one autograd Function
(:class:`_ReducedCovariance`) that saves x and BN's statistics, plus the convolution's output where
it is no larger than x, and recomputes the rest in the backward: 1.7x the input is saved at
8x64x28x28 (8.7x by the formula), 2.2x at 8x256x14x14 (4.2x)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..modules.covariance import _no_autocast, _working, covariance_pool
from ..modules.gsop import GSoP
from .recompute import BNConfig, ConvConfig, bn_apply, bn_args, bn_backward, bn_forward, bn_saved
from .registry import FastPath, register


def _plain_reduce(m: GSoP) -> str | None:
    """None where the reduction is what _ReducedCovariance computes: a plain 1x1 convolution, a
    BatchNorm2d and a ReLU (not where a user swapped one of them)."""
    conv = m.conv_reduce
    if (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.padding == (0, 0)
            and type(m.bn_reduce) is nn.BatchNorm2d and type(m.act_reduce) is nn.ReLU):
        return None
    return "needs the reduction as a 1x1 Conv2d, BatchNorm2d and ReLU"


def _gsop(m: GSoP, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    conv, bn = m.conv_reduce, m.bn_reduce
    conv_cfg = ConvConfig.of(conv)
    shape = conv_cfg.output_shape(x, conv.weight)  # (B, c', H', W')
    m._require_batch_stats(shape[0] * min(shape[2] * shape[3], m.rd_channels))  # both BNs
    running_mean, running_var, bn_cfg = bn_args(bn, shape)
    cov = _ReducedCovariance.apply(x, conv.weight, conv.bias, bn.weight, bn.bias, running_mean,
                                   running_var, _Config(m.pre_act, conv_cfg, bn_cfg))[0]
    return x * m._head(cov)


@dataclass(frozen=True)
class _Config:
    pre_act: bool
    conv: ConvConfig
    bn: BNConfig


class _ReducedCovariance(torch.autograd.Function):
    """Cov(ReLU(BN(Conv1x1(ReLU(x))))) saving x, BN's per-channel statistics and, where it is no
    larger than x, the convolution's output.

    Autograd would keep ReLU(x) (the convolution's input), the convolution's output (BN's input),
    the ReLU's output and the centred (B, c', N) matrix of the covariance: at C = 64, c' = 128 and
    stride 1, each of the last three is 2x the input. The backward recomputes them from x (the
    convolution only where its output is larger than x, then elementwise passes) and runs the
    ops' own backward kernels (``threshold_backward``, ``native_batch_norm_backward``,
    ``convolution_backward``). BN's running statistics are updated once, in the forward
    (:mod:`chanattn.fast.recompute`)."""

    @staticmethod
    def forward(x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, cfg: _Config):
        r = torch.relu(x) if cfg.pre_act else x
        z = cfg.conv.forward(r, conv_w, conv_b)
        y, s1, s2 = bn_forward(z, bn_w, bn_b, running_mean, running_var, cfg.bn)
        cov = covariance_pool(y.relu_())
        # The convolution's output is kept where it is no larger than x (c' H' W' <= C H W: it then
        # costs less to keep than the convolution costs to recompute), else recomputed from x.
        return cov, (z if z.numel() <= x.numel() else z.new_empty(0)), s1, s2

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, cfg = inputs
        _, z, s1, s2 = output
        ctx.mark_non_differentiable(z, s1, s2)
        ctx.set_materialize_grads(False)
        ctx.cfg = cfg
        stats = bn_saved(cfg.bn, running_mean, running_var, s1, s2)
        ctx.save_for_backward(x, conv_w, conv_b, bn_w, bn_b, *stats, z if z.numel() else None)

    @staticmethod
    @once_differentiable
    def backward(ctx, gcov, _gz, _gs1, _gs2):
        if gcov is None:
            return (None,) * 8
        x, conv_w, conv_b, bn_w, bn_b, stat1, stat2, z = ctx.saved_tensors
        stats, cfg, need = (stat1, stat2), ctx.cfg, ctx.needs_input_grad
        r = torch.relu(x) if cfg.pre_act else x
        if z is None:
            z = cfg.conv.forward(r, conv_w, conv_b)
        a = bn_apply(z, bn_w, bn_b, stats, cfg.bn).relu_()
        with _no_autocast(x.device):
            f = _working(a).flatten(2)  # (B, c', N), as covariance_pool
            n = f.shape[-1]
            f = f - f.mean(-1, keepdim=True)
            g = _working(gcov) / max(n, 1)
            # cov = f f^T / n: df = (g + g^T) f. The centring's own backward subtracts the mean of
            # df over N, which is (g + g^T) times the mean of f: zero, so it is left out.
            df = torch.bmm(g + g.transpose(1, 2), f)
        del f
        da = df.to(a.dtype).reshape(a.shape)
        dy = torch.ops.aten.threshold_backward(da, a, 0)
        del da, a
        dz, d_bn_w, d_bn_b = bn_backward(dy, z, bn_w, stats, cfg.bn, (True, need[3], need[4]))
        del dy, z
        dr, d_conv_w, d_conv_b = cfg.conv.backward(dz, r, conv_w, conv_b is not None, need[:3])
        dx = None
        if need[0]:
            dx = torch.ops.aten.threshold_backward(dr, r, 0) if cfg.pre_act else dr
        return dx, d_conv_w, d_conv_b, d_bn_w, d_bn_b, None, None, None


register(FastPath(
    "gsop.recompute", GSoP, _gsop, purpose="memory", autograd=True, configured=_plain_reduce,
    summary="the reduction and the covariance as one autograd Function that recomputes them in the "
            "backward",
    examples=(("gsop", {"rd_channels": 8}), ("gsop", {"stride": 2, "rd_channels": 24}),
              ("gsop", {"pre_act": False, "rd_channels": 20}))))
