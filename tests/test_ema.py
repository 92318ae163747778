"""EMA: the grouped 1x1 and 3x3 branches and the cross-spatial learning against a computation
group by group with explicit sums, the official layers and the group rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.modules.ema import EfficientMultiScaleAttention


def _instance_norm(v: torch.Tensor, weight, bias, eps) -> torch.Tensor:
    mu = v.mean((1, 2), keepdim=True)
    var = ((v - mu) ** 2).mean((1, 2), keepdim=True)
    return (v - mu) / torch.sqrt(var + eps) * weight.view(-1, 1, 1) + bias.view(-1, 1, 1)


def _direct(m: EfficientMultiScaleAttention, x: torch.Tensor) -> torch.Tensor:
    b, c = x.shape[:2]
    g, cg = m.groups, c // m.groups
    out = torch.empty_like(x)
    w1, b1 = m.conv1x1.weight.view(cg, cg), m.conv1x1.bias
    for n in range(b):
        for k in range(g):
            v = x[n, k * cg:(k + 1) * cg]  # (C/G, H, W): one group of one sample
            row, col = v.mean(2), v.mean(1)  # (C/G, H) pooled along W, (C/G, W) pooled along H
            a_h = torch.sigmoid(torch.einsum("oi,ih->oh", w1, row) + b1[:, None])  # shared 1x1 conv
            a_w = torch.sigmoid(torch.einsum("oi,iw->ow", w1, col) + b1[:, None])
            x1 = _instance_norm(v * a_h[:, :, None] * a_w[:, None, :], m.gn.weight, m.gn.bias, m.gn.eps)
            x2 = F.conv2d(v[None], m.conv3x3.weight, m.conv3x3.bias, padding=1)[0]
            s1 = torch.softmax(x1.mean((1, 2)), 0)  # (C/G,)
            s2 = torch.softmax(x2.mean((1, 2)), 0)
            weights = sum(s1[i] * x2[i] + s2[i] * x1[i] for i in range(cg))  # (H, W)
            out[n, k * cg:(k + 1) * cg] = v * torch.sigmoid(weights)
    return out


@pytest.mark.parametrize(("c", "groups"), [(12, 3), (8, 8), (6, 1)])
def test_matches_a_group_by_group_computation(c, groups):
    torch.manual_seed(0)
    m = EfficientMultiScaleAttention(c, groups=groups).double()
    assert m.groups == groups
    with torch.no_grad():
        m.gn.weight.copy_(torch.rand(c // groups) + 0.5)
        m.gn.bias.copy_(torch.randn(c // groups))
    x = torch.randn(2, c, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _direct(m, x), rtol=1e-10, atol=1e-12)


def test_official_layers_and_groups_rule():
    m = chanattn.create("ema", 256)  # factor 32: groups of 8 channels
    assert m.groups == 32 and chanattn.module_info("ema").kind == "hybrid"
    assert m.conv1x1.weight.shape == (8, 8, 1, 1) and m.conv1x1.bias is not None
    assert m.conv3x3.weight.shape == (8, 8, 3, 3) and m.conv3x3.padding == (1, 1)
    assert m.conv3x3.bias is not None
    assert m.gn.num_groups == m.gn.num_channels == 8
    # per module: two convolutions with biases and the GroupNorm's affine: 10 (C/G)^2 + 4 C/G
    assert sum(p.numel() for p in m.parameters()) == 10 * 8 * 8 + 4 * 8
    assert [chanattn.create("ema", c).groups for c in (64, 16, 24, 31)] == [32, 16, 24, 31]
    assert chanattn.create("ema", 64, groups=8).groups == 8
    with pytest.raises(ValueError, match="EfficientMultiScaleAttention: groups must be a positive int"):
        chanattn.create("ema", 64, groups=0)


def test_batch_of_one_on_a_one_by_one_map():
    # nn.GroupNorm refuses a single value per group even in eval mode; the module normalises it.
    m = chanattn.create("ema", 4)
    y = m(torch.randn(1, 4, 1, 1))
    assert y.shape == (1, 4, 1, 1) and torch.isfinite(y).all()
