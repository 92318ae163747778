"""Circular ECA (ceca): the circular convolution over the channels against an explicit sum with
indices modulo C; it equals ECA away from the ends of the channel axis and differs at them."""

from __future__ import annotations

import pytest
import torch

import chanattn
from chanattn.modules.ceca import CircularECA


def _explicit(x: torch.Tensor, weight: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """y_c = x_c * sigmoid(sum_j w_j s_{(c + j - p) mod C} + b), s = GAP(x)."""
    b, c = x.shape[:2]
    k = weight.numel()
    p = (k - 1) // 2
    s = x.mean((2, 3))
    logits = torch.stack([sum(weight[j] * s[:, (ch + j - p) % c] for j in range(k)) + bias
                          for ch in range(c)], 1)
    return x * torch.sigmoid(logits).view(b, c, 1, 1)


@pytest.mark.parametrize(("c", "k"), [(16, 3), (64, None), (5, 5), (3, 7), (1, 3), (9, 1)])
def test_against_an_explicit_circular_sum(c, k):
    torch.manual_seed(c)
    m = CircularECA(c, kernel_size=k).double()
    with torch.no_grad():
        m.conv.weight.copy_(torch.randn_like(m.conv.weight))
    x = torch.randn(2, c, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _explicit(x, m.conv.weight.flatten()))


def test_bias_option():
    m = CircularECA(8, kernel_size=3, bias=True).double()
    with torch.no_grad():
        m.conv.bias.fill_(0.7)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _explicit(x, m.conv.weight.flatten(), 0.7))


def test_equals_eca_except_at_the_ends():
    torch.manual_seed(3)
    ceca, eca = chanattn.create("ceca", 32, kernel_size=5), chanattn.create("eca", 32, kernel_size=5)
    eca.conv.weight.data.copy_(ceca.conv.weight.data)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        a, b = ceca(x), eca(x)
    torch.testing.assert_close(a[:, 2:-2], b[:, 2:-2])  # p = 2 channels from either end: the same
    assert not torch.allclose(a[:, :2], b[:, :2]) and not torch.allclose(a[:, -2:], b[:, -2:])


def test_kernel_size_follows_eca():
    assert [chanattn.create("ceca", c).kernel_size for c in (64, 256, 512, 2048)] == [3, 5, 5, 7]
    assert chanattn.create("ceca", 4).kernel_size == 1  # ECA's rule; timm's CecaModule raises it to 3
    with pytest.raises(ValueError, match="CircularECA: kernel_size must be odd"):
        chanattn.create("ceca", 16, kernel_size=4)
    assert chanattn.module_info("ceca").kind == "channel"
