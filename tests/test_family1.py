"""Module-specific facts of the first family: identities the seeds state, defaults, options and
the errors of sizes a module cannot take."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.modules.eca import eca_kernel_size


def _x(*shape):
    return torch.randn(*shape)


# --- SE family -------------------------------------------------------------------------------

def test_se_var1_equals_global_ge_theta_minus_equals_the_formula():
    x = _x(3, 24, 7, 5)
    expected = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
    torch.testing.assert_close(chanattn.create("se_var1", 24)(x), expected)
    torch.testing.assert_close(chanattn.create("ge_theta_minus", 24, extent=0)(x), expected)
    assert sum(p.numel() for p in chanattn.create("se_var1", 24).parameters()) == 0


def test_se_hidden_width_defaults_and_rounding():
    assert chanattn.create("se", 256).fc1.out_channels == 16  # C // 16
    assert chanattn.create("se", 8).fc1.out_channels == 1  # at least 1
    assert chanattn.create("se", 200).fc1.out_channels == 12  # floor(200 / 16)
    assert chanattn.create("se", 200, rd_divisor=8).fc1.out_channels == 16  # timm's rounding
    assert chanattn.create("se", 64, rd_channels=5).fc1.out_channels == 5


def test_se_formula():
    m = chanattn.create("se", 32).eval()
    x = _x(2, 32, 5, 5)
    z = x.mean((2, 3))
    w1, b1 = m.fc1.weight.flatten(1), m.fc1.bias
    w2, b2 = m.fc2.weight.flatten(1), m.fc2.bias
    s = torch.sigmoid(F.linear(F.relu(F.linear(z, w1, b1)), w2, b2))
    torch.testing.assert_close(m(x), x * s[:, :, None, None])


def test_se_var2_is_one_weight_per_channel_and_var3_a_full_matrix():
    m2 = chanattn.create("se_var2", 16)
    assert [p.numel() for p in m2.parameters()] == [16]
    x = _x(2, 16, 4, 4)
    w = m2.fc.weight.flatten()
    torch.testing.assert_close(m2(x), x * torch.sigmoid(w * x.mean((2, 3)))[:, :, None, None])
    m3 = chanattn.create("se_var3", 16)
    assert sum(p.numel() for p in m3.parameters()) == 16 * 16 + 16
    s = torch.sigmoid(F.linear(x.mean((2, 3)), m3.fc.weight.flatten(1), m3.fc.bias))
    torch.testing.assert_close(m3(x), x * s[:, :, None, None])
    assert sum(p.numel() for p in chanattn.create("ese", 16, bias=False).parameters()) == 256


def test_rcan_ca_is_se_with_c_over_16():
    m = chanattn.create("rcan_ca", 64)
    assert m.fc1.out_channels == 4 and m.fc1.bias is not None and m.fc2.bias is not None


# --- ECA -------------------------------------------------------------------------------------

@pytest.mark.parametrize("c,k", [(64, 3), (256, 5), (512, 5), (2048, 7), (128, 5), (1024, 5), (16, 3)])
def test_eca_adaptive_kernel(c, k):
    assert eca_kernel_size(c) == k
    assert chanattn.create("eca", c).conv.kernel_size == (k,)


def test_eca_formula_and_override():
    m = chanattn.create("eca", 64, kernel_size=5)
    assert m.conv.kernel_size == (5,) and m.conv.bias is None
    x = _x(2, 64, 3, 4)
    z = x.mean((2, 3))  # (B, C)
    w = m.conv.weight.flatten()
    zp = F.pad(z, (2, 2))
    s = torch.stack([(zp[:, i:i + 5] * w).sum(1) for i in range(64)], 1)
    torch.testing.assert_close(m(x), x * torch.sigmoid(s)[:, :, None, None])
    with pytest.raises(ValueError, match="EfficientChannelAttention: kernel_size must be odd, got 4"):
        chanattn.create("eca", 64, kernel_size=4)


# --- CBAM ------------------------------------------------------------------------------------

def test_cbam_is_channel_then_spatial():
    m = chanattn.create("cbam", 32).eval()
    x = _x(2, 32, 6, 6)
    ch = x * m.channel.attention(x)
    torch.testing.assert_close(m(x), ch * m.spatial.attention(ch))
    # the channel attention: a shared MLP on GAP and GMP, summed, then sigmoid
    c = m.channel
    mlp = lambda v: c.fc2(F.relu(c.fc1(v)))  # noqa: E731
    s = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(c(x), x * s)
    # the spatial attention: [mean_c; max_c] -> 7x7 conv (no bias) -> BN -> sigmoid
    sp = m.spatial
    assert sp.conv.bias is None and sp.conv.kernel_size == (7, 7)
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    a = torch.sigmoid(sp.bn(F.conv2d(pooled, sp.conv.weight, padding=3)))
    torch.testing.assert_close(sp(x), x * a)


def test_cbam_spatial_batch_of_one_pixel_in_training_is_a_clear_error():
    m = chanattn.create("cbam_spatial", 8).train()
    with pytest.raises(ValueError, match="CBAMSpatialAttention.*BatchNorm.*got 1"):
        m(_x(1, 8, 1, 1))
    m(_x(1, 8, 2, 2))  # 4 values per channel: fine
    m.eval()(_x(1, 8, 1, 1))


# --- BAM -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["mul", "sum"])
def test_bam_formula_both_fusions(fusion):
    m = chanattn.create("bam", 64, fusion=fusion).eval()
    x = _x(2, 64, 5, 9)  # H != W: the official code assumed H = W
    mc = m.channel_att(x.mean((2, 3), keepdim=True))
    ms = m.spatial_att(x)
    assert mc.shape == (2, 64, 1, 1) and ms.shape == (2, 1, 5, 9)
    a = mc * ms if fusion == "mul" else mc + ms
    torch.testing.assert_close(m(x), x * (1 + torch.sigmoid(a)))


def test_bam_defaults():
    m = chanattn.create("bam", 64)
    dilated = [mod for mod in m.spatial_att if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert len(dilated) == 2 and all(d.dilation == (4, 4) and d.padding == (4, 4) for d in dilated)
    assert m.fusion == "mul" and m.rd_channels == 4
    with pytest.raises(ValueError, match="BottleneckAttention: fusion must be one of"):
        chanattn.create("bam", 64, fusion="max")


def test_bam_output_is_between_x_and_2x():
    m = chanattn.create("bam", 32).eval()
    x = _x(2, 32, 4, 4).abs() + 0.1
    r = m(x) / x
    assert (r > 1).all() and (r < 2).all()


# --- Gather-Excite ---------------------------------------------------------------------------

def _manual_ge_minus(x: torch.Tensor, e: int) -> torch.Tensor:
    """Average over the (2e-1)-window centred at every e-th position, padding not counted, then
    nearest upsampling and sigmoid, with explicit loops."""
    b, c, h, w = x.shape
    ho, wo = math.ceil(h / e), math.ceil(w / e)
    g = torch.empty(b, c, ho, wo)
    for i in range(ho):
        for j in range(wo):
            r0, r1 = max(0, i * e - (e - 1)), min(h, i * e + e)
            c0, c1 = max(0, j * e - (e - 1)), min(w, j * e + e)
            g[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean((2, 3))
    up = torch.empty(b, c, h, w)
    for i in range(h):
        for j in range(w):
            up[:, :, i, j] = g[:, :, (i * ho) // h, (j * wo) // w]  # nearest: floor(i * in / out)
    return x * torch.sigmoid(up)


@pytest.mark.parametrize("e", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("hw", [(7, 7), (9, 13), (16, 16), (1, 5)])
def test_local_ge_theta_minus_equals_the_manual_computation(e, hw):
    x = _x(2, 4, *hw)
    torch.testing.assert_close(chanattn.create("ge_theta_minus", 4, extent=e)(x), _manual_ge_minus(x, e))


def test_ge_theta_gather_has_separate_layers_per_step():
    m = chanattn.create("ge_theta", 16, extent=8)
    convs = [mod for mod in m.gather if isinstance(mod, torch.nn.Conv2d)]
    bns = [mod for mod in m.gather if isinstance(mod, torch.nn.BatchNorm2d)]
    relus = [mod for mod in m.gather if isinstance(mod, torch.nn.ReLU)]
    assert len(convs) == 3 and len(bns) == 3 and len(relus) == 2  # log2(8) steps, no ReLU at the end
    assert len({id(c) for c in convs}) == 3  # not the seed's shared layers
    assert isinstance(m.gather[-1], torch.nn.BatchNorm2d)
    assert all(c.groups == 16 and c.stride == (2, 2) and c.bias is None for c in convs)
    x = _x(2, 16, 13, 13)
    g = m.gather(x)
    assert g.shape == (2, 16, 2, 2)  # ceil(13 / 8)


def test_ge_theta_global_extent_needs_the_spatial_size():
    with pytest.raises(ValueError, match="GatherExciteTheta: a global extent .* needs spatial_size"):
        chanattn.create("ge_theta", 16, extent=0)
    m = chanattn.create("ge_theta", 16, extent=0, spatial_size=(7, 5)).eval()
    x = _x(2, 16, 7, 5)
    conv, bn = m.gather
    assert conv.kernel_size == (7, 5) and conv.groups == 16
    expected = x * torch.sigmoid(bn((x * conv.weight.view(1, 16, 7, 5)).sum((2, 3), keepdim=True)))
    torch.testing.assert_close(m(x), expected)
    with pytest.raises(ValueError, match=r"GatherExciteTheta.*7 x 5, got 8 x 8"):
        m(_x(2, 16, 8, 8))


def test_ge_theta_plus_has_the_se_excite():
    m = chanattn.create("ge_theta_plus", 64, extent=2).eval()
    assert m.mlp[0].out_channels == 4 and m.mlp[2].out_channels == 64
    x = _x(2, 64, 6, 6)
    a = F.interpolate(m.mlp(m.gather(x)), size=(6, 6), mode="nearest")
    torch.testing.assert_close(m(x), x * torch.sigmoid(a))


@pytest.mark.parametrize("name", ["ge_theta", "ge_theta_plus"])
@pytest.mark.parametrize("e", [3, 6, -1])
def test_ge_parametric_extent_must_be_a_power_of_two(name, e):
    with pytest.raises(ValueError, match="extent must be"):
        chanattn.create(name, 16, extent=e)


def test_ge_batch_of_one_with_a_1x1_gathered_map_in_training_is_a_clear_error():
    m = chanattn.create("ge_theta", 16, extent=8).train()
    with pytest.raises(ValueError, match="GatherExciteTheta.*BatchNorm"):
        m(_x(1, 16, 8, 8))
    m(_x(1, 16, 16, 16))  # a 2 x 2 gathered map: fine


# --- Selective Kernel ------------------------------------------------------------------------

def test_sk_structure_and_defaults():
    m = chanattn.create("sk", 64)
    assert m.groups == 32 and m.rd_channels == 32  # d = max(64 / 16, 32)
    assert chanattn.create("sk", 1024).rd_channels == 64
    convs = [b[0] for b in m.branches]
    assert [c.dilation for c in convs] == [(1, 1), (2, 2)] and all(c.kernel_size == (3, 3) for c in convs)
    assert m.fc_reduce.bias is None and m.fc_select.bias is None


def test_sk_groups_fall_back_to_a_divisor():
    assert chanattn.create("sk", 16).groups == 16
    assert chanattn.create("sk", 48).groups == 24
    assert chanattn.create("sk", 15).groups == 15
    assert chanattn.create("sk", 17).groups == 17
    assert chanattn.create("sk", 34).groups == 17


def test_sk_selection_formula():
    m = chanattn.create("sk", 32).eval()
    x = _x(2, 32, 5, 5)
    u = [br(x) for br in m.branches]
    z = m.act(m.bn(m.fc_reduce((u[0] + u[1]).mean((2, 3), keepdim=True))))
    logits = m.fc_select(z).view(2, 2, 32, 1, 1)
    a = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    torch.testing.assert_close(m(x), a[:, 0] * u[0] + a[:, 1] * u[1])


def test_sk_stride_and_out_channels():
    m = chanattn.create("sk", 32, out_channels=64, stride=2)
    assert m(_x(2, 32, 9, 9)).shape == (2, 64, 5, 5)
