"""BatchNorm inside autograd Functions that recompute instead of saving (used by gsop, bilinear).

A Function that contains a BatchNorm saves the BatchNorm's input and the per-channel statistics it
normalised with (the batch's mean and 1/std in training, the running ones in eval), and recomputes
the normalised output in its backward. The running statistics are updated once, in the forward,
by the same kernel as ``nn.BatchNorm2d`` on CPU (``torch.native_batch_norm``), so they come out
identical to the plain module's (on CUDA the module may take cuDNN's kernel instead, which rounds
differently); the backward is ATen's own (``native_batch_norm_backward``), the one autograd
runs for ``nn.BatchNorm2d``. Wrapping a BatchNorm in ``torch.utils.checkpoint`` instead would run
its forward twice and update the running statistics twice.

The Functions take the running statistics as inputs and return BN's per-channel statistics as
extra (non-differentiable) outputs, so that ``setup_context`` can save them: Functions written so
also run under ``torch.func`` transforms (``torch.func.grad``, ``functional_call``). Usage::

    running_mean, running_var, cfg = bn_args(self.bn)  # once per call: nn.BatchNorm2d's bookkeeping
    # in the Function's forward (return s1, s2 as outputs):
    y, s1, s2 = bn_forward(z, weight, bias, running_mean, running_var, cfg)
    # in its setup_context: save z and
    stats = bn_saved(cfg, running_mean, running_var, s1, s2)
    # in its backward:
    y = bn_apply(z, weight, bias, stats, cfg)
    dz, dw, db = bn_backward(dy, z, weight, stats, cfg, (True, need_w, need_b))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BNConfig", "autocast_on", "bn_apply", "bn_args", "bn_backward", "bn_forward", "bn_saved"]


@dataclass(frozen=True)
class BNConfig:
    """What ``nn.BatchNorm2d.forward`` passes to ``F.batch_norm`` besides tensors: whether the
    batch's statistics normalise (``training``), the running statistics' update factor, eps."""

    training: bool
    momentum: float
    eps: float


def autocast_on(x: torch.Tensor) -> bool:
    """True where autocast is enabled for ``x``'s device type: the Functions do not run there."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type without an autocast state
        return False


def bn_args(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor | None, torch.Tensor | None, BNConfig]:
    """(running_mean, running_var, config) for one forward of ``bn``, with its bookkeeping: in
    training with tracked statistics, ``num_batches_tracked`` goes up by one (call this once per
    forward, as the module would run). The running statistics are None where ``bn`` neither
    normalises with them nor updates them."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return (bn.running_mean if keep else None, bn.running_var if keep else None,
            BNConfig(use_batch, factor, bn.eps))


def bn_forward(z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               cfg: BNConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, save_mean, save_invstd): the BatchNorm of ``z`` by ATen's kernel (updating the running
    statistics in training) and the batch's mean and 1/std (empty where the running statistics
    normalise)."""
    return torch.native_batch_norm(z, weight, bias, running_mean, running_var, cfg.training,
                                   cfg.momentum, cfg.eps)


def bn_saved(cfg: BNConfig, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
             save_mean: torch.Tensor, save_invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two per-channel tensors to save: the batch's mean and 1/std where they normalised, the
    running mean and variance otherwise."""
    return (save_mean, save_invstd) if cfg.training else (running_mean, running_var)


def bn_apply(z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
             stats: tuple[torch.Tensor, torch.Tensor], cfg: BNConfig) -> torch.Tensor:
    """The BatchNorm's output recomputed from its input and ``stats`` (:func:`bn_saved`), as
    the CPU kernel computes it: z * alpha + beta, alpha = invstd * weight, beta = bias - mean * alpha."""
    mean, second = stats
    invstd = second if cfg.training else 1 / torch.sqrt(second + cfg.eps)
    alpha = invstd if weight is None else invstd * weight
    beta = -mean * alpha if bias is None else bias - mean * alpha
    shape = (1, -1) + (1,) * (z.dim() - 2)
    return torch.addcmul(beta.to(z.dtype).view(shape), z, alpha.to(z.dtype).view(shape))


def bn_backward(dy: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None,
                stats: tuple[torch.Tensor, torch.Tensor], cfg: BNConfig,
                mask: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """(dz, dweight, dbias) by ATen's BatchNorm backward; None where ``mask`` is False."""
    if cfg.training:
        running, saved = (None, None), stats
    else:
        running, saved = stats, (None, None)
    dz, dw, db = torch.ops.aten.native_batch_norm_backward(
        dy, z, weight, running[0], running[1], saved[0], saved[1], cfg.training, cfg.eps, list(mask))
    return (dz if mask[0] else None, dw if mask[1] else None, db if mask[2] else None)
