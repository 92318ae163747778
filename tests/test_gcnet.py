"""GCNet's global context block (gc: fusion by addition; gca: the sigmoid gate): the attention
pooling against an explicit loop over positions, the transform and the fusions against direct
computations, the official initialisation, and the parameter count of ResNet-50 with GC r16 after
c3-c5 from the paper."""

from __future__ import annotations

import math

import pytest
import torch

import chanattn
from chanattn.models.profile import count_params
from chanattn.modules.gcnet import ChannelLayerNorm, GlobalContext, GlobalContextGate


def _randomised(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return m


def _context_by_loop(x: torch.Tensor, wk: torch.Tensor, bk: float) -> torch.Tensor:
    """c_b = sum_j exp(w . x_j + b) x_j / sum_j exp(w . x_j + b), one position j at a time."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, dtype=x.dtype)
    for i in range(b):
        logits = [float(wk @ x[i, :, r, s]) + bk for r in range(h) for s in range(w)]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        total = sum(weights)
        for n, (r, s) in enumerate((r, s) for r in range(h) for s in range(w)):
            out[i] += weights[n] / total * x[i, :, r, s]
    return out


def _transform_direct(seq: torch.nn.Sequential, c: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """W2 ReLU(LN(W1 c + b1)) + b2 on (B, C) vectors, the LayerNorm written out."""
    conv1, norm, _, conv2 = seq
    h = c @ conv1.weight.flatten(1).T + conv1.bias
    mu, var = h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True)
    h = (h - mu) / torch.sqrt(var + eps) * norm.weight + norm.bias
    return torch.relu(h) @ conv2.weight.flatten(1).T + conv2.bias


def test_registered_kinds_and_defaults():
    gc, gca = chanattn.create("gc", 64), chanattn.create("gca", 64)
    assert isinstance(gc, GlobalContext) and gc.fusion == "add" and gc.rd_channels == 4  # r = 16
    assert isinstance(gca, GlobalContextGate) and gca.fusion == "mul"
    assert chanattn.module_info("gc").kind == "communication"
    assert chanattn.module_info("gca").kind == "channel"
    assert chanattn.create("gc", 100).rd_channels == 6  # the official int(C / r)
    assert chanattn.create("gc", 100, rd_divisor=1).rd_channels == 6  # timm rounds: 6.25 -> 6
    assert chanattn.create("gc", 24, rd_divisor=1).rd_channels == 2  # 1.5 -> 2 (timm), not 1
    with pytest.raises(ValueError, match="GlobalContext: fusion must be one of"):
        chanattn.create("gc", 16, fusion="concat")
    with pytest.raises(ValueError, match="GlobalContext: pooling must be one of"):
        chanattn.create("gc", 16, pooling="max")


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (1, 5, 1, 1), (2, 3, 5, 2)])
def test_attention_pooling_against_a_loop_over_positions(shape):
    torch.manual_seed(1)
    m = _randomised(GlobalContext(shape[1], rd_channels=2).double())
    x = torch.randn(shape, dtype=torch.float64) * 2
    expected = _context_by_loop(x, m.conv_mask.weight.detach().flatten(), float(m.conv_mask.bias.detach()))
    with torch.no_grad():
        torch.testing.assert_close(m.context(x).flatten(1), expected)
    # a 1 x 1 map: the context is the single position's features
    if shape[2:] == (1, 1):
        torch.testing.assert_close(m.context(x), x)


def test_average_pooling_option_is_the_mean():
    m = GlobalContext(8, pooling="avg")
    assert m.conv_mask is None
    x = torch.randn(2, 8, 5, 3)
    torch.testing.assert_close(m.context(x), x.mean((2, 3), keepdim=True))


def test_addition_fusion_adds_one_term_per_channel():
    """gc: y - x is the transform of the context, the same at every position."""
    torch.manual_seed(2)
    m = _randomised(GlobalContext(12, rd_channels=4).double())
    x = torch.randn(3, 12, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        term = _transform_direct(m.channel_add, m.context(x).flatten(1)).view(3, 12, 1, 1)
    torch.testing.assert_close(y, x + term)
    diff = y - x
    torch.testing.assert_close(diff, diff[:, :, :1, :1].expand_as(diff))


def test_gate_and_both_fusions():
    torch.manual_seed(3)
    x = torch.randn(2, 12, 4, 6, dtype=torch.float64)
    gca = _randomised(GlobalContextGate(12, rd_channels=4).double())
    with torch.no_grad():
        gate = torch.sigmoid(_transform_direct(gca.channel_mul, gca.context(x).flatten(1)))
        torch.testing.assert_close(gca(x), x * gate.view(2, 12, 1, 1))
    both = _randomised(GlobalContext(12, rd_channels=4, fusion="both").double(), seed=4)
    with torch.no_grad():
        c = both.context(x).flatten(1)
        mul = torch.sigmoid(_transform_direct(both.channel_mul, c)).view(2, 12, 1, 1)
        add = _transform_direct(both.channel_add, c).view(2, 12, 1, 1)
        torch.testing.assert_close(both(x), x * mul + add)  # the official order: multiply, then add


def test_official_initialisation():
    """conv_mask Kaiming-normal with fan-in, the last convolution of each transform zero: gc starts
    as the identity, gca as x / 2."""
    torch.manual_seed(5)
    gc = GlobalContext(256)
    assert gc.conv_mask.bias.item() == 0
    std = gc.conv_mask.weight.std().item()
    assert abs(std - math.sqrt(2 / 256)) < 0.2 * math.sqrt(2 / 256)
    x = torch.randn(2, 256, 5, 5)
    assert torch.equal(gc(x), x)
    gca = GlobalContextGate(256)
    torch.testing.assert_close(gca(x), x / 2)


def test_channel_layer_norm():
    norm = ChannelLayerNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(6.0))
        norm.bias.copy_(torch.ones(6))
    x = torch.randn(3, 6, 2, 4)
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-5)
    torch.testing.assert_close(norm(x), ref.permute(0, 3, 1, 2))


def _gc_params(c: int, r: int = 16) -> int:
    """One GC block: conv_mask C + 1, C -> C/r (with bias), LayerNorm 2 C/r, C/r -> C (with bias)."""
    d = c // r
    return (c + 1) + (c * d + d) + 2 * d + (d * c + c)


def _gc_macs(c: int, hw: int, r: int = 16) -> int:
    """The logit convolution at every position, the pooling product, the two 1x1 layers."""
    return c * hw + c * hw + 2 * c * (c // r)


def test_resnet50_with_gc_r16_after_c3_to_c5():
    """ResNet-50 + GC (r16) in every block of c3, c4, c5 (after the last 1x1 convolution and its
    BN, before the addition: the official ``after_conv3``): 28.08 M parameters, the ImageNet row
    "ResNet-50 + GC (r16)" of the GCNet paper (arXiv:1904.11492, image classification table; the
    figure could not be re-read from the paper's text where this test was written, and GC in all
    four stages would give 28.11 M). The parameters and FLOPs added are checked against their
    closed forms (the paper's FLOPs use another counting convention for the backbone)."""
    base = chanattn.create_model("resnet50")
    model = chanattn.create_model("resnet50")
    chanattn.attach(model, "gc", targets=lambda n, m: n.count(".") == 1 and n.split(".")[0] in
                    ("layer2", "layer3", "layer4"))
    blocks = {512: (4, 28 * 28), 1024: (6, 14 * 14), 2048: (3, 7 * 7)}  # c3, c4, c5 at 224 x 224
    added = sum(n * _gc_params(c) for c, (n, _) in blocks.items())
    assert count_params(model) - count_params(base) == added
    assert round(count_params(model) / 1e6, 2) == 28.08
    added_macs = sum(n * _gc_macs(c, hw) for c, (n, hw) in blocks.items())
    assert chanattn.count_macs(model) - chanattn.count_macs(base) == added_macs
