"""SRM: style pooling with a finite std at 1 x 1, the zero-initialised CFC, BN, no weight decay."""

from __future__ import annotations

import pytest
import torch

import chanattn
from chanattn.modules.srm import SRM


def _randomise(m: SRM) -> None:
    with torch.no_grad():
        m.cfc.copy_(torch.randn_like(m.cfc))
        m.bn.weight.copy_(torch.rand_like(m.bn.weight) + 0.5)
        m.bn.bias.copy_(torch.randn_like(m.bn.bias) * 0.3)
        m.bn.running_mean.copy_(torch.randn_like(m.bn.running_mean) * 0.2)
        m.bn.running_var.copy_(torch.rand_like(m.bn.running_var) + 0.5)


def _style(x: torch.Tensor, eps: float, correction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(b, c) mean and sqrt(var + eps) by torch.mean / torch.var: (B, C) each."""
    mean = torch.stack([torch.stack([xc.mean() for xc in xb]) for xb in x])
    var = torch.stack([torch.stack([torch.var(xc.flatten(), correction=correction) for xc in xb])
                       for xb in x])
    return mean, (var + eps).sqrt()


def test_registered_and_default_shape():
    m = chanattn.create("srm", 32)
    assert isinstance(m, SRM) and chanattn.module_info("srm").kind == "channel"
    assert m.cfc.shape == (32, 2)
    assert SRM.batchnorm_on_pooled


def test_cfc_starts_at_zero_so_the_gate_is_sigmoid_of_bn_of_zero():
    m = SRM(16)
    assert torch.equal(m.cfc, torch.zeros(16, 2))
    x = torch.randn(4, 16, 5, 6) * 3 + 1
    # training, a fresh BN: BN(0) = bias = 0, so the gate is sigmoid(0) = 1/2 for every input
    torch.testing.assert_close(m.train()(x), x * 0.5)
    # eval, with non-trivial running statistics and affine parameters: the gate is
    # sigmoid(BN(0)) = sigmoid((0 - mu) / sqrt(var + eps) * w + b), whatever the input
    with torch.no_grad():
        m.bn.weight.copy_(torch.rand(16) + 0.5)
        m.bn.bias.copy_(torch.randn(16))
        m.bn.running_mean.copy_(torch.randn(16))
        m.bn.running_var.copy_(torch.rand(16) + 0.5)
    m.eval()
    bn = m.bn
    expected = torch.sigmoid((0 - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
                             + bn.bias)
    with torch.no_grad():
        for inp in (x, torch.randn(2, 16, 1, 1), torch.randn(3, 16, 9, 2) * 10):
            torch.testing.assert_close(m(inp), inp * expected.view(1, 16, 1, 1))


@pytest.mark.parametrize("unbiased", [True, False])
def test_eval_matches_a_direct_computation(unbiased):
    torch.manual_seed(3)
    m = SRM(8, unbiased=unbiased).double()
    _randomise(m)
    m.eval()
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64)
    mean, std = _style(x, 1e-5, correction=1 if unbiased else 0)
    z = m.cfc[:, 0] * mean + m.cfc[:, 1] * std  # (B, C)
    bn = m.bn
    z_hat = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = x * torch.sigmoid(z_hat)[:, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected)


def test_training_uses_batch_statistics_of_the_pooled_values():
    torch.manual_seed(4)
    m = SRM(8).double()
    _randomise(m)
    m.train()
    x = torch.randn(5, 8, 3, 3, dtype=torch.float64)
    mean, std = _style(x, 1e-5, correction=1)
    z = m.cfc[:, 0] * mean + m.cfc[:, 1] * std  # (B, C)
    mu, var = z.mean(0), z.var(0, correction=0)
    z_hat = (z - mu) / torch.sqrt(var + m.bn.eps) * m.bn.weight + m.bn.bias
    torch.testing.assert_close(m(x), x * torch.sigmoid(z_hat)[:, :, None, None])


def test_std_is_finite_at_1x1_and_equals_sqrt_eps():
    m = SRM(16)
    x = torch.randn(2, 16, 1, 1, requires_grad=True)
    t = m.style_pooling(x)
    torch.testing.assert_close(t[..., 0], x.detach()[:, :, 0, 0])
    torch.testing.assert_close(t[..., 1], torch.full((2, 16), 1e-5 ** 0.5))
    _randomise(m)
    for mode in (m.train(), m.eval()):
        y = mode(x)
        assert torch.isfinite(y).all()
        grad, = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(grad).all()
    # a constant channel also has a finite gradient (std = sqrt(eps), not sqrt(0))
    xc = torch.ones(2, 16, 4, 4, requires_grad=True)
    grad, = torch.autograd.grad(m.train()(xc).sum(), xc)
    assert torch.isfinite(grad).all()


def test_no_weight_decay_lists_every_parameter():
    m = SRM(16)
    assert m.no_weight_decay() == {"cfc", "bn.weight", "bn.bias"}
    assert m.no_weight_decay() == {n for n, _ in m.named_parameters()}


def test_training_needs_two_samples_eval_takes_one():
    m = SRM(16).train()
    with pytest.raises(ValueError, match=r"SRM.*batch of at least 2"):
        m(torch.randn(1, 16, 4, 4))
    assert m.eval()(torch.randn(1, 16, 4, 4)).shape == (1, 16, 4, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"SRM.*eps"):
        SRM(16, eps=0)
    with pytest.raises(ValueError, match=r"SRM.*channels"):
        SRM(-1)
