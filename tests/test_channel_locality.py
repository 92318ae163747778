"""Channel Locality block: GAP and GMP stacked, 2 x 1 filters, one filter over neighbouring
channels, sigmoid; checked against a direct loop computation."""

from __future__ import annotations

import math

import pytest
import torch

import chanattn
from chanattn.modules.channel_locality import ChannelLocalityBlock


def _direct(m: ChannelLocalityBlock, x: torch.Tensor) -> torch.Tensor:
    """The block written with loops over samples, filters, channels and kernel taps."""
    b, c = x.shape[:2]
    w1 = m.relation.weight.detach()[:, 0, :, 0]  # (F, 2): weights of (avg, max)
    b1 = m.relation.bias.detach()  # (F,)
    w2 = m.nearby.weight.detach()[0, :, 0, :]  # (F, k)
    b2 = float(m.nearby.bias.detach())
    f, k = w2.shape
    left = (k - 1) // 2  # channel c's window is c - left, ..., c - left + k - 1
    out = torch.empty_like(x)
    for i in range(b):
        avg = [float(x[i, ch].mean()) for ch in range(c)]
        mx = [float(x[i, ch].max()) for ch in range(c)]
        rel = [[max(0.0, float(w1[j, 0]) * avg[ch] + float(w1[j, 1]) * mx[ch] + float(b1[j]))
                for ch in range(c)] for j in range(f)]
        for ch in range(c):
            s = b2
            for j in range(f):
                for t in range(k):
                    src = ch - left + t
                    if 0 <= src < c:  # zero padding outside the channel range
                        s += float(w2[j, t]) * rel[j][src]
            out[i, ch] = x[i, ch] * (1.0 / (1.0 + math.exp(-s)))
    return out


def _randomise(m: ChannelLocalityBlock) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def test_registered_with_the_seed_defaults():
    assert chanattn.module_info("clocal").kind == "channel"
    m = chanattn.create("clocal", 64)
    assert isinstance(m, ChannelLocalityBlock)
    assert (m.filters, m.kernel_size) == (16, 8)  # C // 4 filters of 2 x 1, a 1 x C // 8 kernel
    assert m.relation.weight.shape == (16, 1, 2, 1)
    assert m.nearby.weight.shape == (1, 16, 1, 8)
    small = ChannelLocalityBlock(4)
    assert (small.filters, small.kernel_size) == (1, 1)


@pytest.mark.parametrize("channels, kwargs", [
    (16, {}),                           # k = 2: even, one more padded channel after
    (32, {}),                           # k = 4
    (24, {"kernel_size": 3}),           # odd k
    (8, {"filters": 3, "kernel_size": 5}),
])
def test_matches_a_direct_computation(channels, kwargs):
    torch.manual_seed(5)
    m = ChannelLocalityBlock(channels, **kwargs).double()
    _randomise(m)
    x = torch.randn(3, channels, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _direct(m, x))


@pytest.mark.parametrize("k", [3, 4])
def test_only_neighbouring_channels_interact(k):
    """Channel 0's input reaches only the gates of the channels whose window holds channel 0:
    c - (k - 1) // 2 <= 0, i.e. c <= (k - 1) // 2."""
    torch.manual_seed(6)
    c = 16
    m = ChannelLocalityBlock(c, kernel_size=k).double()
    _randomise(m)
    x = torch.randn(2, c, 3, 3, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0] = x2[:, 0] * 5 + 3
    with torch.no_grad():
        g1, g2 = m.attention(x), m.attention(x2)
    reach = (k - 1) // 2
    torch.testing.assert_close(g1[:, reach + 1:], g2[:, reach + 1:], rtol=0, atol=0)
    assert not torch.allclose(g1[:, : reach + 1], g2[:, : reach + 1])


def test_gate_is_a_sigmoid():
    m = ChannelLocalityBlock(32).double()
    _randomise(m)
    with torch.no_grad():
        g = m.attention(torch.randn(4, 32, 5, 5, dtype=torch.float64))
    assert g.shape == (4, 32, 1, 1) and (g > 0).all() and (g < 1).all()
    # not clamped to [0.5, 1) by a ReLU before the sigmoid (the seed sketch's last ReLU)
    assert (g < 0.5).any() and (g > 0.5).any()


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"ChannelLocalityBlock.*kernel_size.*0"):
        ChannelLocalityBlock(16, kernel_size=0)
    with pytest.raises(ValueError, match=r"ChannelLocalityBlock.*filters.*-2"):
        ChannelLocalityBlock(16, filters=-2)
