"""Second-order pooling helpers shared by GSoP-Net and SAN's SoCA: per-sample covariance pooling
and the matrix square root by coupled Newton-Schulz iterations with trace pre-normalisation and
post-compensation, as in iSQRT-COV: Li, Xie, Wang, Gao, "Towards Faster Training of Global
Covariance Pooling Networks by Iterative Matrix Square Root Normalization" (CVPR 2018,
https://arxiv.org/abs/1712.01034).

Nothing here is registered: these are plain functions, importable as
``from chanattn.modules.covariance import covariance_pool, sqrtm_newton_schulz, triu_vectorize``.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import InputError

__all__ = ["covariance_pool", "sqrtm_newton_schulz", "tril_vectorize", "triu_vectorize"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# devices with an autocast state to switch off (``torch.autocast`` raises for others, e.g. meta)
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "hpu", "mps")


def _no_autocast(device: torch.device):
    """A context with autocast disabled on ``device``'s type, where it has one."""
    if device.type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _working(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 where it is half or bfloat16: second-order statistics and the iterated
    products of Newton-Schulz lose most of their digits in 8 or 11 mantissa bits."""
    return t.float() if t.dtype in _LOW_PRECISION else t


def covariance_pool(x: torch.Tensor, correction: int = 0) -> torch.Tensor:
    """The covariance of the channels over the positions, one matrix per sample.

    Sigma_b = 1 / (N - correction) * sum_n (x_bn - mu_b)(x_bn - mu_b)^T, with x_bn in R^C the
    feature at position n of sample b and mu_b their mean over the N = H * W positions.

    ``correction=0`` (default) divides by N as MPN-COV's ``CovpoolLayer`` (used by GSoP-Net and
    SAN) does; ``correction=1`` is the unbiased estimate, ``torch.cov``'s default. Where
    N - correction < 1 (a single position), the result is the zero matrix (every centred feature
    is zero), not the NaN that ``torch.cov`` gives. Half and bfloat16 inputs are computed in
    float32 and returned in their own dtype; autocast is disabled inside.

    Args:
        x: (B, C, H, W) or (B, C, N).
        correction: subtracted from N in the divisor (default 0).

    Returns:
        (B, C, C), symmetric positive semi-definite.
    """
    if x.dim() not in (3, 4):
        raise InputError(f"covariance_pool: expected a (B, C, H, W) or (B, C, N) tensor, got shape "
                         f"{tuple(x.shape)}")
    if isinstance(correction, bool) or not isinstance(correction, int) or correction < 0:
        raise InputError(f"covariance_pool: correction must be an int >= 0, got {correction!r}")
    with _no_autocast(x.device):
        f = _working(x).flatten(2)  # (B, C, N)
        n = f.shape[-1]
        f = f - f.mean(-1, keepdim=True)  # centred, (B, C, N)
        cov = torch.bmm(f, f.transpose(1, 2)) / max(n - correction, 1)  # (B, C, C)
    return cov.to(x.dtype)


def sqrtm_newton_schulz(a: torch.Tensor, num_iters: int = 5, eps: float = 1e-8) -> torch.Tensor:
    """An approximate square root of symmetric positive semi-definite matrices by the coupled
    Newton-Schulz iteration, with trace pre-normalisation and post-compensation (iSQRT-COV).

        A = a / (tr(a) + eps);  Y_0 = A, Z_0 = I;
        T_k = (3I - Z_k Y_k) / 2,  Y_{k+1} = Y_k T_k,  Z_{k+1} = T_k Z_k;
        sqrtm(a) ~= sqrt(tr(a) + eps) * Y_K,  K = ``num_iters``.

    Only matrix products: differentiable by autograd everywhere (a polynomial in ``a`` scaled by
    a smooth function of its trace), and its gradient is finite even at the zero matrix, which
    the ``eps`` guards (the zero matrix maps to the zero matrix).

    Accuracy: after the trace normalisation the eigenvalues of A sum to 1, so for an n x n matrix
    they are about 1/n or less, and the iteration needs more steps the larger n and the condition
    number. The reference's 5 iterations (SAN; GSoP-Net's head uses 3) match an
    eigendecomposition to about 1e-3 only for small, well-conditioned matrices (n ~ 4); for a
    64 x 64 covariance they give an approximation with ~20% relative (Frobenius) error, which the
    networks are trained with. Once the iteration is close, it converges quadratically: 10
    iterations reach ~1e-6 on 64 x 64 covariances of condition number ~10, 15 reach ~1e-9 at a
    condition number of 1000. Half and bfloat16 inputs are computed in float32; autocast is
    disabled inside.

    Args:
        a: (..., n, n) symmetric positive semi-definite matrices.
        num_iters: Newton-Schulz iterations K (default 5, SAN's; >= 1).
        eps: added to the trace before the normalisation (default 1e-8).

    Returns:
        (..., n, n), in the dtype of ``a``.
    """
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise InputError(f"sqrtm_newton_schulz: expected (..., n, n) matrices, got shape {tuple(a.shape)}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise InputError(f"sqrtm_newton_schulz: num_iters must be a positive int, got {num_iters!r}")
    with _no_autocast(a.device):
        m = _working(a)
        n = m.shape[-1]
        eye = torch.eye(n, dtype=m.dtype, device=m.device)  # broadcasts over the batch dims
        norm = m.diagonal(dim1=-2, dim2=-1).sum(-1) + eps  # (...)
        norm = norm[..., None, None]  # (..., 1, 1)
        y = m / norm  # pre-normalised, eigenvalues in [0, 1]
        z = eye
        for k in range(num_iters):
            t = 0.5 * (3.0 * eye - z @ y)
            y = y @ t
            if k < num_iters - 1:  # the last Z is never used
                z = t @ z
        out = y * norm.sqrt()  # post-compensation
    return out.to(a.dtype)


def triu_vectorize(m: torch.Tensor) -> torch.Tensor:
    """The upper triangle (diagonal included) of square matrices, row by row, as a vector.

    Args:
        m: (..., n, n).

    Returns:
        (..., n * (n + 1) / 2): m[i, j] for i <= j in row-major order.
    """
    if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
        raise InputError(f"triu_vectorize: expected (..., n, n) matrices, got shape {tuple(m.shape)}")
    n = m.shape[-1]
    rows, cols = torch.triu_indices(n, n, device=m.device)
    return m[..., rows, cols]


def tril_vectorize(m: torch.Tensor) -> torch.Tensor:
    """The lower triangle (diagonal included) of square matrices, row by row, as a vector: the
    order of MPN-COV's ``Triuvec`` in the official GSoP and iSQRT-COV code (which indexes the
    transposed upper-triangle mask). For a symmetric matrix, the same numbers as
    :func:`triu_vectorize`, in another order.

    Args:
        m: (..., n, n).

    Returns:
        (..., n * (n + 1) / 2): m[i, j] for i >= j in row-major order.
    """
    if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
        raise InputError(f"tril_vectorize: expected (..., n, n) matrices, got shape {tuple(m.shape)}")
    n = m.shape[-1]
    rows, cols = torch.tril_indices(n, n, device=m.device)
    return m[..., rows, cols]
