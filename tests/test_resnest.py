"""ResNeSt's split attention (splat): the radix softmax (a sigmoid at radix 1) and the cardinal
groups against an explicit computation per cardinal group and split, the cardinality's block
structure, its place in the models (in place of the 3x3 convolution, as sk), and ResNeSt-50's
parameters and FLOPs with our module in ResNeSt's architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.models.profile import count_params
from chanattn.modules.resnest import SplitAttention


def _randomised(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for b in m.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return m.eval()


def _bn(bn: torch.nn.BatchNorm2d, v: torch.Tensor, idx) -> torch.Tensor:
    """Eval-mode BN of the channels ``idx`` of v (..., len(idx))."""
    scale = bn.weight[idx] / torch.sqrt(bn.running_var[idx] + bn.eps)
    return (v - bn.running_mean[idx]) * scale + bn.bias[idx]


def _explicit(m: SplitAttention, x: torch.Tensor) -> torch.Tensor:
    """Cardinal group k, split r: a convolution of input chunk r*K + k to C'/K channels, BN, ReLU;
    per cardinal group, the splits' sum pooled, its own two FCs (only its C'/K inputs, its d/K
    hidden units), softmax over r (sigmoid at R = 1), the weighted sum."""
    k_, r_ = m.cardinality, m.radix
    cin, cout, d = m.channels // (k_ * r_), m.out_channels // k_, m.rd_channels // k_
    conv = m.conv
    outs = []
    for k in range(k_):
        splits = []
        for r in range(r_):
            g = r * k_ + k  # the convolution's group: split r holds groups r*K ... (r+1)*K - 1
            o = slice(g * cout, (g + 1) * cout)
            u = F.conv2d(x[:, g * cin:(g + 1) * cin], conv.weight[o], None, conv.stride, conv.padding,
                         conv.dilation)
            u = _bn(m.bn0, u.permute(0, 2, 3, 1), list(range(o.start, o.stop))).permute(0, 3, 1, 2)
            splits.append(torch.relu(u))
        s = sum(splits).mean((2, 3))  # (B, C'/K)
        w1 = m.fc1.weight[k * d:(k + 1) * d].flatten(1)  # (d/K, C'/K)
        z = s @ w1.T + m.fc1.bias[k * d:(k + 1) * d]
        z = torch.relu(_bn(m.bn1, z, list(range(k * d, (k + 1) * d))))
        rows = slice(k * r_ * cout, (k + 1) * r_ * cout)  # group k's R * C'/K logits: [r, j]
        logits = (z @ m.fc2.weight[rows].flatten(1).T + m.fc2.bias[rows]).view(-1, r_, cout)
        a = logits.softmax(1) if r_ > 1 else logits.sigmoid()
        outs.append(sum(a[:, r, :, None, None] * splits[r] for r in range(r_)))
    return torch.cat(outs, 1)  # cardinal group k: output channels k*C'/K ... (k+1)*C'/K - 1


@pytest.mark.parametrize(("options", "shape"), [
    (dict(), (2, 8, 5, 6)),
    (dict(radix=1), (2, 6, 4, 4)),
    (dict(radix=3, groups=2, rd_channels=4), (2, 12, 3, 5)),
    (dict(radix=2, groups=2, stride=2, out_channels=8, rd_channels=6), (1, 8, 7, 7)),
    (dict(radix=4), (1, 8, 1, 1)),
], ids=["default", "radix1", "r3k2", "r2k2-stride2", "r4-1x1"])
def test_against_an_explicit_computation_per_cardinal_group_and_split(options, shape):
    m = _randomised(SplitAttention(shape[1], **options).double())
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _explicit(m, x))


def test_radix_weights_softmax_and_sigmoid():
    torch.manual_seed(1)
    m = _randomised(SplitAttention(16, radix=4, groups=2, rd_channels=8).double())
    gap = torch.randn(3, 16, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        a = m.attention(gap)  # (B, R, C', 1, 1)
    torch.testing.assert_close(a.sum(1), torch.ones(3, 16, 1, 1, dtype=torch.float64))
    assert (a > 0).all()
    m1 = _randomised(SplitAttention(16, radix=1).double())
    with torch.no_grad():
        logits = m1.fc2(m1.act1(m1.bn1(m1.fc1(gap))))
        torch.testing.assert_close(m1.attention(gap), logits.sigmoid().view(3, 1, 16, 1, 1))


def test_cardinal_groups_see_only_their_input_chunks():
    """With K = 2 and R = 2 the input splits into 4 chunks; output group k depends on chunks k and
    K + k only (the Jacobian's block structure)."""
    m = _randomised(SplitAttention(16, groups=2, rd_channels=8).double())
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64, requires_grad=True)
    y = m(x)
    for k in range(2):
        (g,) = torch.autograd.grad(y[:, k * 8:(k + 1) * 8].sum(), x, retain_graph=True)
        per_chunk = g.abs().sum((0, 2, 3)).view(4, 4).sum(1)  # chunk n: channels 4n ... 4n + 3
        for n in range(4):
            assert (per_chunk[n] > 0) == (n in (k, 2 + k)), (k, n, per_chunk)


def test_widths_and_the_cardinality_fallback():
    m = chanattn.create("splat", 64)
    assert m.rd_channels == 32 and m.cardinality == 1 and m.radix == 2  # max(64 * 2 / 4, 32)
    assert chanattn.create("splat", 256).rd_channels == 128
    assert chanattn.create("splat", 256, rd_divisor=8, rd_ratio=0.3).rd_channels == 152  # timm's rounding
    # MobileNetV2 asks for a depthwise unit: K = C becomes C / R
    assert chanattn.create("splat", 96, groups=96).cardinality == 48
    assert chanattn.create("splat", 64, groups=3).cardinality == 2
    with pytest.raises(ValueError, match="SplitAttention: channels must be a multiple of radix=2"):
        chanattn.create("splat", 7)
    assert chanattn.create("splat", 7, radix=1).cardinality == 1


def test_replaces_the_3x3_convolution_in_the_models():
    model = chanattn.create_model("resnet50", attn="splat", num_classes=5)
    block = model.layer2[0]
    assert isinstance(block.conv2, SplitAttention) and block.conv2.stride == 2
    assert isinstance(block.bn2, torch.nn.Identity) and block.attn is None
    basic = chanattn.create_model("resnet20", attn="splat")
    assert isinstance(basic.layer2[0].conv1, SplitAttention)
    mobile = chanattn.create_model("mobilenet_v2", attn="splat", width_mult=0.5, num_classes=3)
    assert any(isinstance(m, SplitAttention) for m in mobile.modules())
    y = mobile(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 3)
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(ValueError, match="'splat' replaces the blocks' 3x3 convolutions"):
        chanattn.attach(torchvision.models.resnet18(), "splat")


def _resnest50_with_ours(avd_first: bool) -> torch.nn.Module:
    """timm's ResNeSt-50 (deep stem of width 32, average-pool downsampling, avd; chanattn has no
    such backbone) with each of timm's split-attention convolutions replaced by ours."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnest50d", block_args=dict(radix=2, avd=True, avd_first=avd_first))
    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "SplitAttn":
            conv = module.conv
            r = module.radix
            ours = chanattn.create("splat", conv.in_channels, out_channels=conv.out_channels // r,
                                   stride=conv.stride[0], radix=r, groups=conv.groups // r)
            parent, child = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, ours)
            replaced += 1
    assert replaced == 16
    return model


def test_resnest50_parameters_and_flops():
    """ResNeSt-50 (2s1x64d) with our split attention: 27.5 M parameters (the official ablation.md,
    row "ResNeSt-50-fast 2s1x64d | 27.5M | 4.34", and the ResNeSt paper's ImageNet table), 5.39 G
    FLOPs (the paper's ResNeSt-50, avd after the split attention: the paper's table, as issue 16
    quotes it) and 4.34 G (the official ablation.md, the "fast" model: avd before it). FLOPs here
    are chanattn.count_macs (convolutions and products, multiply-adds) at 224 x 224: 5.371 G and
    4.331 G, within 1% (the pooling layers and products that count_macs leaves out account for
    the rest)."""
    model = _resnest50_with_ours(avd_first=False)
    assert round(count_params(model) / 1e6, 1) == 27.5
    assert abs(chanattn.count_macs(model) - 5.39e9) < 0.01 * 5.39e9
    fast = _resnest50_with_ours(avd_first=True)
    assert count_params(fast) == count_params(model)
    assert abs(chanattn.count_macs(fast) - 4.34e9) < 0.01 * 4.34e9
