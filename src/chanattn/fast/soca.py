"""SoCA in training: the Newton-Schulz iterations under ``torch.utils.checkpoint``. Autograd keeps
~3 (B, C, C) matrices per iteration (23x the input at 8x256x14x14); recomputing the iterations in
the backward keeps only the covariance (~3x)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..modules.covariance import covariance_pool, sqrtm_newton_schulz
from ..modules.soca import SoCA
from .registry import FastPath, register


def _soca(m: SoCA, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    b, c = x.shape[0], x.shape[1]
    cov = covariance_pool(m._crop(x))  # (B, C, C)
    z = checkpoint(lambda a: sqrtm_newton_schulz(a, m.num_iters, m.eps).mean(-1), cov, use_reentrant=False)
    s = m.fc2(m.act(m.fc1(z.reshape(b, c, 1, 1))))  # (B, C, 1, 1)
    return x * m.gate(s)


register(FastPath(
    "soca.checkpoint", SoCA, _soca, purpose="memory", autograd=True,
    summary="the Newton-Schulz iterations recomputed in the backward (torch.utils.checkpoint)"))
