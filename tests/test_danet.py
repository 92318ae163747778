"""DANet's channel attention module: the identity at initialisation, the affinity against a loop
(the official max - energy, and the paper's Eq. 3), and why the official form is softmax(-E)."""

from __future__ import annotations

import math

import pytest
import torch

import chanattn
from chanattn.modules.danet import DANetChannelAttention


def _loop(x: torch.Tensor, gamma: float, affinity: str) -> torch.Tensor:
    """E_ij = <x_i, x_j> over positions; A_ij = softmax over j of (max_j E_ij - E_ij) (official)
    or of E_ij (paper); y_i = gamma sum_j A_ij x_j + x_i."""
    b, c = x.shape[:2]
    out = torch.empty_like(x)
    for n in range(b):
        v = [x[n, i].flatten() for i in range(c)]
        for i in range(c):
            e = [float((v[i] * v[j]).sum()) for j in range(c)]
            z = [max(e) - ej for ej in e] if affinity == "official" else e
            top = max(z)
            num = [math.exp(zj - top) for zj in z]
            a = [u / sum(num) for u in num]
            out[n, i] = gamma * sum(a[j] * x[n, j] for j in range(c)) + x[n, i]
    return out


def test_identity_at_initialisation():
    m = chanattn.create("danet_cam", 16)
    assert torch.equal(m.gamma, torch.zeros(1)) and sum(p.numel() for p in m.parameters()) == 1
    for x in (torch.randn(2, 16, 5, 7) * 3, torch.randn(1, 16, 1, 1)):
        assert torch.equal(m(x), x)


@pytest.mark.parametrize("affinity", ["official", "paper"])
def test_matches_a_loop(affinity):
    torch.manual_seed(0)
    m = DANetChannelAttention(5, affinity=affinity).double()
    with torch.no_grad():
        m.gamma.fill_(0.7)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64) * 0.5
    with torch.no_grad():
        torch.testing.assert_close(m(x), _loop(x, 0.7, affinity), rtol=1e-10, atol=1e-12)


def test_official_affinity_is_the_softmax_of_minus_the_energy():
    # The row maximum is a constant of each row: softmax_j(max - E_ij) = softmax_j(-E_ij), the
    # reverse of the paper's softmax_j(E_ij). A channel weighs least the channel most like it.
    torch.manual_seed(1)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    x = x / x.flatten(2).norm(dim=-1)[..., None, None]  # unit channels: E_ii = 1 > E_ij (Cauchy-Schwarz)
    q = x.flatten(2)
    energy = q @ q.transpose(1, 2)
    official = DANetChannelAttention(6).attention_matrix(x)
    paper = DANetChannelAttention(6, affinity="paper").attention_matrix(x)
    torch.testing.assert_close(official, (-energy).softmax(-1))
    torch.testing.assert_close(paper, energy.softmax(-1))
    # with channels of equal norm E_ii is the largest of row i: the paper's affinity weighs the
    # channel itself most, the official one least
    assert (paper.argmax(-1) == torch.arange(6)).all() and (official.argmin(-1) == torch.arange(6)).all()


def test_kind_and_errors():
    assert chanattn.module_info("danet_cam").kind == "communication"
    with pytest.raises(ValueError, match=r"DANetChannelAttention: affinity must be one of"):
        chanattn.create("danet_cam", 8, affinity="cosine")
