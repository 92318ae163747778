"""Parity with timm where timm has the module: the same weights give the same output (1e-5)."""

from __future__ import annotations

import pytest
import torch

import chanattn

timm_layers = pytest.importorskip("timm.layers")


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
}


@pytest.mark.parametrize("shape", [(2, 64, 7, 7), (3, 256, 9, 13), (2, 64, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", sorted(CASES))
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
