"""SAN's second-order channel attention, against torch.cov and an eigendecomposition."""

from __future__ import annotations

import pytest
import torch

import chanattn
from chanattn.modules.soca import SoCA
from test_covariance import _eigh_sqrt


def _eigh_descriptor(x: torch.Tensor) -> torch.Tensor:
    """Row means of the exact square root of each sample's covariance (divided by N), (B, C)."""
    b, c = x.shape[:2]
    return torch.stack([_eigh_sqrt(torch.cov(x[i].reshape(c, -1), correction=0)).mean(1)
                        for i in range(b)])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_soca_defaults():
    m = chanattn.create("soca", 64)
    assert isinstance(m, SoCA)
    assert m.rd_channels == 8 and m.num_iters == 5 and m.crop_size == 1000
    assert m.fc1.bias is not None and m.fc2.bias is not None
    assert chanattn.module_info("soca").kind == "channel"


def test_descriptor_with_the_default_iterations_matches_eigh_on_a_small_input():
    """5 iterations (SAN's) on a small, well-conditioned covariance: 4 channels, 16 x 16."""
    x = torch.randn(3, 4, 16, 16, dtype=torch.float64)
    m = SoCA(4).double()
    z = m.descriptor(x)
    assert z.shape == (3, 4, 1, 1)
    assert _rel(z.flatten(1), _eigh_descriptor(x)) < 1e-3


def test_descriptor_with_more_iterations_matches_eigh_at_more_channels():
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    z = SoCA(16, num_iters=20).double().descriptor(x)
    assert _rel(z.flatten(1), _eigh_descriptor(x)) < 1e-6


def test_soca_forward_matches_a_direct_computation():
    m = SoCA(16, num_iters=20).double()
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    z = _eigh_descriptor(x)  # (B, C)
    w1, b1 = m.fc1.weight[:, :, 0, 0], m.fc1.bias
    w2, b2 = m.fc2.weight[:, :, 0, 0], m.fc2.bias
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)  # (B, C)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * s[:, :, None, None], rtol=1e-6, atol=1e-8)


def test_crop_uses_the_centre_of_large_inputs():
    x = torch.randn(2, 8, 10, 7, dtype=torch.float64)
    m = SoCA(8, num_iters=20, crop_size=4).double()
    centre = x[:, :, 3:7, 1:5]  # rows (10 - 4) // 2 .. +4, columns (7 - 4) // 2 .. +4
    assert _rel(m.descriptor(x).flatten(1), _eigh_descriptor(centre)) < 1e-6
    # no crop below the size, and crop_size=None never crops
    assert _rel(m.descriptor(x[:, :, :4, :3]).flatten(1), _eigh_descriptor(x[:, :, :4, :3])) < 1e-6
    uncropped = SoCA(8, num_iters=20, crop_size=None).double()
    assert _rel(uncropped.descriptor(x).flatten(1), _eigh_descriptor(x)) < 1e-6


def test_soca_at_one_position_is_finite_with_a_zero_descriptor():
    m = SoCA(16)
    x = torch.randn(2, 16, 1, 1, requires_grad=True)
    assert torch.equal(m.descriptor(x), torch.zeros(2, 16, 1, 1))
    y = m(x)
    s = torch.sigmoid(m.fc2(torch.relu(m.fc1(torch.zeros(1, 16, 1, 1)))))
    torch.testing.assert_close(y, x * s)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_soca_bfloat16():
    m = SoCA(16).bfloat16()
    x = torch.randn(2, 16, 5, 5).bfloat16()
    y = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    ref = SoCA(16)
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    torch.testing.assert_close(y.float(), ref(x.float()), rtol=3e-2, atol=3e-2)


def test_soca_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"SoCA.*num_iters"):
        SoCA(16, num_iters=0)
    with pytest.raises(ValueError, match=r"SoCA.*crop_size"):
        SoCA(16, crop_size=0)
    with pytest.raises(ValueError, match=r"SoCA.*eps"):
        SoCA(16, eps=0.0)


def test_recomputed_iterations_give_the_same_gradients_and_save_less():
    """Training recomputes the Newton-Schulz iterations in the backward (activation
    checkpointing, chanattn.fast's soca.checkpoint): the same gradients as the formula keeping
    them, a fraction of the saved memory."""
    from torch.autograd.graph import saved_tensors_hooks

    torch.manual_seed(0)
    m = chanattn.create("soca", 64).double()
    x = torch.randn(2, 64, 6, 5, dtype=torch.double)

    def run():
        saved: dict[int, int] = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        xi = x.clone().requires_grad_(True)
        with saved_tensors_hooks(pack, lambda t: t):
            y = m(xi)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(),
                                    [xi, *m.parameters()])
        return y.detach(), grads, sum(saved.values())

    assert chanattn.explain(m, x.clone().requires_grad_(True)).chosen == "soca.checkpoint"
    y1, g1, saved1 = run()
    with chanattn.fast_paths(False):
        y2, g2, saved2 = run()
    torch.testing.assert_close(y1, y2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert saved1 < saved2 / 3
