"""BAT (bilinear attentional transform): the grouped bilinear transform against explicit Kronecker
products, the normalisation of P and Q, the strip max pooling against torch's adaptive max pooling,
the padding of maps whose sides are not multiples of the block size, and ResNet-50 + BAT's
parameters and FLOPs from the official code's table."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.models.profile import count_params
from chanattn.modules.bat import BilinearAttentionalTransform, strip_max_pool


def _randomised(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for b in m.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return m.eval()


def _transform_by_kron(m: BilinearAttentionalTransform, xl: torch.Tensor) -> torch.Tensor:
    """Per sample and channel: pad to multiples of s, (P_g ⊗ I_t) X (Q_g ⊗ I_u), crop."""
    b, c, h, w = xl.shape
    s, k = m.block_size, m.groups
    p, q = m.attention_matrices(m.embed(xl))
    t, u = math.ceil(h / s), math.ceil(w / s)
    out = torch.empty_like(xl)
    for n in range(b):
        for ch in range(c):
            g = ch // (c // k)
            x = torch.zeros(s * t, s * u, dtype=xl.dtype)
            x[:h, :w] = xl[n, ch]
            left = torch.kron(p[n, g], torch.eye(t, dtype=xl.dtype))
            right = torch.kron(q[n, g], torch.eye(u, dtype=xl.dtype))
            out[n, ch] = (left @ x @ right)[:h, :w]
    return m.project(out)


@pytest.mark.parametrize(("shape", "s"), [((2, 16, 14, 21), 7), ((1, 16, 9, 13), 7), ((2, 8, 1, 1), 7),
                                          ((1, 8, 6, 4), 2), ((1, 8, 5, 5), 1)])
def test_transform_against_kronecker_products(shape, s):
    m = _randomised(BilinearAttentionalTransform(shape[1], block_size=s).double())
    xl = torch.randn(shape[0], m.rd_channels, *shape[2:], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m.transform(xl), _transform_by_kron(m, xl))


def test_p_rows_and_q_columns_sum_to_one():
    m = _randomised(BilinearAttentionalTransform(16).double())
    e = torch.randn(3, 4, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        p, q = m.attention_matrices(e)
    assert p.shape == q.shape == (3, 4, 7, 7) and (p > 0).all() and (q > 0).all()
    torch.testing.assert_close(p.sum(3), torch.ones(3, 4, 7, dtype=torch.float64))
    torch.testing.assert_close(q.sum(2), torch.ones(3, 4, 7, dtype=torch.float64))


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7), (9, 13), (20, 3)])
def test_strip_max_pool_is_adaptive_max_pooling(hw):
    e = torch.randn(2, 4, *hw)
    assert torch.equal(strip_max_pool(e, 7, 2), F.adaptive_max_pool2d(e, (7, 1)))
    assert torch.equal(strip_max_pool(e, 7, 3), F.adaptive_max_pool2d(e, (1, 7)))


def test_block_is_a_residual_and_the_defaults_are_the_official_code():
    m = chanattn.create("bat", 64)
    assert chanattn.module_info("bat").kind == "communication"
    assert (m.rd_channels, m.block_size, m.groups, m.dropout.p) == (32, 7, 4, 0.2)  # r=2, s=7, k=4
    assert m.reduce[0].bias is not None  # nn.Conv2d's default, as the official BATBlock
    assert chanattn.create("bat", 12).rd_channels == 8  # 6 rounded up to a multiple of k = 4
    with pytest.raises(ValueError, match="rd_channels must be a multiple of groups=4"):
        chanattn.create("bat", 64, rd_channels=6)
    # with the last BN's weight and bias at zero the branch is ReLU(0) = 0: y = x
    with torch.no_grad():
        m.expand[1].weight.zero_()
        m.expand[1].bias.zero_()
    x = torch.randn(2, 64, 9, 9)
    assert torch.equal(m.eval()(x), x)


def test_resnet50_with_bat():
    """ResNet-50 + BAT: 30.2 M parameters and 5.4 GFLOPs (the official code's README table,
    "ResNet-50 + BAT | 5.4 | 30.2M"), with BAT blocks after blocks 2 and 4 of res3 and 2, 4 and 6
    of res4 (``--nl_mod 2 2 1000``), s = 7, k = 4, r = 2. attach puts them on those blocks'
    residual branches instead (the same tensor sizes, so the same counts)."""
    model = chanattn.create_model("resnet50")
    chanattn.attach(model, "bat", targets=["layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"])
    assert round(count_params(model) / 1e6, 1) == 30.2
    assert round(chanattn.count_macs(model) / 1e9, 1) == 5.4
