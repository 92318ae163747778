"""Shuffle attention (SA-Net): the groups, the two branches and the channel shuffle against a
channel-by-channel computation, the official initialisation, the group rule and the SA-ResNet-50
figures."""

from __future__ import annotations

import pytest
import torch

import chanattn
from chanattn.models import count_macs, count_params
from chanattn.modules.shuffle_attention import ShuffleAttention, shuffle_attention_groups


def _direct(m: ShuffleAttention, x: torch.Tensor) -> torch.Tensor:
    """SA channel by channel: group g holds channels g C/G ... (g+1) C/G - 1, its first half the
    channel branch, its second half the spatial branch (GroupNorm written out); then output
    channel 2 j + i is channel i C/2 + j."""
    c = x.shape[1]
    per, half = c // m.groups, c // (2 * m.groups)
    gated = torch.empty_like(x)
    for g in range(m.groups):
        for k in range(per):
            ch = g * per + k
            v = x[:, ch]  # (B, H, W)
            if k < half:  # channel branch, parameters of index k
                s = m.cweight.flatten()[k] * v.mean((1, 2), keepdim=True) + m.cbias.flatten()[k]
            else:
                j = k - half
                mu = v.mean((1, 2), keepdim=True)
                var = ((v - mu) ** 2).mean((1, 2), keepdim=True)
                n = (v - mu) / torch.sqrt(var + m.gn.eps) * m.gn.weight[j] + m.gn.bias[j]
                s = m.sweight.flatten()[j] * n + m.sbias.flatten()[j]
            gated[:, ch] = v * torch.sigmoid(s)
    out = torch.empty_like(x)
    for i in range(2):
        for j in range(c // 2):
            out[:, 2 * j + i] = gated[:, i * (c // 2) + j]
    return out


@pytest.mark.parametrize(("c", "groups"), [(16, 2), (24, 3), (8, 1)])
def test_matches_a_channel_by_channel_computation(c, groups):
    torch.manual_seed(0)
    m = ShuffleAttention(c, groups=groups).double()
    assert m.groups == groups
    with torch.no_grad():
        for p in (m.cweight, m.cbias, m.sweight, m.sbias, m.gn.weight, m.gn.bias):
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, c, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _direct(m, x), rtol=1e-10, atol=1e-12)


def test_output_channel_order_is_the_shuffle():
    m = ShuffleAttention(12, groups=3)
    order = m.output_channel_order()
    assert order.tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
    # at initialisation every factor is sigmoid(1) (w = 0, b = 1): y = shuffle(x) * sigmoid(1)
    x = torch.randn(2, 12, 4, 4)
    torch.testing.assert_close(m(x), x[:, order] * torch.sigmoid(torch.tensor(1.0)))


def test_official_initialisation():
    m = chanattn.create("sa", 256)  # G = 64: halves of 256 / 128 = 2 channels
    assert m.groups == 64 and chanattn.module_info("sa").kind == "hybrid"
    for p, value in ((m.cweight, 0.0), (m.cbias, 1.0), (m.sweight, 0.0), (m.sbias, 1.0)):
        assert p.shape == (1, 2, 1, 1) and torch.equal(p, torch.full_like(p, value))
    assert m.gn.num_groups == m.gn.num_channels == 2 and m.gn.eps == 1e-5
    assert torch.equal(m.gn.weight, torch.ones(2)) and torch.equal(m.gn.bias, torch.zeros(2))


def test_groups_rule_and_odd_channels():
    widths = (256, 2048, 128, 64, 96, 16, 2)
    assert [shuffle_attention_groups(c, 64) for c in widths] == [64, 64, 64, 32, 48, 8, 1]
    assert chanattn.create("sa", 64).groups == 32
    assert chanattn.create("sa", 64, groups=4).groups == 4
    assert chanattn.module_info("sa").channel_multiple == 2
    with pytest.raises(ValueError, match="ShuffleAttention: channels must be a multiple of 2, got 15"):
        chanattn.create("sa", 15)
    with pytest.raises(ValueError, match="ShuffleAttention: groups must be a positive int, got 0"):
        chanattn.create("sa", 16, groups=0)


def test_sa_resnet50_figures():
    # Official README (github.com/wofmanaf/SA-Net): sa_resnet50 25.56 M parameters. Per block, SA
    # holds 3 C / G parameters (four (C/2G)-vectors and the GroupNorm's weight and bias), G = 64
    # at every ResNet-50 width: 708 in all. (The abstract's "300" parameters for SA in ResNet-50
    # matches no count of the official layer: 708 with the GroupNorm's affine, 472 without.)
    base = chanattn.create_model("resnet50")
    model = chanattn.create_model("resnet50", attn="sa")
    added = sum(n * 3 * c // 64 for n, c in zip((3, 4, 6, 3), (256, 512, 1024, 2048)))
    assert added == 708 and count_params(model) - count_params(base) == added
    assert round(count_params(model) / 1e6, 2) == 25.56
    # The abstract's 2.76e-3 GFLOPs are element-wise operations, which count_macs (the papers'
    # convention for the backbones: convolutions, FCs, matrix products) does not count: SA adds 0.
    assert count_macs(model, (1, 3, 224, 224)) == count_macs(base, (1, 3, 224, 224))
