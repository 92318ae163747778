"""Conv-BN-ReLU blocks that save less for backward: an autograd Function that keeps the
convolution's input, BatchNorm's per-channel statistics and one of the two block-sized tensors
that plain autograd keeps, and recomputes the other in the backward, bit for bit.

Under plain autograd a conv-BN-ReLU block keeps three tensors of the block's size: the
convolution's input x, its output c (BN's input) and the ReLU's output u. :func:`conv_bn_relu`
keeps x and either

- c (``save="conv_output"``): the backward runs the BatchNorm and the ReLU again on c, with the
  kernel and the arguments of the forward (in training ATen's training kernel, statistics
  included, without touching the running statistics), so the same u, bit for bit; or
- u (``save="output"``, for a block whose output the next layer keeps anyway): the backward runs
  the convolution again on x, the same call, so the same c.

The gradients come from the ATen backward functions that autograd runs for the plain block
(``threshold_backward``, ``native_batch_norm_backward``, ``convolution_backward``) on the same
tensors: the values, gradients and running statistics are the plain block's, bit for bit, on
CPU (on CUDA ``F.batch_norm`` may run cuDNN where this runs ATen's own kernel: the same to
rounding).

The running statistics are updated once, in the forward, with ``nn.BatchNorm2d``'s bookkeeping
(momentum or cumulative average, ``num_batches_tracked``): this is not ``torch.utils.checkpoint``
around BN, which would update them twice.

Used by the modules only where :func:`recompute_applies` holds (autograd recording, eager mode,
no autocast); elsewhere they run the plain layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .functional import eager_fast_path, grad_needed

__all__ = [
    "conv_bn_relu",
    "conv_bn_relu_applies",
    "conv_bn_relu_parts",
    "recompute_applies",
    "recompute_output",
    "recomputes",
]

_SAVE = ("conv_output", "output")


def recompute_applies(x: torch.Tensor, module: nn.Module) -> bool:
    """True where the Functions here should replace the plain layers: autograd records the call
    (:func:`~chanattn.functional.grad_needed`), in eager mode (not tracing, scripting, compiling
    or exporting) and outside autocast (whose casts the backward's recomputation would not see)."""
    return (grad_needed(x, module) and eager_fast_path()
            and not torch.is_autocast_enabled(x.device.type))


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
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    batch_stats: bool  # normalise with the batch's statistics (else with the running ones)
    momentum: float
    eps: float
    save: str  # "conv_output" or "output"


def _conv(x, conv_w, conv_b, cfg: _Config) -> torch.Tensor:
    return F.conv2d(x, conv_w, conv_b, cfg.stride, cfg.padding, cfg.dilation, cfg.groups)


class _ConvBatchNormReLU(torch.autograd.Function):
    """u = relu(bn(conv(x))). Saves x, the parameters, two (C,) statistics (the batch's mean and
    inverse standard deviation, or the running mean and variance) and c or u (``cfg.save``)."""

    @staticmethod
    def forward(x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, cfg: _Config):
        c = _conv(x, conv_w, conv_b, cfg)
        # the call F.batch_norm makes (on CPU): the same output, statistics and running statistics
        out, mean, invstd = torch.native_batch_norm(c, bn_w, bn_b, running_mean, running_var,
                                                    cfg.batch_stats, cfg.momentum, cfg.eps)
        return out.relu_(), c, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, cfg = inputs
        u, c, mean, invstd = output
        ctx.mark_non_differentiable(c, mean, invstd)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for c and the statistics
        if not cfg.batch_stats:  # eval mode: the running statistics, as the plain BN's backward
            mean, invstd = running_mean, running_var
        ctx.cfg = cfg
        ctx.recomputed = None  # (c, u) from recompute_output, for this backward
        ctx.save_for_backward(x, conv_w, conv_b, bn_w, bn_b, mean, invstd,
                              c if cfg.save == "conv_output" else None, u if cfg.save == "output" else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gu, _gc, _gmean, _ginvstd):
        recomputed, ctx.recomputed = ctx.recomputed, None
        if gu is None:
            return None, None, None, None, None, None, None, None
        x, conv_w, conv_b, bn_w, bn_b, mean, invstd, c, u = ctx.saved_tensors
        cfg = ctx.cfg
        c, u = recomputed if recomputed is not None else _recompute(
            x, conv_w, conv_b, bn_w, bn_b, mean, invstd, c, u, cfg)
        need = ctx.needs_input_grad
        need_conv = need[0] or need[1] or need[2]
        g = torch.ops.aten.threshold_backward(gu, u, 0)  # the ReLU's backward, as autograd runs it
        del u
        # train: save_mean, save_invstd; eval: running_mean, running_var (as autograd passes them)
        stats = (None, None, mean, invstd) if cfg.batch_stats else (mean, invstd, None, None)
        gc, gbn_w, gbn_b = torch.ops.aten.native_batch_norm_backward(
            g, c, bn_w, *stats, cfg.batch_stats, cfg.eps,
            [need_conv, need[3] and bn_w is not None, need[4] and bn_b is not None])
        del g, c
        gx = gconv_w = gconv_b = None
        if need_conv:
            gx, gconv_w, gconv_b = torch.ops.aten.convolution_backward(
                gc, x, conv_w, None if conv_b is None else [conv_b.shape[0]], cfg.stride, cfg.padding,
                cfg.dilation, False, [0] * len(cfg.stride), cfg.groups,
                [need[0], need[1], need[2] and conv_b is not None])
        return gx, gconv_w, gconv_b, gbn_w, gbn_b, None, None, None


def _recompute(x, conv_w, conv_b, bn_w, bn_b, mean, invstd, c, u, cfg: _Config):
    """(c, u) as the forward computed them, from what the Function saved (one of the two)."""
    if c is None:
        c = _conv(x, conv_w, conv_b, cfg)
    if u is None:
        if cfg.batch_stats:
            # the training kernel again, on the same tensor, without running statistics (they
            # are not touched): the statistics and the output of the forward, bit for bit
            out = torch.native_batch_norm(c, bn_w, bn_b, None, None, True, 0.0, cfg.eps)[0]
        else:  # mean, invstd hold the running mean and variance
            out = torch.native_batch_norm(c, bn_w, bn_b, mean, invstd, False, 0.0, cfg.eps)[0]
        u = out.relu_()
    return c, u


def _batch_norm_args(bn: nn.BatchNorm2d, c_shape: tuple[int, ...]):
    """(running_mean, running_var, batch_stats, momentum) for one forward of ``bn``: its
    bookkeeping (``num_batches_tracked``) as ``nn.BatchNorm2d.forward`` does it, and
    ``F.batch_norm``'s checks."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    if batch_stats and c_shape[0] * c_shape[2] * c_shape[3] == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {torch.Size(c_shape)}")
    if batch_stats and bn.eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {bn.eps}")
    track = not bn.training or bn.track_running_stats
    return (bn.running_mean if track else None, bn.running_var if track else None, batch_stats, momentum)


def conv_bn_relu(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, *, save: str) -> torch.Tensor:
    """relu(bn(conv(x))) with the values, gradients and update of ``bn``'s running statistics of
    the three modules, saving for backward x, BN's (C,) statistics and the convolution's output
    (``save="conv_output"``; BN and ReLU are recomputed) or the block's output
    (``save="output"``; the convolution is recomputed). For where :func:`recompute_applies` and
    :func:`conv_bn_relu_applies` hold."""
    if save not in _SAVE:
        raise ValueError(f"conv_bn_relu: save must be one of {_SAVE}, got {save!r}")
    (kh, kw), (h, w) = conv.weight.shape[2:], x.shape[2:]
    out_h = (h + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    out_w = (w + 2 * conv.padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
    running_mean, running_var, batch_stats, momentum = _batch_norm_args(
        bn, (x.shape[0], conv.out_channels, out_h, out_w))
    cfg = _Config(tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups,
                  batch_stats, momentum, bn.eps, save)
    return _ConvBatchNormReLU.apply(x, conv.weight, conv.bias, bn.weight, bn.bias, running_mean,
                                    running_var, cfg)[0]


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
