"""FcaNet: the DCT buffer against the closed-form 2D DCT-II basis, the (0, 0) frequency as a
scaled-GAP SE, the tables and their scaling, pooling of other sizes, the channel checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.modules.fcanet import FREQ_TABLES, FrequencyChannelAttention


def _dct_matrix(n: int) -> torch.Tensor:
    """(n, n) orthonormal DCT-II matrix, row k = a_k cos(pi k (t + 1/2) / n), float64."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    t = torch.arange(n, dtype=torch.float64)[None, :]
    a = torch.full((n, 1), math.sqrt(2.0 / n), dtype=torch.float64)
    a[0] = math.sqrt(1.0 / n)
    return a * torch.cos(math.pi * k * (t + 0.5) / n)


def _basis(u: int, v: int, h: int, w: int) -> torch.Tensor:
    """The 2D DCT-II basis function of (u, v) on h x w: outer product of the 1-D rows."""
    return torch.outer(_dct_matrix(h)[u], _dct_matrix(w)[v])


def _adaptive_avg_pool(x: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
    """Adaptive average pooling by its bin formula: [floor(i H / o), ceil((i + 1) H / o))."""
    h, w = x.shape[-2:]
    out = torch.empty(*x.shape[:-2], oh, ow, dtype=x.dtype)
    for i in range(oh):
        h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[..., i, j] = x[..., h0:h1, w0:w1].mean((-2, -1))
    return out


def _se_no_bias(m: FrequencyChannelAttention, pooled: torch.Tensor) -> torch.Tensor:
    """sigmoid(W2 relu(W1 p)), the weights taken from the module, written out: (B, C)."""
    hidden = torch.relu(pooled @ m.fc1.weight.T)
    return torch.sigmoid(hidden @ m.fc2.weight.T)


def test_registered():
    info = chanattn.module_info("fca")
    assert info.kind == "channel" and info.channel_multiple == 16
    m = chanattn.create("fca", 64)
    assert isinstance(m, FrequencyChannelAttention)
    assert (m.dct_h, m.dct_w) == (7, 7) and len(m.frequencies) == 16 and m.rd_channels == 4
    assert m.fc1.bias is None and m.fc2.bias is None


def test_closed_form_dct_is_orthonormal():
    for n in (7, 14):
        d = _dct_matrix(n)
        torch.testing.assert_close(d @ d.T, torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("sel", ["top16", "low16", "bot16", "top32", "low4"])
def test_dct_buffer_matches_the_closed_form_basis(sel):
    c = 64
    m = FrequencyChannelAttention(c, freq_sel=sel)
    # a buffer (saved with the state), not a parameter
    assert "dct_weight" in dict(m.named_buffers())
    assert "dct_weight" in m.state_dict()
    assert all("dct" not in name for name, _ in m.named_parameters())
    assert m.dct_weight.shape == (c, 7, 7) and not m.dct_weight.requires_grad
    table = FREQ_TABLES[sel]
    per_group = c // len(table)
    for ch in range(c):
        u, v = table[ch // per_group]
        torch.testing.assert_close(m.dct_weight[ch].double(), _basis(u, v, 7, 7),
                                   rtol=1e-6, atol=1e-7)


def test_pooled_values_are_2d_dct_coefficients():
    """Each channel's pooled value is its 2D DCT-II (orthonormal) coefficient D x D^T [u, v]."""
    m = FrequencyChannelAttention(32, freq_sel="low16").double()
    x = torch.randn(2, 32, 7, 7, dtype=torch.float64)
    d = _dct_matrix(7)
    coeffs = d @ x @ d.T  # (B, C, 7, 7): the 2D DCT of every channel
    table = FREQ_TABLES["low16"]
    expected_pooled = torch.stack([coeffs[:, ch, table[ch // 2][0], table[ch // 2][1]]
                                   for ch in range(32)], 1)  # (B, C)
    expected = x * _se_no_bias(m, expected_pooled)[:, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize("dct", [7, 14])
@pytest.mark.parametrize("freq_sel", ["top1", [(0, 0)]], ids=["top1", "pair"])
def test_single_zero_frequency_is_a_bias_free_se_on_a_scaled_gap(dct, freq_sel):
    torch.manual_seed(11)
    c = 32
    m = FrequencyChannelAttention(c, dct_h=dct, dct_w=dct, freq_sel=freq_sel).double()
    assert m.frequencies == [(0, 0)]
    # the (0, 0) basis is 1 / sqrt(dct_h dct_w) everywhere, so the pooled value is
    # sum(x) / sqrt(hw) = sqrt(dct_h dct_w) * GAP(x) = dct * GAP(x)
    for size in (dct, 2 * dct):  # 2 * dct: pooled by exact 2 x 2 averages, the GAP is unchanged
        x = torch.randn(3, c, size, size, dtype=torch.float64)
        gap = x.mean((2, 3))  # (B, C)
        expected = x * _se_no_bias(m, dct * gap)[:, :, None, None]
        with torch.no_grad():
            torch.testing.assert_close(m(x), expected)


def test_tables_are_the_official_orderings():
    for prefix in ("top", "low", "bot"):
        full = FREQ_TABLES[f"{prefix}32"]
        assert len(full) == 32 and len(set(full)) == 32
        assert all(0 <= u < 7 and 0 <= v < 7 for u, v in full)
        for n in (1, 2, 4, 8, 16):
            assert FREQ_TABLES[f"{prefix}{n}"] == full[:n]
    # GAP, the lowest frequency, leads both the accuracy ranking and the zig-zag
    assert FREQ_TABLES["top1"] == FREQ_TABLES["low1"] == ((0, 0),)
    assert FREQ_TABLES["low4"] == ((0, 0), (0, 1), (1, 0), (1, 1))
    assert FREQ_TABLES["bot1"] == ((6, 6),)
    assert FREQ_TABLES["top4"] == ((0, 0), (0, 1), (6, 0), (0, 5))


@pytest.mark.parametrize("dct_h, dct_w", [(14, 14), (14, 21), (21, 7)])
def test_tables_scale_with_the_grid(dct_h, dct_w):
    c = 32
    m = FrequencyChannelAttention(c, dct_h=dct_h, dct_w=dct_w, freq_sel="top16")
    sh, sw = dct_h // 7, dct_w // 7
    assert m.frequencies == [(u * sh, v * sw) for u, v in FREQ_TABLES["top16"]]
    assert m.dct_weight.shape == (c, dct_h, dct_w)
    for ch in range(c):
        u, v = FREQ_TABLES["top16"][ch // 2]
        torch.testing.assert_close(m.dct_weight[ch].double(), _basis(u * sh, v * sw, dct_h, dct_w),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("size", [(9, 11), (3, 5), (1, 1), (20, 16)])
def test_other_input_sizes_are_pooled_to_the_grid(size):
    torch.manual_seed(12)
    c = 16
    m = FrequencyChannelAttention(c, freq_sel="bot16").double()
    x = torch.randn(2, c, *size, dtype=torch.float64)
    pooled = _adaptive_avg_pool(x, 7, 7)  # (B, C, 7, 7)
    coeff = torch.stack([(pooled[:, ch] * _basis(*FREQ_TABLES["bot16"][ch], 7, 7)).sum((1, 2))
                         for ch in range(c)], 1)  # (B, C), one frequency per channel (16 groups)
    expected = x * _se_no_bias(m, coeff)[:, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize("channels", [8, 24, 40])
def test_channels_not_a_multiple_of_16_is_a_clear_error(channels):
    with pytest.raises(ValueError, match=rf"FrequencyChannelAttention.*multiple of 16.*{channels}"):
        chanattn.create("fca", channels)


def test_32_frequency_tables_need_a_multiple_of_32():
    with pytest.raises(ValueError, match=r"FrequencyChannelAttention.*multiple of.*32.*top32.*48"):
        FrequencyChannelAttention(48, freq_sel="top32")
    m = FrequencyChannelAttention(64, freq_sel="low32")
    assert len(m.frequencies) == 32
    assert m(torch.randn(2, 64, 7, 7)).shape == (2, 64, 7, 7)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"FrequencyChannelAttention.*unknown frequency.*'top3'"):
        FrequencyChannelAttention(16, freq_sel="top3")
    with pytest.raises(ValueError, match=r"FrequencyChannelAttention.*dct_h and dct_w.*>= 7"):
        FrequencyChannelAttention(16, dct_h=4)
    with pytest.raises(ValueError, match=r"FrequencyChannelAttention.*\(7, 0\)"):
        FrequencyChannelAttention(16, freq_sel=[(7, 0)])
    with pytest.raises(ValueError, match=r"FrequencyChannelAttention.*dct_w"):
        FrequencyChannelAttention(16, dct_w=0)


@pytest.mark.parametrize(("h", "w"), [(7, 7), (14, 14), (14, 7), (28, 28), (15, 9), (3, 5)])
def test_pooling_shortcuts_equal_adaptive_pooling(h, w):
    """The identity and block-repeated-basis shortcuts compute what adaptive pooling then the
    DCT basis computes."""
    torch.manual_seed(0)
    m = chanattn.create("fca", 32).double().eval()
    x = torch.randn(2, 32, h, w, dtype=torch.double, requires_grad=True)
    pooled = F.adaptive_avg_pool2d(x, (m.dct_h, m.dct_w))
    y = (pooled * m.dct_weight).sum((2, 3))
    expected = m.gate(m.fc2(m.act(m.fc1(y)))).view(2, 32, 1, 1)
    got = m.attention(x)
    torch.testing.assert_close(got, expected)
    g1 = torch.autograd.grad(got.sum(), x)[0]
    g2 = torch.autograd.grad(expected.sum(), x)[0]
    torch.testing.assert_close(g1, g2)
