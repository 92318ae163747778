"""The second-order pooling helpers: covariance pooling against torch.cov, the Newton-Schulz square
root against an eigendecomposition, and its gradient."""

from __future__ import annotations

import itertools

import pytest
import torch

from chanattn.modules.covariance import covariance_pool, sqrtm_newton_schulz, tril_vectorize, triu_vectorize


def _eigh_sqrt(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def _rel_err(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per matrix, ||approx - exact||_F / ||exact||_F."""
    return (approx - exact).norm(dim=(-2, -1)) / exact.norm(dim=(-2, -1))


def _spd_with_condition(b: int, n: int, cond: float, g: torch.Generator) -> torch.Tensor:
    """Random SPD matrices with eigenvalues log-spaced from 1 down to 1 / cond."""
    q, _ = torch.linalg.qr(torch.randn(b, n, n, dtype=torch.float64, generator=g))
    w = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return (q * w) @ q.transpose(-1, -2)


# ---------------------------------------------------------------- covariance pooling

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("correction", [0, 1])
def test_covariance_pool_matches_torch_cov_per_sample(dtype, correction):
    x = torch.randn(3, 6, 5, 7, dtype=dtype) * 2 + 1
    cov = covariance_pool(x, correction=correction)
    assert cov.shape == (3, 6, 6) and cov.dtype == dtype
    for b in range(3):
        expected = torch.cov(x[b].reshape(6, -1), correction=correction)
        torch.testing.assert_close(cov[b], expected)


def test_covariance_pool_takes_a_flattened_input_and_channels_last():
    x = torch.randn(2, 5, 4, 3)
    ref = covariance_pool(x)
    torch.testing.assert_close(covariance_pool(x.flatten(2)), ref)
    torch.testing.assert_close(covariance_pool(x.contiguous(memory_format=torch.channels_last)), ref)


@pytest.mark.parametrize("correction", [0, 1])
def test_covariance_of_a_single_position_is_zero(correction):
    x = torch.randn(2, 4, 1, 1, requires_grad=True)
    cov = covariance_pool(x, correction=correction)
    assert torch.equal(cov, torch.zeros(2, 4, 4))
    # and the square root downstream stays finite, values and gradient
    root = sqrtm_newton_schulz(cov)
    assert torch.equal(root, torch.zeros(2, 4, 4))
    root.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_covariance_pool_low_precision_is_computed_in_float32():
    xb = (torch.randn(2, 8, 6, 6) * 3 + 5).bfloat16()
    cov = covariance_pool(xb)
    assert cov.dtype == torch.bfloat16
    # the same as computing in float32 and rounding the result once
    assert torch.equal(cov, covariance_pool(xb.float()).bfloat16())
    root = sqrtm_newton_schulz(cov, num_iters=8)
    assert root.dtype == torch.bfloat16
    assert torch.equal(root, sqrtm_newton_schulz(cov.float(), num_iters=8).bfloat16())


def test_covariance_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="covariance_pool"):
        covariance_pool(torch.randn(2, 3))
    with pytest.raises(ValueError, match="correction"):
        covariance_pool(torch.randn(2, 3, 4), correction=-1)


# ---------------------------------------------------------------- Newton-Schulz square root

def test_default_five_iterations_match_eigh_on_small_covariances():
    """The module default (5 iterations, SAN's) on what covariance pooling gives for a small C:
    4 channels over 16 x 16 positions (condition number ~2). With the trace normalisation the
    eigenvalues are ~1/n, so 5 iterations reach 1e-3 only for such small n (see the next test for
    larger matrices)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 16, 16, dtype=torch.float64, generator=g)
    cov = covariance_pool(x)
    err = _rel_err(sqrtm_newton_schulz(cov), _eigh_sqrt(cov))
    assert err.max() < 1e-3, err


def test_more_iterations_match_eigh_on_large_ill_conditioned_matrices():
    """64 x 64 SPD matrices with condition number 1000: 5 iterations are far off; 20 converge."""
    g = torch.Generator().manual_seed(1)
    a = _spd_with_condition(4, 64, 1000.0, g) * 7.0
    exact = _eigh_sqrt(a)
    assert _rel_err(sqrtm_newton_schulz(a, num_iters=5), exact).max() > 1e-2
    err = _rel_err(sqrtm_newton_schulz(a, num_iters=20), exact)
    assert err.max() < 1e-3, err
    assert err.max() < 1e-8, err  # converged, not merely close


def test_newton_schulz_error_decreases_with_the_iterations():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 64, 16, 16, dtype=torch.float64, generator=g)
    cov = covariance_pool(x)  # a typical 64 x 64 covariance, condition number ~10
    exact = _eigh_sqrt(cov)
    errs = [_rel_err(sqrtm_newton_schulz(cov, num_iters=k), exact).max().item() for k in (1, 3, 5, 8, 12)]
    assert all(later < earlier for earlier, later in itertools.pairwise(errs)), errs
    assert errs[-1] < 1e-6, errs


def test_newton_schulz_float32_and_batched_shapes():
    g = torch.Generator().manual_seed(3)
    a = _spd_with_condition(6, 4, 3.0, g).reshape(2, 3, 4, 4)
    out = sqrtm_newton_schulz(a.float(), num_iters=12)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    assert _rel_err(out.double(), _eigh_sqrt(a)).max() < 1e-5


def test_newton_schulz_on_the_zero_matrix_is_zero_with_a_finite_gradient():
    a = torch.zeros(2, 5, 5, dtype=torch.float64, requires_grad=True)
    out = sqrtm_newton_schulz(a)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_newton_schulz_gradcheck():
    g = torch.Generator().manual_seed(4)
    m = torch.randn(2, 3, 3, dtype=torch.float64, generator=g)
    a = (m @ m.transpose(-1, -2) + 0.5 * torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sqrtm_newton_schulz(t), (a,))
    assert torch.autograd.gradcheck(lambda t: sqrtm_newton_schulz(t, num_iters=1), (a,))


def test_covariance_then_square_root_gradcheck():
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sqrtm_newton_schulz(covariance_pool(t)), (x,))


def test_newton_schulz_gradient_matches_the_eigh_square_root_gradient_when_converged():
    g = torch.Generator().manual_seed(5)
    a0 = _spd_with_condition(1, 4, 4.0, g)
    w = torch.randn(1, 4, 4, dtype=torch.float64, generator=g)
    grads = []
    for f in (lambda t: sqrtm_newton_schulz(t, num_iters=20), _eigh_sqrt):
        a = a0.clone().requires_grad_(True)
        (f(a) * w).sum().backward()
        grads.append(a.grad)
    # eigh's gradient is not symmetrised: compare the symmetric parts
    sym = [0.5 * (gr + gr.transpose(-1, -2)) for gr in grads]
    torch.testing.assert_close(sym[0], sym[1], rtol=1e-6, atol=1e-8)


def test_newton_schulz_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sqrtm_newton_schulz"):
        sqrtm_newton_schulz(torch.randn(3, 4))
    with pytest.raises(ValueError, match="num_iters"):
        sqrtm_newton_schulz(torch.eye(3), num_iters=0)


# ---------------------------------------------------------------- upper triangle

def test_triu_vectorize_matches_a_loop():
    m = torch.randn(2, 4, 4)
    expected = torch.stack([torch.stack([m[b, i, j] for i in range(4) for j in range(i, 4)])
                            for b in range(2)])
    torch.testing.assert_close(triu_vectorize(m), expected)
    assert triu_vectorize(torch.randn(3, 256, 256)).shape == (3, 256 * 257 // 2)


def test_tril_vectorize_matches_a_loop():
    m = torch.randn(2, 5, 5)
    rows = [[m[b, i, j] for i in range(5) for j in range(i + 1)] for b in range(2)]
    expected = torch.stack([torch.stack(r) for r in rows])
    torch.testing.assert_close(tril_vectorize(m), expected)
    with pytest.raises(ValueError, match=r"tril_vectorize.*\(2, 3\)"):
        tril_vectorize(torch.randn(2, 3))


def test_autocast_is_disabled_inside_and_meta_tensors_work():
    x = torch.randn(2, 8, 5, 5)
    ref_cov = covariance_pool(x)
    ref_root = sqrtm_newton_schulz(ref_cov)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cov = covariance_pool(x)
        root = sqrtm_newton_schulz(cov)
    assert cov.dtype == torch.float32 and root.dtype == torch.float32
    torch.testing.assert_close(cov, ref_cov)
    torch.testing.assert_close(root, ref_root)
    # shape inference on the meta device (no autocast state there)
    meta = sqrtm_newton_schulz(covariance_pool(torch.empty(2, 8, 5, 5, device="meta")))
    assert meta.shape == (2, 8, 8) and meta.device.type == "meta"
