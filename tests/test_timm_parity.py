"""Parity with timm where timm has the module: the same weights give the same output (1e-5), in
eval mode and in training mode, and the same gradient of the input; and the bugs of timm's modules
that ours do not copy, each shown by a test."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

import chanattn
from chanattn.modules.gcnet import ChannelLayerNorm

timm_layers = pytest.importorskip("timm.layers")

_coord = timm_layers.coord_attn
# timm's LayerNorm2d (GlobalContext) uses eps 1e-6; ours defaults to the official code's 1e-5
_LN_TIMM = dict(norm_layer=partial(ChannelLayerNorm, eps=1e-6))


def _randomise(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)


def _copy_positionally(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy ``src``'s state into ``dst`` tensor by tensor in registration order: the two modules
    must hold the same tensors in the same order and shapes (names may differ)."""
    s, d = src.state_dict(), dst.state_dict()
    assert len(s) == len(d), f"{len(s)} tensors in timm's module, {len(d)} in ours:\n{list(s)}\n{list(d)}"
    new = {}
    for (sk, sv), (dk, dv) in zip(s.items(), d.items()):
        assert sv.shape == dv.shape, f"timm {sk} {tuple(sv.shape)} vs ours {dk} {tuple(dv.shape)}"
        new[dk] = sv.clone()
    dst.load_state_dict(new)


CASES = {
    # ours (name, kwargs) vs a timm constructor; kwargs align the hyper-parameters
    "se": (dict(rd_divisor=8), lambda c: timm_layers.SEModule(c)),
    "se-rd": (dict(rd_channels=24), lambda c: timm_layers.SEModule(c, rd_channels=24)),
    "ese": (dict(gate_layer="hard_sigmoid"), lambda c: timm_layers.EffectiveSEModule(c)),
    "eca": (dict(), lambda c: timm_layers.EcaModule(c)),
    "eca-k7": (dict(kernel_size=7), lambda c: timm_layers.EcaModule(kernel_size=7)),
    "cbam_channel": (dict(), lambda c: timm_layers.cbam.ChannelAttn(c, mlp_bias=True)),
    "cbam_spatial": (dict(), lambda c: timm_layers.cbam.SpatialAttn()),
    "cbam": (dict(), lambda c: timm_layers.cbam.CbamModule(c, mlp_bias=True)),
    "cbam-nobias": (dict(bias=False), lambda c: timm_layers.cbam.CbamModule(c)),
    "sk": (dict(), lambda c: timm_layers.SelectiveKernel(c, groups=32, rd_channels=max(c // 16, 32),
                                                           split_input=False)),
    "ge_theta_minus-2": (dict(extent=2), lambda c: timm_layers.GatherExcite(c, extent=2, use_mlp=False)),
    "ge_theta_minus-4": (dict(extent=4), lambda c: timm_layers.GatherExcite(c, extent=4, use_mlp=False)),
    "ge_theta_minus-global": (dict(extent=0),
                              lambda c: timm_layers.GatherExcite(c, extent=0, use_mlp=False)),
    # circular ECA; timm's act_layer only gives the convolution a bias (never applied): bias=True
    "ceca": (dict(), lambda c: timm_layers.CecaModule(c)),
    "ceca-k7": (dict(kernel_size=7), lambda c: timm_layers.CecaModule(kernel_size=7)),
    "ceca-bias": (dict(bias=True), lambda c: timm_layers.CecaModule(c, act_layer=nn.ReLU)),
    # GCNet: timm's create_attn("gca") is the addition (our gc), create_attn("gc") the gate (our gca)
    "gc": (_LN_TIMM,
           lambda c: timm_layers.GlobalContext(c, fuse_add=True, fuse_scale=False, rd_ratio=1 / 16)),
    "gc-both": (dict(fusion="both", **_LN_TIMM),
                lambda c: timm_layers.GlobalContext(c, fuse_add=True, fuse_scale=True, rd_ratio=1 / 16)),
    "gc-avg": (dict(pooling="avg", **_LN_TIMM),
               lambda c: timm_layers.GlobalContext(c, use_attn=False, fuse_add=True, fuse_scale=False,
                                                   rd_ratio=1 / 16)),
    "gc-r8": (dict(rd_ratio=1 / 8, rd_divisor=1, **_LN_TIMM),
              lambda c: timm_layers.GlobalContext(c, fuse_add=True, fuse_scale=False)),
    "gca": (_LN_TIMM, lambda c: timm_layers.GlobalContext(c, rd_ratio=1 / 16)),
    "lcbam": (dict(bias=False), lambda c: timm_layers.cbam.LightCbamModule(c)),
    "lcbam-bias": (dict(), lambda c: timm_layers.cbam.LightCbamModule(c, mlp_bias=True)),
    # coordinate attention: timm's widths and no biases; then the official widths and biases
    "coord": (dict(rd_ratio=1 / 24, rd_divisor=8, bias=False), lambda c: _coord.CoordAttn(c)),
    "coord-official": (dict(), lambda c: _coord.CoordAttn(c, rd_channels=max(8, c // 32), bias=True)),
    "scoord": (dict(), lambda c: _coord.SimpleCoordAttn(c)),
    # ELA as timm builds it: per-direction convolutions and norms, GroupNorm(1), SiLU
    "ela": (dict(shared=False, num_groups=1, act_layer="silu"), lambda c: _coord.EfficientLocalAttn(c)),
    "strip": (dict(), lambda c: _coord.StripAttn(c)),
    "strip-k5": (dict(kernel_size=5, bias=True),
                 lambda c: _coord.StripAttn(c, kernel_size=5, bias=True)),
    "splat": (dict(), lambda c: timm_layers.SplitAttn(c, norm_layer=nn.BatchNorm2d)),
    "splat-r1": (dict(radix=1), lambda c: timm_layers.SplitAttn(c, radix=1, norm_layer=nn.BatchNorm2d)),
    "splat-r4k2": (dict(radix=4, groups=2),
                   lambda c: timm_layers.SplitAttn(c, radix=4, groups=2, norm_layer=nn.BatchNorm2d)),
    "splat-stride2": (dict(stride=2, out_channels=32),
                      lambda c: timm_layers.SplitAttn(c, 32, stride=2, norm_layer=nn.BatchNorm2d)),
    # BAT with timm's widths, groups and bias-free 1x1 convolutions; no dropout (random)
    "bat": (dict(rd_ratio=1 / 4, rd_divisor=8, groups=2, bias=False, drop_rate=0.0),
            lambda c: timm_layers.BatNonLocalAttn(c, drop_rate=0.0)),
    "bat-s1": (dict(rd_ratio=1 / 4, rd_divisor=8, groups=2, bias=False, drop_rate=0.0, block_size=1),
               lambda c: timm_layers.BatNonLocalAttn(c, block_size=1, drop_rate=0.0)),
}

SHAPES = [(2, 64, 7, 7), (3, 256, 9, 13), (2, 64, 1, 1)]
# timm's BAT takes only maps whose sides are multiples of its block size (7)
SHAPES_OF = {"bat": [(2, 64, 7, 7), (3, 256, 21, 14), (2, 64, 14, 35)]}


@pytest.mark.parametrize(("case", "shape"),
                         [(case, shape) for case in sorted(CASES) for shape in SHAPES_OF.get(case, SHAPES)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_same_weights_same_output_as_timm(case, shape):
    name = case.split("-")[0]
    kwargs, make_timm = CASES[case]
    c = shape[1]
    theirs = make_timm(c)
    ours = chanattn.create(name, c, **kwargs)
    _randomise(theirs)
    _copy_positionally(theirs, ours)
    theirs.eval()
    ours.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    # and in training mode (batch statistics), including the gradient of the input
    theirs.train()
    ours.train()
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.xfail(strict=True, raises=TypeError,
                   reason="timm 1.0.31's GatherExcite fails at construction with its defaults "
                          "(ConvMlp() got multiple values for 'act_layer'); see the test below")
def test_timm_gather_excite_default_constructs():
    timm_layers.GatherExcite(64)


@pytest.mark.xfail(strict=True, raises=TypeError,
                   reason="timm 1.0.31's GatherExcite with extra_params=True (GE-θ) fails at "
                          "construction (create_conv2d() got multiple values for 'kernel_size')")
def test_timm_gather_excite_theta_constructs():
    timm_layers.GatherExcite(64, extent=2, extra_params=True, use_mlp=False)


# --- timm's bugs that ours do not copy -----------------------------------------------------------


def test_timm_light_cbam_ignores_its_gate_layer():
    """timm's LightCbamModule applies torch.sigmoid whatever gate_layer is (its light channel
    attention hard-codes it; its light spatial attention is not given the option): a hard-sigmoid
    gate gives the sigmoid's output. Ours uses the gate it is given."""
    c = 64
    hard = timm_layers.cbam.LightCbamModule(c, gate_layer="hard_sigmoid")
    plain = timm_layers.cbam.LightCbamModule(c)
    _randomise(hard)
    plain.load_state_dict(hard.state_dict())
    x = torch.randn(2, c, 7, 7) * 3
    with torch.no_grad():
        torch.testing.assert_close(hard.eval()(x), plain.eval()(x), rtol=0, atol=0)  # the bug
        ours = chanattn.create("lcbam", c, bias=False, gate_layer="hard_sigmoid").eval()
        _copy_positionally(hard, ours)
        assert not torch.allclose(ours(x), hard(x), rtol=1e-3, atol=1e-3)  # ours: the hard sigmoid
        ours_sig = chanattn.create("lcbam", c, bias=False).eval()
        _copy_positionally(hard, ours_sig)
        torch.testing.assert_close(ours_sig(x), hard(x), rtol=1e-5, atol=1e-5)


def test_timm_global_context_ignores_init_last_zero():
    """timm's GlobalContext zeroes the last weight of its addition transform whatever
    ``init_last_zero`` says, and never its gate's; ours follows ``zero_init_last`` for both (the
    official code zeroes both, weight and bias)."""
    torch.manual_seed(0)
    theirs = timm_layers.GlobalContext(64, fuse_add=True, fuse_scale=True, init_last_zero=False)
    assert (theirs.mlp_add.fc2.weight == 0).all()  # zeroed although init_last_zero=False
    theirs = timm_layers.GlobalContext(64, fuse_add=True, fuse_scale=True, init_last_zero=True)
    assert (theirs.mlp_scale.fc2.weight != 0).any()  # not zeroed although init_last_zero=True
    ours = chanattn.create("gc", 64, fusion="both")
    for t in (ours.channel_add[-1], ours.channel_mul[-1]):
        assert (t.weight == 0).all() and (t.bias == 0).all()
    ours = chanattn.create("gc", 64, fusion="both", zero_init_last=False)
    for t in (ours.channel_add[-1], ours.channel_mul[-1]):
        assert (t.weight != 0).any()


def test_timm_circular_eca_fails_where_the_kernel_wraps_more_than_once():
    """timm's CecaModule pads with F.pad(mode="circular"), which refuses a padding larger than C;
    ours wraps by an index modulo C (a circular convolution of any size)."""
    x = torch.randn(2, 2, 5, 5)
    with pytest.raises(RuntimeError, match="[Pp]adding"):
        timm_layers.CecaModule(kernel_size=7)(x)
    ours = chanattn.create("ceca", 2, kernel_size=7)
    w = ours.conv.weight.detach().flatten()
    s = x.mean((2, 3))
    expected = torch.stack([sum(w[j] * s[:, (c + j - 3) % 2] for j in range(7)) for c in range(2)], 1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), x * expected.sigmoid().view(2, 2, 1, 1))


def test_timm_bat_takes_only_multiples_of_its_block_size():
    """timm's BatNonLocalAttn (as the official code) asserts that H and W are multiples of the
    block size; ours pads to the next multiple (and equals timm where they are multiples, above)."""
    theirs = timm_layers.BatNonLocalAttn(64, drop_rate=0.0).eval()
    x = torch.randn(2, 64, 9, 13)
    with pytest.raises(AssertionError):
        theirs(x)
    ours = chanattn.create("bat", 64, rd_ratio=1 / 4, rd_divisor=8, groups=2, bias=False, drop_rate=0.0)
    ours.eval()
    with torch.no_grad():
        assert torch.isfinite(ours(x)).all()
