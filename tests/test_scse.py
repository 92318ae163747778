"""scSE: cSE and sSE written out with explicit sums, combined by addition (the MICCAI paper) and
by the element-wise max (the authors' code), the authors' layer sizes."""

from __future__ import annotations

import pytest
import torch

import chanattn
from chanattn.modules.scse import ConcurrentSpatialChannelSE


def _direct(m: ConcurrentSpatialChannelSE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * s_c, x * s_s) with the FCs and the 1x1 convolution as explicit sums."""
    b, c = x.shape[:2]
    w1, b1 = m.fc1.weight.view(-1, c), m.fc1.bias
    w2, b2 = m.fc2.weight.view(c, -1), m.fc2.bias
    ws, bs = m.conv.weight.view(c), m.conv.bias
    y_c, y_s = torch.empty_like(x), torch.empty_like(x)
    for n in range(b):
        z = x[n].mean((1, 2))  # (C,)
        hidden = torch.relu(torch.stack([(w1[r] * z).sum() + b1[r] for r in range(w1.shape[0])]))
        s_c = torch.sigmoid(torch.stack([(w2[i] * hidden).sum() + b2[i] for i in range(c)]))
        s_s = torch.sigmoid(sum(ws[i] * x[n, i] for i in range(c)) + bs)  # (H, W)
        y_c[n] = x[n] * s_c.view(c, 1, 1)
        y_s[n] = x[n] * s_s
    return y_c, y_s


@pytest.mark.parametrize("fusion", ["add", "max"])
def test_matches_a_direct_computation(fusion):
    torch.manual_seed(0)
    m = ConcurrentSpatialChannelSE(6, fusion=fusion).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    y_c, y_s = _direct(m, x)
    expected = y_c + y_s if fusion == "add" else torch.maximum(y_c, y_s)
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)
    if fusion == "max":  # the max picks one of the two per element, not always the same one
        picked_c = m(x) == y_c
        assert picked_c.any() and (~picked_c).any()


def test_defaults_follow_the_paper_and_the_authors_layers():
    m = chanattn.create("scse", 64)
    assert m.fusion == "add" and m.rd_channels == 32  # reduction_ratio = 2
    assert chanattn.module_info("scse").kind == "hybrid"
    # cSE: two FCs with biases; sSE: a 1x1 convolution C -> 1 with bias
    assert sum(p.numel() for p in m.parameters()) == (64 * 32 + 32) + (32 * 64 + 64) + (64 + 1)
    with pytest.raises(ValueError, match=r"ConcurrentSpatialChannelSE: fusion must be one of "
                                         r"\('add', 'max'\), got 'mul'"):
        chanattn.create("scse", 64, fusion="mul")


def test_add_is_one_factor_of_x():
    torch.manual_seed(1)
    m = ConcurrentSpatialChannelSE(8)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * (m.channel_gate(x) + m.spatial_gate(x)))
        assert m.channel_gate(x).shape == (2, 8, 1, 1) and m.spatial_gate(x).shape == (2, 1, 5, 5)
