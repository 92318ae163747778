"""Triplet attention: each branch's pooled plane built element by element (which axis is pooled,
which plane the convolution sees, in which orientation), the official layer settings, and the
official README's ResNet-50 figures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.models import count_macs, count_params
from chanattn.modules.triplet import TripletAttention


def _plane(x: torch.Tensor, pool: str, rows: str, cols: str) -> torch.Tensor:
    """[max; mean] over axis ``pool`` of one sample x (C, H, W), laid out on the (rows, cols) plane,
    element by element: (2, size(rows), size(cols))."""
    axes = {"c": 0, "h": 1, "w": 2}
    n_r, n_c = x.shape[axes[rows]], x.shape[axes[cols]]
    out = torch.empty(2, n_r, n_c, dtype=x.dtype)
    for r in range(n_r):
        for q in range(n_c):
            index = [slice(None)] * 3
            index[axes[rows]], index[axes[cols]] = r, q
            line = x[tuple(index)]  # the values along the pooled axis
            out[0, r, q], out[1, r, q] = line.max(), line.mean()
    return out


def _branch(gate, plane: torch.Tensor) -> torch.Tensor:
    """sigmoid(BN_eval(conv(plane))), the BN written out."""
    z = F.conv2d(plane.unsqueeze(0), gate.conv.weight, padding=gate.conv.padding)[0, 0]
    bn = gate.bn
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return torch.sigmoid(z)


def _randomise(m: TripletAttention) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for gate in (m.cw, m.hc, m.hw):
            if gate is not None:
                gate.conv.weight.copy_(torch.randn(gate.conv.weight.shape, generator=g) * 0.3)
                gate.bn.running_mean.fill_(0.2)
                gate.bn.running_var.fill_(1.7)
                gate.bn.weight.fill_(0.8)
                gate.bn.bias.fill_(-0.1)


@pytest.mark.parametrize("no_spatial", [False, True])
def test_branches_against_planes_built_element_by_element(no_spatial):
    torch.manual_seed(0)
    m = TripletAttention(5, kernel_size=3, no_spatial=no_spatial).double().eval()
    _randomise(m)
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)  # C, H, W all different
    with torch.no_grad():
        y = m(x)
    for b in range(2):
        # official layout: cw sees x.permute(0, 2, 1, 3), (B, H, C, W): pooled over H, plane (C, W)
        a_cw = _branch(m.cw, _plane(x[b], "h", "c", "w"))  # (C, W)
        # hc sees x.permute(0, 3, 2, 1), (B, W, H, C): pooled over W, plane (H, C)
        a_hc = _branch(m.hc, _plane(x[b], "w", "h", "c"))  # (H, C)
        factor = a_cw[:, None, :] + a_hc.t()[:, :, None]  # (C, H, W)
        if no_spatial:
            factor = factor / 2
        else:
            a_hw = _branch(m.hw, _plane(x[b], "c", "h", "w"))  # (H, W): CBAM's spatial gate
            factor = (factor + a_hw[None]) / 3
        torch.testing.assert_close(y[b], x[b] * factor, rtol=1e-12, atol=1e-12)


def test_zpool_order_is_max_then_mean():
    # The official ZPool concatenates (max, mean): the convolution's input channel 0 sees the max.
    m = TripletAttention(4, kernel_size=1).eval()
    with torch.no_grad():
        m.hw.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        m.hw.bn.running_var.fill_(1 - m.hw.bn.eps)  # BN is the identity
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(m.hw(x), torch.sigmoid(x.amax(1, keepdim=True)))


def test_official_layer_settings():
    m = chanattn.create("triplet", 64)
    assert isinstance(m, TripletAttention) and chanattn.module_info("triplet").kind == "hybrid"
    for gate in (m.cw, m.hc, m.hw):
        assert gate.conv.kernel_size == (7, 7) and gate.conv.padding == (3, 3) and gate.conv.bias is None
        # official BasicConv: BatchNorm2d(eps=1e-5, momentum=0.01, affine=True)
        assert gate.bn.eps == 1e-5 and gate.bn.momentum == 0.01 and gate.bn.affine
        assert torch.equal(gate.bn.weight, torch.ones(1)) and torch.equal(gate.bn.bias, torch.zeros(1))
    # Kaiming-normal fan-out (official ResNet init): std sqrt(2 / (1 * 7 * 7)) over 3 * 98 weights
    weights = torch.cat([g.conv.weight.flatten() for g in (m.cw, m.hc, m.hw)])
    assert 0.6 < weights.std().item() / (2 / 49) ** 0.5 < 1.4
    assert TripletAttention(8, no_spatial=True).hw is None
    with pytest.raises(ValueError, match="TripletAttention: kernel_size must be odd, got 4"):
        TripletAttention(8, kernel_size=4)


def test_batch_of_one_in_training_on_a_one_by_one_map_is_refused_clearly():
    m = TripletAttention(8).train()
    with pytest.raises(ValueError, match=r"TripletAttention.*BatchNorm.*eval\(\)"):
        m(torch.randn(1, 8, 1, 1))
    assert m.eval()(torch.randn(1, 8, 1, 1)).shape == (1, 8, 1, 1)
    assert m.train()(torch.randn(2, 8, 1, 1)).shape == (2, 8, 1, 1)


def _added_macs(k: int) -> int:
    # per block, three k x k convolutions 2 -> 1 over the planes H x W, C x W and H x C
    stages = ((3, 56, 256), (4, 28, 512), (6, 14, 1024), (3, 7, 2048))
    return sum(n * 2 * k * k * (s * s + 2 * c * s) for n, s, c in stages)


def test_resnet50_figures_of_the_official_readme():
    # Official README (github.com/landskape-ai/triplet-attention, ImageNet table): ResNet-50 +
    # Triplet Attention 25.56 M parameters at k = 7 and at k = 3; 4.169 GFLOPs at k = 7 and
    # 4.131 at k = 3 (thop, multiply-adds). The baselines differ (thop counts more than
    # count_macs's convolutions and FC), but the attention's own cost does not: the two rows
    # differ by 0.038 G, exactly the difference of the convolutions' multiply-adds counted here.
    base = chanattn.create_model("resnet50")
    b_macs = count_macs(base, (1, 3, 224, 224))
    added = {}
    for k in (7, 3):
        model = chanattn.create_model("resnet50", attn="triplet", attn_kwargs={"kernel_size": k})
        # 16 bottlenecks, three branches of (2 k^2 conv weights + BN weight and bias)
        assert count_params(model) - count_params(base) == 16 * 3 * (2 * k * k + 2)
        assert round(count_params(model) / 1e6, 2) == 25.56
        added[k] = count_macs(model, (1, 3, 224, 224)) - b_macs
        assert added[k] == _added_macs(k)
    assert round((added[7] - added[3]) / 1e9, 3) == round(4.169 - 4.131, 3)
