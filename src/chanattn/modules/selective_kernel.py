"""Selective Kernel Networks (Li, Wang, Hu, Yang; CVPR 2019, https://arxiv.org/abs/1903.06586)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..functional import grad_needed, linear_1x1
from ..layers import (
    AttentionModule,
    LayerSpec,
    check_positive_int,
    create_act,
    largest_divisor_at_most,
    reduced_channels,
)
from ..recompute import conv_bn_relu, conv_bn_relu_parts, recompute_applies, recompute_output, recomputes
from ..registry import register

__all__ = ["SelectiveKernel"]


@register("sk", title="Selective Kernel",
          paper="Selective Kernel Networks (CVPR 2019, arXiv:1903.06586)",
          year=2019, kind="branch", placement="replace_conv",
          placement_note="in place of each block's 3x3 convolution (SKNet: the bottleneck's middle "
                         "convolution), with the block's stride")
class SelectiveKernel(AttentionModule):
    """V = sum_m a_m ⊙ U_m, a = softmax over branches of FC_m(z), z = ReLU(BN(FC(GAP(sum_m U_m)))).

    Split: M grouped 3x3 convolutions, branch m with dilation m+1 (the paper's 5x5 branch is a
    3x3 with dilation 2, as in the paper's own implementation), each followed by BN and ReLU.
    Fuse: the branches' sum, global average pooling, an FC to d = max(C/r, L) without bias, BN,
    ReLU. Select: one FC per branch back to C (computed as one FC to M*C), softmax over the
    branches, and the weighted sum.

    SK is a drop-in replacement for a 3x3 convolution (the middle convolution of a bottleneck),
    not a gate on an existing tensor: with ``stride=2`` the output is downsampled.

    Args:
        channels: input channels C.
        out_channels: output channels (default C).
        stride: of the branch convolutions (default 1).
        groups: of the branch convolutions (default 32, the paper's G). Where it does not divide
            both C and ``out_channels``, the largest divisor of both below it is used instead
            (for example 16 at C = 16, 1 at C = 15); ``self.groups`` holds the value in use.
        num_branches: M (default 2).
        rd_ratio: 1/r (default 1/16); min_rd_channels: L (default 32);
        rd_channels: d, overriding both.
        act_layer: default ``"relu"``; norm_layer: default ``nn.BatchNorm2d``.

    ``forward`` does not stack the branches: the pooled sum is the sum of the branches' means and
    the weighted sum is accumulated branch by branch. In eval mode (float32/float64) each branch's
    BatchNorm is folded into its convolution and the ReLU runs in place; without autograd the
    weighted sum is accumulated in place in a branch's output (one ``lerp_`` for two branches).
    Training (BatchNorm in training mode, eager, autograd recording) saves x and, per branch, only
    the convolution's output (3 input sizes for two branches at stride 1, where the same layers
    under plain autograd keep 5): each branch's conv-BN-ReLU is one autograd Function
    (:func:`chanattn.recompute.conv_bn_relu`) that runs BN and ReLU again in the backward, and the
    weighted sum is another (:class:`_MixBranches`) that saves only the weights and takes the
    branch outputs from there (computed once per backward). The values, gradients and running
    statistics are those of the plain layers, bit for bit on CPU; the second BatchNorm costs about
    5-10% of a training step (CPU, one thread, 8x64x28x28). The plain formula
    (``forward_reference``) keeps the stack of the branches as well (7 input sizes).
    """

    batchnorm_on_pooled = True  # the fuse step's BN sees (B, d) vectors

    def __init__(self, channels: int, out_channels: int | None = None, stride: int = 1,
                 groups: int = 32, num_branches: int = 2, rd_ratio: float = 1 / 16,
                 min_rd_channels: int = 32, rd_channels: int | None = None,
                 act_layer: LayerSpec = "relu", norm_layer=nn.BatchNorm2d) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        out_channels = channels if out_channels is None else out_channels
        check_positive_int(out_channels, "out_channels", owner)
        check_positive_int(stride, "stride", owner)
        check_positive_int(groups, "groups", owner)
        check_positive_int(num_branches, "num_branches", owner)
        check_positive_int(min_rd_channels, "min_rd_channels", owner)
        self.out_channels = out_channels
        self.stride = stride
        self.groups = largest_divisor_at_most(math.gcd(channels, out_channels), groups)
        self.num_branches = num_branches
        if rd_channels is None:
            rd_channels = max(reduced_channels(out_channels, rd_ratio, owner=owner), min_rd_channels)
        self.rd_channels = check_positive_int(rd_channels, "rd_channels", owner)

        self.branches = nn.ModuleList()
        for m in range(num_branches):
            dilation = m + 1
            self.branches.append(nn.Sequential(
                nn.Conv2d(channels, out_channels, 3, stride=stride, padding=dilation,
                          dilation=dilation, groups=self.groups, bias=False),
                norm_layer(out_channels),
                create_act(act_layer, owner=owner),
            ))
        self.fc_reduce = nn.Conv2d(out_channels, self.rd_channels, 1, bias=False)
        self.bn = norm_layer(self.rd_channels)
        self.act = create_act(act_layer, owner=owner)
        self.fc_select = nn.Conv2d(self.rd_channels, out_channels * num_branches, 1, bias=False)

    def _folded_branch(self, branch: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
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

    def select(self, z: torch.Tensor) -> torch.Tensor:
        """The branch weights (B, M, C', 1, 1), softmax over M, from the pooled sum z (B, C')."""
        b = z.shape[0]
        # under autograd fc_reduce as the convolution itself: the BN after it amplifies rounding
        z = linear_1x1(self.fc_reduce, z, exact_under_grad=True)
        z = self.act(self.bn(z.view(b, -1, 1, 1)))  # (B, d, 1, 1)
        return linear_1x1(self.fc_select, z.flatten(1)).view(b, self.num_branches, -1, 1, 1).softmax(1)

    def _pool(self, u: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """z (B, C'): GAP of the branches' sum."""
        if self.bn.training:
            # The fuse step's BN normalises over the batch: at small batches it amplifies rounding
            # differences, so pool the sum as the reference does (the sum is not kept).
            z = sum(u[1:], u[0]).mean((2, 3))
        else:
            # GAP of the sum as the sum of the GAPs: no (B, C', H', W') sum tensor. The means are
            # added in float32 at least: in half types two roundings would lose more than the
            # reference's one.
            acc = torch.promote_types(x.dtype, torch.float32)
            z = u[0].mean((2, 3), dtype=acc)
            for um in u[1:]:
                z = z + um.mean((2, 3), dtype=acc)
            z = z.to(x.dtype)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        grad = grad_needed(x, self)
        u = None
        if recompute_applies(x, self):
            parts = [conv_bn_relu_parts(branch) for branch in self.branches]
            if all(p is not None and p[1].training for p in parts):
                # Training: per branch, x and the convolution's output are saved; BN and ReLU run
                # again in the backward.
                u = [conv_bn_relu(x, conv, bn, save="conv_output") for conv, bn in parts]
        recomputed = u is not None
        if u is None:
            u = []
            for branch in self.branches:
                out = self._folded_branch(branch, x)
                u.append(branch(x) if out is None else out)
        a = self.select(self._pool(u, x))  # (B, M, C', 1, 1)
        if not grad:
            # The branch outputs are ours: accumulate in place, one pass for two branches.
            if len(u) == 2:
                return u[1].lerp_(u[0], a[:, 0])
            out = u[0].mul_(a[:, 0])
            for i in range(1, len(u)):
                out.addcmul_(u[i], a[:, i])
            return out
        if recomputed and all(recomputes(um) for um in u):
            # The weighted sum saves only the weights and rebuilds the branch outputs.
            return _MixBranches.apply(a, *u)
        # Without stacking the branches: autograd saves each branch output once (shared with
        # the activation's own saved output) and the weights.
        out = u[0] * a[:, 0]
        for i in range(1, len(u)):
            out = out + u[i] * a[:, i]
        return out

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula, for tests: the branches stacked, the fuse and select steps as 1x1
        convolutions on (B, C', 1, 1), the weighted sum over the stack."""
        self._check_input(x)
        u = torch.stack([branch(x) for branch in self.branches], 1)  # (B, M, C', H', W')
        b, m, c = u.shape[:3]
        z = u.sum(1).mean((2, 3), keepdim=True)  # (B, C', 1, 1)
        z = self.act(self.bn(self.fc_reduce(z)))  # (B, d, 1, 1)
        a = self.fc_select(z).view(b, m, c, 1, 1).softmax(1)  # (B, M, C', 1, 1)
        return (u * a).sum(1)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, out_channels={self.out_channels}, "
                f"stride={self.stride}, groups={self.groups}, num_branches={self.num_branches}, "
                f"rd_channels={self.rd_channels}")


class _MixBranches(torch.autograd.Function):
    """V = sum_m U_m * a[:, m] for branch outputs U_m from :func:`chanattn.recompute.conv_bn_relu`:
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
