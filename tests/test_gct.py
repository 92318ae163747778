"""GCT: the identity at initialisation; l2 and l1 modes against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

import chanattn
from chanattn.modules.gct import GCT


def _direct(x: torch.Tensor, alpha, gamma, beta, mode: str, eps: float = 1e-5) -> torch.Tensor:
    """GCT written with explicit loops over samples and channels."""
    b, c = x.shape[:2]
    alpha, gamma, beta = alpha.flatten(), gamma.flatten(), beta.flatten()
    out = torch.empty_like(x)
    for i in range(b):
        if mode == "l2":
            emb = [alpha[k] * math.sqrt(float((x[i, k] ** 2).sum()) + eps) for k in range(c)]
            norm = math.sqrt(sum(float(e) ** 2 for e in emb) / c + eps)
        else:
            emb = [alpha[k] * float(x[i, k].abs().sum()) for k in range(c)]
            norm = sum(abs(float(e)) for e in emb) / c + eps
        for k in range(c):
            gate = 1 + math.tanh(float(emb[k]) * float(gamma[k]) / norm + float(beta[k]))
            out[i, k] = x[i, k] * gate
    return out


def test_registered():
    m = chanattn.create("gct", 16)
    assert isinstance(m, GCT) and m.mode == "l2" and m.eps == 1e-5
    assert chanattn.module_info("gct").kind == "channel"


@pytest.mark.parametrize("mode", ["l2", "l1"])
def test_identity_at_initialisation(mode):
    m = GCT(32, mode=mode)
    assert torch.equal(m.alpha, torch.ones(1, 32, 1, 1))
    assert torch.equal(m.gamma, torch.zeros(1, 32, 1, 1))
    assert torch.equal(m.beta, torch.zeros(1, 32, 1, 1))
    for x in (torch.randn(2, 32, 7, 5) * 4, torch.randn(3, 32, 1, 1), torch.zeros(1, 32, 2, 2)):
        assert torch.equal(m.train()(x), x)
        assert torch.equal(m.eval()(x), x)


@pytest.mark.parametrize("mode", ["l2", "l1"])
def test_matches_a_direct_computation(mode):
    torch.manual_seed(7)
    m = GCT(6, mode=mode).double()
    with torch.no_grad():
        m.alpha.copy_(torch.rand(1, 6, 1, 1) * 2 + 0.1)
        m.gamma.copy_(torch.randn(1, 6, 1, 1))
        m.beta.copy_(torch.randn(1, 6, 1, 1) * 0.5)
    x = torch.randn(3, 6, 4, 3, dtype=torch.float64)
    expected = _direct(x, m.alpha.detach(), m.gamma.detach(), m.beta.detach(), mode)
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected)


def test_l1_and_l2_differ_and_gate_is_in_0_2():
    torch.manual_seed(8)
    x = torch.randn(2, 16, 5, 5)
    outs = {}
    for mode in ("l2", "l1"):
        m = GCT(16, mode=mode)
        with torch.no_grad():
            m.gamma.copy_(torch.randn(1, 16, 1, 1) * 3)
            m.beta.copy_(torch.randn(1, 16, 1, 1))
            gate = m.attention(x)
        assert gate.shape == (2, 16, 1, 1)
        assert (gate >= 0).all() and (gate <= 2).all()
        outs[mode] = gate
    assert not torch.allclose(outs["l1"], outs["l2"])


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match=r"GCT.*mode.*'l3'"):
        GCT(16, mode="l3")
    with pytest.raises(ValueError, match=r"GCT.*eps"):
        GCT(16, eps=-1.0)


def test_no_weight_decay_on_beta():
    m = GCT(16)
    assert m.no_weight_decay() == {"beta"}
    assert {n for n, _ in m.named_parameters()} == {"alpha", "gamma", "beta"}
