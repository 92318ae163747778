"""BatchNorm inside autograd Functions that recompute in the backward instead of saving.

A Function that contains a convolution and a BatchNorm saves the BatchNorm's input (or what it is
computed from) and the per-channel statistics it normalised with (the batch's mean and 1/std in
training, the running mean and variance in eval), and recomputes the normalised output, and what
follows it, in its backward. The running statistics are updated once, in the forward, with
``nn.BatchNorm2d``'s bookkeeping (momentum or cumulative average, ``num_batches_tracked``) and the
kernel that ``F.batch_norm`` calls on CPU (``torch.native_batch_norm``), so they come out identical
to the plain module's (on CUDA the module may take cuDNN's kernel instead, which rounds
differently). Wrapping a BatchNorm in ``torch.utils.checkpoint`` instead would run its forward
twice and update the running statistics twice. The gradients come from the ATen backward functions
that autograd runs for the plain layers (``threshold_backward``, ``native_batch_norm_backward``,
``convolution_backward``), on the same tensors.

The Functions here and in the files of :mod:`chanattn.fast` that use them are registered as
training paths (``autograd=True``): they run only where autograd records the call, in eager mode,
outside autocast (:func:`recompute_applies`); elsewhere the modules run their formula.

Building blocks, for a Function written for one module (gsop). The Functions take the
running statistics as inputs and return BN's per-channel statistics as extra (non-differentiable)
outputs, so that ``setup_context`` can save them: Functions written so also run under
``torch.func`` transforms (``torch.func.grad``, ``functional_call``). Usage::

    # once per call: nn.BatchNorm2d's bookkeeping and checks, for BN's input shape
    running_mean, running_var, cfg = bn_args(self.bn, shape)
    # in the Function's forward (return s1, s2 as outputs):
    y, s1, s2 = bn_forward(z, weight, bias, running_mean, running_var, cfg)
    # in its setup_context: save z (or what it is recomputed from) and
    stats = bn_saved(cfg, running_mean, running_var, s1, s2)
    # in its backward:
    y = bn_apply(z, weight, bias, stats, cfg)  # or bn_rerun: the forward's kernel again
    dz, dw, db = bn_backward(dy, z, weight, stats, cfg, (True, need_w, need_b))

:class:`ConvConfig` does the same for a 2-D convolution before the BatchNorm (its arguments, output
shape, forward and ATen backward).

A complete block, for sk and encnet: :func:`conv_bn_relu` computes ``relu(bn(conv(x)))`` for a
conv-BN-ReLU block. Under plain autograd such a block keeps three tensors of the block's size: the
convolution's input x, its output c (BN's input) and the ReLU's output u. :func:`conv_bn_relu`
keeps x and either

- c (``save="conv_output"``): the backward runs the BatchNorm (:func:`bn_rerun`: the kernel and
  the arguments of the forward, in training ATen's training kernel, statistics included, without
  touching the running statistics) and the ReLU again on c, so the same u, bit for bit; or
- u (``save="output"``, for a block whose output the next layer keeps anyway): the backward runs
  the convolution again on x, the same call, so the same c.

Its values, gradients and running statistics are the plain block's, bit for bit, on CPU (on CUDA
``F.batch_norm`` may run cuDNN where this runs ATen's own kernel: the same to rounding).
:func:`recompute_output` gives another Function's backward the block's output from what the
block's backward saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .registry import autocast_on, eager, grad_needed

__all__ = [
    "BNConfig",
    "ConvConfig",
    "bn_apply",
    "bn_args",
    "bn_backward",
    "bn_forward",
    "bn_rerun",
    "bn_saved",
    "conv_bn_relu",
    "conv_bn_relu_applies",
    "conv_bn_relu_parts",
    "recompute_applies",
    "recompute_output",
    "recomputes",
]

_SAVE = ("conv_output", "output")


def recompute_applies(x: torch.Tensor, module: nn.Module) -> bool:
    """True where the Functions that recompute may replace the plain layers: autograd records
    the call (:func:`~chanattn.fast.registry.grad_needed`), in eager mode (not tracing, scripting,
    compiling or exporting) and outside autocast (whose casts the backward's recomputation would
    not see)."""
    return grad_needed(x, module) and eager() and not autocast_on(x)


# -- BatchNorm -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BNConfig:
    """What ``nn.BatchNorm2d.forward`` passes to ``F.batch_norm`` besides tensors: whether the
    batch's statistics normalise (``training``), the running statistics' update factor, eps."""

    training: bool
    momentum: float
    eps: float


def bn_args(bn: nn.modules.batchnorm._BatchNorm,
            shape: tuple[int, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None, BNConfig]:
    """(running_mean, running_var, config) for one forward of ``bn`` on an input of ``shape``, with
    its bookkeeping: in training with tracked statistics, ``num_batches_tracked`` goes up by one
    (call this once per forward, as the module would run), and ``F.batch_norm``'s checks (more than
    one value per channel and a positive eps where the batch's statistics normalise). The running
    statistics are None where ``bn`` neither normalises with them nor updates them."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    if batch_stats and shape[0] * math.prod(shape[2:]) == 1:
        raise InputError(
            f"Expected more than 1 value per channel when training, got input size {torch.Size(shape)}")
    if batch_stats and bn.eps <= 0.0:
        raise InputError(f"batch_norm eps must be positive during training, but got {bn.eps}")
    track = not bn.training or bn.track_running_stats
    return (bn.running_mean if track else None, bn.running_var if track else None,
            BNConfig(batch_stats, momentum, bn.eps))


def bn_forward(z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               cfg: BNConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, save_mean, save_invstd): the BatchNorm of ``z`` by ATen's kernel, the call
    ``F.batch_norm`` makes on CPU (updating the running statistics in training), and the batch's
    mean and 1/std (empty where the running statistics normalise)."""
    return torch.native_batch_norm(z, weight, bias, running_mean, running_var, cfg.training,
                                   cfg.momentum, cfg.eps)


def bn_saved(cfg: BNConfig, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
             save_mean: torch.Tensor, save_invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two per-channel tensors to save: the batch's mean and 1/std where they normalised, the
    running mean and variance otherwise (what autograd passes to BN's backward)."""
    return (save_mean, save_invstd) if cfg.training else (running_mean, running_var)


def bn_apply(z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
             stats: tuple[torch.Tensor, torch.Tensor], cfg: BNConfig) -> torch.Tensor:
    """The BatchNorm's output recomputed elementwise from its input and ``stats``
    (:func:`bn_saved`), as the CPU kernel computes it: z * alpha + beta, alpha = invstd * weight,
    beta = bias - mean * alpha."""
    mean, second = stats
    invstd = second if cfg.training else 1 / torch.sqrt(second + cfg.eps)
    alpha = invstd if weight is None else invstd * weight
    beta = -mean * alpha if bias is None else bias - mean * alpha
    shape = (1, -1) + (1,) * (z.dim() - 2)
    return torch.addcmul(beta.to(z.dtype).view(shape), z, alpha.to(z.dtype).view(shape))


def bn_rerun(z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
             stats: tuple[torch.Tensor, torch.Tensor], cfg: BNConfig) -> torch.Tensor:
    """The BatchNorm's output recomputed by the forward's kernel with the forward's arguments,
    without touching the running statistics: in training the training kernel again on the same
    tensor (its statistics included), in eval with the running statistics (``stats``): the
    forward's output, bit for bit, on any device. Costs a pass over ``z`` more than
    :func:`bn_apply` in training."""
    running = (None, None) if cfg.training else stats
    return torch.native_batch_norm(z, weight, bias, *running, cfg.training, 0.0, cfg.eps)[0]


def bn_backward(dy: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None,
                stats: tuple[torch.Tensor, torch.Tensor], cfg: BNConfig,
                mask: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """(dz, dweight, dbias) by ATen's BatchNorm backward; None where ``mask`` is False."""
    # train: save_mean, save_invstd; eval: running_mean, running_var (as autograd passes them)
    running, saved = ((None, None), stats) if cfg.training else (stats, (None, None))
    dz, dw, db = torch.ops.aten.native_batch_norm_backward(
        dy, z, weight, *running, *saved, cfg.training, cfg.eps, list(mask))
    return (dz if mask[0] else None, dw if mask[1] else None, db if mask[2] else None)


# -- Convolution -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvConfig:
    """The arguments of a 2-D ``nn.Conv2d`` (zero padding given as numbers) besides tensors."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvConfig:
        return cls(tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups)

    def output_shape(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int, int]:
        """(B, C_out, H', W'): the shape of the convolution's output for input ``x``."""
        hw = ((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, p, d, st in
              zip(x.shape[2:], weight.shape[2:], self.padding, self.dilation, self.stride, strict=True))
        return (x.shape[0], weight.shape[0], *hw)

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def backward(self, dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
                 mask: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
        """(dx, dweight, dbias) by ATen's convolution backward; None where ``mask`` is False (and
        for the bias where there is none)."""
        mask = (mask[0], mask[1], mask[2] and has_bias)
        dx, dw, db = torch.ops.aten.convolution_backward(
            dy, x, weight, [weight.shape[0]] if has_bias else None, self.stride, self.padding,
            self.dilation, False, [0] * len(self.stride), self.groups, list(mask))
        return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None)


# -- conv-BN-ReLU ----------------------------------------------------------------------------------


def conv_bn_relu_applies(conv: nn.Module, bn: nn.Module, act: nn.Module) -> bool:
    """Whether :func:`conv_bn_relu` computes ``act(bn(conv(x)))``: these exact types, a 2-D
    convolution with zero padding given as numbers."""
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and type(bn) is nn.BatchNorm2d and type(act) is nn.ReLU)


def conv_bn_relu_parts(block: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d] | None:
    """(conv, bn) where ``block`` is ``nn.Sequential(conv, bn, relu)`` as
    :func:`conv_bn_relu_applies` wants it, else None."""
    if not (isinstance(block, nn.Sequential) and len(block) == 3):
        return None
    conv, bn, act = block
    return (conv, bn) if conv_bn_relu_applies(conv, bn, act) else None


@dataclass(frozen=True)
class _Config:
    conv: ConvConfig
    bn: BNConfig
    save: str  # "conv_output" or "output"


class _ConvBatchNormReLU(torch.autograd.Function):
    """u = relu(bn(conv(x))). Saves x, the parameters, two (C,) statistics (the batch's mean and
    inverse standard deviation, or the running mean and variance) and c or u (``cfg.save``)."""

    @staticmethod
    def forward(x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, cfg: _Config):
        c = cfg.conv.forward(x, conv_w, conv_b)
        out, mean, invstd = bn_forward(c, bn_w, bn_b, running_mean, running_var, cfg.bn)
        return out.relu_(), c, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, cfg = inputs
        u, c, mean, invstd = output
        ctx.mark_non_differentiable(c, mean, invstd)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for c and the statistics
        ctx.cfg = cfg
        ctx.recomputed = None  # (c, u) from recompute_output, for this backward
        stats = bn_saved(cfg.bn, running_mean, running_var, mean, invstd)
        ctx.save_for_backward(x, conv_w, conv_b, bn_w, bn_b, *stats,
                              c if cfg.save == "conv_output" else None, u if cfg.save == "output" else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gu, _gc, _gmean, _ginvstd):
        recomputed, ctx.recomputed = ctx.recomputed, None
        if gu is None:
            return None, None, None, None, None, None, None, None
        x, conv_w, conv_b, bn_w, bn_b, stat1, stat2, c, u = ctx.saved_tensors
        cfg, stats = ctx.cfg, (stat1, stat2)
        c, u = recomputed if recomputed is not None else _recompute(
            x, conv_w, conv_b, bn_w, bn_b, stat1, stat2, c, u, cfg)
        need = ctx.needs_input_grad
        need_conv = need[0] or need[1] or need[2]
        g = torch.ops.aten.threshold_backward(gu, u, 0)  # the ReLU's backward, as autograd runs it
        del u
        bn_mask = (need_conv, need[3] and bn_w is not None, need[4] and bn_b is not None)
        gc, gbn_w, gbn_b = bn_backward(g, c, bn_w, stats, cfg.bn, bn_mask)
        del g, c
        gx = gconv_w = gconv_b = None
        if need_conv:
            gx, gconv_w, gconv_b = cfg.conv.backward(gc, x, conv_w, conv_b is not None, need[:3])
        return gx, gconv_w, gconv_b, gbn_w, gbn_b, None, None, None


def _recompute(x, conv_w, conv_b, bn_w, bn_b, stat1, stat2, c, u, cfg: _Config):
    """(c, u) as the forward computed them, from what the Function saved (one of the two)."""
    if c is None:
        c = cfg.conv.forward(x, conv_w, conv_b)
    if u is None:
        u = bn_rerun(c, bn_w, bn_b, (stat1, stat2), cfg.bn).relu_()
    return c, u


def conv_bn_relu(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, *, save: str) -> torch.Tensor:
    """relu(bn(conv(x))) with the values, gradients and update of ``bn``'s running statistics of
    the three modules, saving for backward x, BN's (C,) statistics and the convolution's output
    (``save="conv_output"``; BN and ReLU are recomputed) or the block's output
    (``save="output"``; the convolution is recomputed). For where :func:`recompute_applies` and
    :func:`conv_bn_relu_applies` hold."""
    if save not in _SAVE:
        raise InputError(f"conv_bn_relu: save must be one of {_SAVE}, got {save!r}")
    conv_cfg = ConvConfig.of(conv)
    running_mean, running_var, bn_cfg = bn_args(bn, conv_cfg.output_shape(x, conv.weight))
    return _ConvBatchNormReLU.apply(x, conv.weight, conv.bias, bn.weight, bn.bias, running_mean,
                                    running_var, _Config(conv_cfg, bn_cfg, save))[0]


def recomputes(u: torch.Tensor) -> bool:
    """Whether ``u`` came from :func:`conv_bn_relu` with autograd recording (so that
    :func:`recompute_output` can give its values back in the backward)."""
    return type(u.grad_fn) is _ConvBatchNormReLU._backward_cls


def recompute_output(u: torch.Tensor | torch.autograd.graph.Node) -> torch.Tensor:
    """The output of a :func:`conv_bn_relu` call, bit for bit, from what its backward saved: for
    another Function's backward that needs the values of ``u`` without saving them itself.

    Pass ``u`` or its ``grad_fn`` (what a Function keeps in its context rather than the tensor).
    The block's own backward, which runs after the backward of anything that used ``u``, takes
    the recomputed tensors from here instead of computing them a second time.
    """
    node = u.grad_fn if isinstance(u, torch.Tensor) else u
    node.recomputed = _recompute(*node.saved_tensors, node.cfg)
    return node.recomputed[1]
