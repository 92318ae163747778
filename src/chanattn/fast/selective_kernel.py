"""Selective Kernel: the branches without their stack, BatchNorm folded in eval mode, in-place
accumulation in inference; and a training path that saves a third of what the formula saves.

- ``sk.unstacked`` (inference): the pooled sum is the sum of the branches' means and the weighted
  sum is accumulated in place in a branch's output (one ``lerp_`` for two branches; no
  (B, M, C', H', W') stack). In eval mode (float32/float64) each branch's BatchNorm is folded into
  its convolution and the ReLU runs in place. Under autograd it was no faster than the formula
  (0.89-1.02x) and slower than the compiled formula at 32x64x56x56 (benchmarks/results/
  fast_paths_cpu.txt), so it applies without autograd only.
- ``sk.recompute``: training (BatchNorm in training mode, autograd recording) saves x and, per
  branch, only the convolution's output (3 input sizes for two branches at stride 1, where the same
  layers under plain autograd keep 5, and the formula 7 with its stack): each branch's conv-BN-ReLU
  is one autograd Function (:func:`chanattn.fast.recompute.conv_bn_relu`) that runs BN and ReLU again
  in the backward, and the weighted sum is another (:class:`_MixBranches`) that saves only the
  weights and takes the branch outputs from there (computed once per backward). The values,
  gradients and running statistics are those of the plain layers, bit for bit on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.selective_kernel import SelectiveKernel
from .functional import linear_1x1
from .recompute import conv_bn_relu, conv_bn_relu_parts, recompute_output, recomputes
from .registry import FastPath, grad_needed, register


def _folded_branch(branch: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """A branch with its BatchNorm (in eval mode, on running statistics) folded into the
    convolution, and a ReLU applied in place: one pass over the branch's output fewer. None
    where the branch is not (Conv2d, eval-mode BatchNorm2d, activation)."""
    if not (isinstance(branch, nn.Sequential) and len(branch) == 3):
        return None
    if x.dtype not in (torch.float32, torch.float64):
        # In half types the folded bias and the convolution's output are rounded at the scale
        # of running_mean * scale, which can be far above the output's: keep BN separate.
        return None
    conv, bn, act = branch
    if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and not bn.training
            and bn.running_mean is not None and bn.running_var is not None
            and conv.padding_mode == "zeros"):
        return None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight
        shift = shift * bn.weight + bn.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    out = F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.relu_(out) if type(act) is nn.ReLU else act(out)


def _select(m: SelectiveKernel, z: torch.Tensor) -> torch.Tensor:
    """The branch weights (B, M, C', 1, 1), softmax over M, from the pooled sum z (B, C')."""
    b = z.shape[0]
    # under autograd fc_reduce as the convolution itself: the BN after it amplifies rounding
    z = linear_1x1(m.fc_reduce, z, exact_under_grad=True)
    z = m.act(m.bn(z.view(b, -1, 1, 1)))  # (B, d, 1, 1)
    return linear_1x1(m.fc_select, z.flatten(1)).view(b, m.num_branches, -1, 1, 1).softmax(1)


def _pool(m: SelectiveKernel, u: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """z (B, C'): GAP of the branches' sum."""
    if m.bn.training:
        # The fuse step's BN normalises over the batch: at small batches it amplifies rounding
        # differences, so pool the sum as the formula does (the sum is not kept).
        return sum(u[1:], u[0]).mean((2, 3))
    # GAP of the sum as the sum of the GAPs: no (B, C', H', W') sum tensor. The means are added in
    # float32 at least: in half types two roundings would lose more than the formula's one.
    acc = torch.promote_types(x.dtype, torch.float32)
    z = u[0].mean((2, 3), dtype=acc)
    for um in u[1:]:
        z = z + um.mean((2, 3), dtype=acc)
    return z.to(x.dtype)


def _recompute_parts(m: SelectiveKernel) -> list | None:
    parts = [conv_bn_relu_parts(branch) for branch in m.branches]
    return parts if all(p is not None and p[1].training for p in parts) else None


def _recompute_config(m: SelectiveKernel) -> str | None:
    if _recompute_parts(m) is None:
        return "needs every branch as Conv2d, BatchNorm2d in training mode, ReLU"
    return None


def _sk(m: SelectiveKernel, x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
    """The module's output; with ``recompute`` (where ``sk.recompute`` applies: autograd records,
    every branch is conv-BN-ReLU with BN in training mode) through the Functions that save less."""
    m._check_input(x)
    grad = grad_needed(x, m)
    parts = _recompute_parts(m) if recompute else None
    if parts is not None:
        # Training: per branch, x and the convolution's output are saved; BN and ReLU run again in
        # the backward.
        u = [conv_bn_relu(x, conv, bn, save="conv_output") for conv, bn in parts]
    else:
        u = []
        for branch in m.branches:
            out = _folded_branch(branch, x)
            u.append(branch(x) if out is None else out)
    a = _select(m, _pool(m, u, x))  # (B, M, C', 1, 1)
    if not grad:
        # The branch outputs are ours: accumulate in place, one pass for two branches.
        if len(u) == 2:
            return u[1].lerp_(u[0], a[:, 0])
        out = u[0].mul_(a[:, 0])
        for i in range(1, len(u)):
            out.addcmul_(u[i], a[:, i])
        return out
    if parts is not None and all(recomputes(um) for um in u):
        # The weighted sum saves only the weights and rebuilds the branch outputs.
        return _MixBranches.apply(a, *u)
    # Without stacking the branches: autograd saves each branch output once (shared with the
    # activation's own saved output) and the weights.
    out = u[0] * a[:, 0]
    for i in range(1, len(u)):
        out = out + u[i] * a[:, i]
    return out


class _MixBranches(torch.autograd.Function):
    """V = sum_m U_m * a[:, m] for branch outputs U_m from :func:`chanattn.fast.recompute.conv_bn_relu`:
    saves the weights a (B, M, C', 1, 1) only. The gradient w.r.t. a needs the branch outputs: the
    backward rebuilds them from what each branch's Function saved (its convolution's output), and
    that Function's backward, which runs next, reuses them."""

    @staticmethod
    def forward(a: torch.Tensor, *u: torch.Tensor) -> torch.Tensor:
        out = u[0] * a[:, 0]  # the same operations as the plain weighted sum
        for i in range(1, len(u)):
            out += u[i] * a[:, i]
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        a, *u = inputs
        ctx.save_for_backward(a)
        ctx.sources = [um.grad_fn for um in u]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        (a,) = ctx.saved_tensors
        need = ctx.needs_input_grad
        ga = None
        if need[0]:
            ga = torch.stack([(g * recompute_output(node)).sum((2, 3), keepdim=True)
                              for node in ctx.sources], 1)
        gu = [g * a[:, i] if need[i + 1] else None for i in range(len(ctx.sources))]
        return ga, *gu


def _sk_recompute(m: SelectiveKernel, x: torch.Tensor) -> torch.Tensor:
    return _sk(m, x, recompute=True)


register(FastPath(
    "sk.recompute", SelectiveKernel, _sk_recompute, purpose="memory", autograd=True, module_mode="train",
    configured=_recompute_config,
    summary="branch conv-BN-ReLU and the weighted sum as autograd Functions that save x and each "
            "branch's convolution output only",
    examples=(("sk", {"num_branches": 3, "stride": 2, "out_channels": 32}),)))
register(FastPath(
    "sk.unstacked", SelectiveKernel, _sk, purpose="speed", autograd=False,
    summary="no stack of the branches; BatchNorm folded in eval mode; in-place sums in inference",
    examples=(("sk", {"num_branches": 3, "stride": 2, "out_channels": 32}),)))
