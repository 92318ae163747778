"""ELA (efficient local attention): the strips, the depthwise 1-D convolution, GroupNorm and the two
sigmoids against a direct computation; the shared layers of the paper and timm's per-direction
ones; the GroupNorm groups for any C."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.modules.ela import EfficientLocalAttention


def _randomise(m: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + 0.3)
    return m


def _strip_factor(z: torch.Tensor, weight: torch.Tensor, groups: int, gamma, beta, act) -> torch.Tensor:
    """sigmoid(act(GN(depthwise conv1d(z)))), z (B, C, L), with GroupNorm written out."""
    b, c, n = z.shape
    k = weight.numel() // c
    v = F.conv1d(z, weight.reshape(c, 1, k), padding=k // 2, groups=c)  # (B, C, L)
    vg = v.reshape(b, groups, -1)
    v = ((vg - vg.mean(2, keepdim=True)) / torch.sqrt(vg.var(2, unbiased=False, keepdim=True) + 1e-5))
    v = v.reshape(b, c, n) * gamma.view(1, c, 1) + beta.view(1, c, 1)
    return torch.sigmoid(act(v))


@pytest.mark.parametrize("shape", [(2, 32, 6, 9), (1, 16, 1, 5), (2, 48, 3, 3)])
def test_shared_layers_against_a_direct_computation(shape):
    c = shape[1]
    m = _randomise(EfficientLocalAttention(c).double())
    x = torch.randn(shape, dtype=torch.float64)
    wgt, g = m.conv.weight.detach(), m.num_groups
    gamma, beta = m.norm.weight.detach(), m.norm.bias.detach()
    a_h = _strip_factor(x.mean(3), wgt, g, gamma, beta, lambda v: v)  # (B, C, H)
    a_w = _strip_factor(x.mean(2), wgt, g, gamma, beta, lambda v: v)  # (B, C, W)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * a_h[..., None] * a_w[:, :, None, :])


def test_per_direction_layers_and_silu_as_timm():
    c = 12
    m = _randomise(EfficientLocalAttention(c, shared=False, num_groups=1, act_layer="silu").double())
    x = torch.randn(2, c, 5, 4, dtype=torch.float64)
    a_h = _strip_factor(x.mean(3), m.conv_h.weight.detach(), 1, m.norm_h.weight.detach(),
                        m.norm_h.bias.detach(), F.silu)
    a_w = _strip_factor(x.mean(2), m.conv_w.weight.detach(), 1, m.norm_w.weight.detach(),
                        m.norm_w.bias.detach(), F.silu)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * a_h[..., None] * a_w[:, :, None, :])


def test_group_count_for_any_channel_count():
    assert chanattn.create("ela", 64).num_groups == 16  # the paper's GroupNorm(16, C)
    assert chanattn.create("ela", 24).num_groups == 12  # the largest divisor of 24 below 16
    assert chanattn.create("ela", 7).num_groups == 7
    assert chanattn.create("ela", 64, num_groups=None).num_groups is None


def test_a_group_of_one_value_normalises_to_the_bias():
    """C = 16 with 16 groups on a 1 x 1 map: each group holds one value, normalised to 0, so the
    factor is sigmoid(bias) per channel."""
    m = _randomise(EfficientLocalAttention(16))
    x = torch.randn(3, 16, 1, 1)
    gate = torch.sigmoid(m.norm.bias.detach()).view(1, 16, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * gate * gate)
    bad = x.clone()
    bad[0, 3] = float("nan")
    with torch.no_grad():
        assert torch.isnan(m(bad)[0, 3]).all()
