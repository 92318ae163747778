"""Strip pooling attention as timm defines it (strip): against a direct computation with 1-D
convolutions; without its convolutions, sigmoid(row mean + column mean)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.modules.strip import StripAttention


@pytest.mark.parametrize(("shape", "k"), [((2, 8, 5, 7), 3), ((1, 4, 1, 1), 3), ((2, 6, 9, 2), 5)])
def test_against_a_direct_computation(shape, k):
    c = shape[1]
    torch.manual_seed(k)
    m = StripAttention(c, kernel_size=k, bias=True).double()
    x = torch.randn(shape, dtype=torch.float64)
    wh, ww = m.conv_h.weight.detach().reshape(c, 1, k), m.conv_w.weight.detach().reshape(c, 1, k)
    a_h = F.conv1d(x.mean(3), wh, m.conv_h.bias.detach(), padding=k // 2, groups=c)  # (B, C, H)
    a_w = F.conv1d(x.mean(2), ww, m.conv_w.bias.detach(), padding=k // 2, groups=c)  # (B, C, W)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * torch.sigmoid(a_h[..., None] + a_w[:, :, None, :]))


def test_without_convolutions_the_factor_is_the_strip_means():
    m = chanattn.create("strip", 6, use_conv=False)
    assert not list(m.parameters())
    x = torch.randn(2, 6, 4, 5)
    expected = x * torch.sigmoid(x.mean(3, keepdim=True) + x.mean(2, keepdim=True))
    torch.testing.assert_close(m(x), expected)
    assert chanattn.module_info("strip").kind == "hybrid"
