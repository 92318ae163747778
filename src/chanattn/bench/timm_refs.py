"""timm's implementations of chanattn's modules, built to compute the same function as ours.

Each builder takes our module as built by the bench (the registry's defaults) and returns timm's
counterpart with the same hyper-parameters (hidden width, kernel size, gate, bias, groups), so
that both do the same work and the timing ratio compares implementations, not configurations.
``tests/test_timm_parity.py`` checks, for the same constructor arguments, that the same weights
give the same outputs; ``tests/test_bench.py`` checks that the counterparts built here do.

Counterparts (timm >= 1.0, ``timm.layers``):

========================  =====================================================================
chanattn                  timm
========================  =====================================================================
se                        ``SEModule(C, rd_channels=<ours>)`` (ours rounds C/16 down, timm to 8)
se_var3 (ese)             ``EffectiveSEModule(C, add_maxpool=False, gate_layer=<ours>)``; our
                          default gate is the ECA paper's sigmoid, timm's eSE default the hard
                          sigmoid: timm is given ours
eca                       ``EcaModule(kernel_size=<ours>)``
cbam                      ``CbamModule(C, rd_channels=<ours>, mlp_bias=<ours>)``
cbam_channel              ``ChannelAttn(C, rd_channels=<ours>, mlp_bias=<ours>)``
cbam_spatial              ``SpatialAttn(kernel_size=<ours>)``
sk                        ``SelectiveKernel(C, groups=<ours>, rd_channels=<ours>,
                          split_input=False)`` (kernels 3x3 and 3x3 dilated 2, as ours)
ge_theta_minus            ``GatherExcite(C, extent=<ours>, use_mlp=False)``
ge_theta, ge_theta_plus   ``GatherExcite(C, extra_params=True, ...)``, which timm 1.0.31 fails
                          to construct (a TypeError in ``create_conv2d``): the bench reports it
ceca                      ``CecaModule(kernel_size=<ours>)`` (with ``act_layer`` where ours has
                          a bias: timm's act_layer only adds the bias)
gc                        ``GlobalContext(C, fuse_add=True, fuse_scale=False, ...)``, timm's
                          ``create_attn("gca")``; LayerNorm eps set to ours
gca                       ``GlobalContext(C, ...)``, timm's ``create_attn("gc")``
lcbam                     ``LightCbamModule(C, rd_channels=<ours>, mlp_bias=<ours>)`` (sigmoid
                          gates only: timm ignores gate_layer)
coord                     ``CoordAttn(C, rd_channels=<ours>, bias=<ours>)``
scoord                    ``SimpleCoordAttn(C, rd_channels=<ours>, bias=<ours>)``
ela                       ``EfficientLocalAttn(C, kernel_size=<ours>)``, only for ours with
                          ``shared=False, num_groups=1, act_layer="silu"`` (timm's design; our
                          default is the paper's shared convolution, GroupNorm(16), no SiLU)
strip                     ``StripAttn(C, kernel_size=<ours>, bias=<ours>)``
splat                     ``SplitAttn(C, out, stride, groups=<ours>, radix=<ours>, rd_channels=d / R,
                          norm_layer=BatchNorm2d)``
bat                       ``BatNonLocalAttn(C, rd_channels=<ours>, groups=<ours>,
                          block_size=<ours>, drop_rate=<ours>)``, only for ours with
                          ``bias=False`` (timm's 1x1 convolutions have none) and H, W multiples
                          of the block size (timm asserts it)
========================  =====================================================================

Other modules have no timm counterpart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..errors import InputError

__all__ = ["TIMM_NAMES", "timm_counterpart"]


def _gate_name(module: nn.Module) -> str:
    gate = getattr(module, "gate", None)
    return "hard_sigmoid" if isinstance(gate, nn.Hardsigmoid) else "sigmoid"


def _has_bias(conv: nn.Module | None) -> bool:
    return getattr(conv, "bias", None) is not None


def _se(tl, ours, shape):
    c, rd = shape[1], ours.rd_channels
    return tl.SEModule(c, rd_channels=rd), f"timm.layers.SEModule({c}, rd_channels={rd})"


def _ese(tl, ours, shape):
    c, gate = shape[1], _gate_name(ours)
    return (tl.EffectiveSEModule(c, add_maxpool=False, gate_layer=gate),
            f"timm.layers.EffectiveSEModule({c}, gate_layer={gate!r})")


def _eca(tl, ours, shape):
    k = ours.kernel_size
    return tl.EcaModule(kernel_size=k), f"timm.layers.EcaModule(kernel_size={k})"


def _cbam(tl, ours, shape):
    c, ch = shape[1], ours.channel
    bias = _has_bias(getattr(ch, "fc1", None))
    k = ours.spatial.kernel_size
    return (tl.cbam.CbamModule(c, rd_channels=ch.rd_channels, mlp_bias=bias, spatial_kernel_size=k),
            f"timm.layers.CbamModule({c}, rd_channels={ch.rd_channels}, mlp_bias={bias})")


def _cbam_channel(tl, ours, shape):
    c = shape[1]
    bias = _has_bias(getattr(ours, "fc1", None))
    return (tl.cbam.ChannelAttn(c, rd_channels=ours.rd_channels, mlp_bias=bias),
            f"timm.layers.ChannelAttn({c}, rd_channels={ours.rd_channels}, mlp_bias={bias})")


def _cbam_spatial(tl, ours, shape):
    k = ours.kernel_size
    return tl.cbam.SpatialAttn(kernel_size=k), f"timm.layers.SpatialAttn(kernel_size={k})"


def _sk(tl, ours, shape):
    c = shape[1]
    if ours.num_branches != 2 or ours.stride != 1:
        raise InputError("the bench compares sk with 2 branches and stride 1 only")
    return (tl.SelectiveKernel(c, groups=ours.groups, rd_channels=ours.rd_channels, split_input=False),
            f"timm.layers.SelectiveKernel({c}, groups={ours.groups}, rd_channels={ours.rd_channels}, "
            "split_input=False)")


def _ge(tl, ours, shape):
    c = shape[1]
    parametric = ours.gather is not None
    mlp = ours.mlp is not None
    kw: dict[str, object] = dict(extent=ours.extent, use_mlp=mlp)
    if parametric:
        kw["extra_params"] = True
        if ours.extent == 0:
            kw["feat_size"] = tuple(shape[2:])
    if mlp:
        kw["rd_channels"] = ours.mlp[0].out_channels
    desc = f"timm.layers.GatherExcite({c}, {', '.join(f'{k}={v!r}' for k, v in kw.items())})"
    return tl.GatherExcite(c, **kw), desc


def _eps_of(ours: nn.Module) -> float:
    norm = ours.channel_add[1] if ours.channel_add is not None else ours.channel_mul[1]
    return float(getattr(norm, "eps", 1e-5))


def _global_context(tl, ours, shape):
    c = shape[1]
    add, mul = ours.channel_add is not None, ours.channel_mul is not None
    theirs = tl.GlobalContext(c, use_attn=ours.conv_mask is not None, fuse_add=add, fuse_scale=mul,
                              rd_channels=ours.rd_channels)
    eps = _eps_of(ours)
    for mlp in (theirs.mlp_add, theirs.mlp_scale):
        if mlp is not None:
            mlp.norm.eps = eps  # timm's LayerNorm2d: 1e-6; the official code (ours): 1e-5
    return theirs, (f"timm.layers.GlobalContext({c}, fuse_add={add}, fuse_scale={mul}, "
                    f"rd_channels={ours.rd_channels})")


def _ceca(tl, ours, shape):
    k, bias = ours.kernel_size, _has_bias(ours.conv)
    extra = {"act_layer": nn.Identity} if bias else {}
    return tl.CecaModule(kernel_size=k, **extra), f"timm.layers.CecaModule(kernel_size={k})"


def _lcbam(tl, ours, shape):
    c, bias = shape[1], _has_bias(ours.fc1)
    if _gate_name(ours) != "sigmoid":
        raise InputError("timm's LightCbamModule gates with the sigmoid only")
    return (tl.cbam.LightCbamModule(c, rd_channels=ours.rd_channels, mlp_bias=bias,
                                    spatial_kernel_size=ours.kernel_size),
            f"timm.layers.LightCbamModule({c}, rd_channels={ours.rd_channels}, mlp_bias={bias})")


def _coord(tl, ours, shape):
    c, bias = shape[1], _has_bias(ours.conv1)
    norm = None if isinstance(ours.bn1, nn.Identity) else type(ours.bn1)
    theirs = tl.coord_attn.CoordAttn(c, rd_channels=ours.rd_channels, bias=bias, act_layer=type(ours.act),
                                     norm_layer=norm, gate_layer=_gate_name(ours))
    return theirs, f"timm.layers.CoordAttn({c}, rd_channels={ours.rd_channels}, bias={bias})"


def _scoord(tl, ours, shape):
    c, bias = shape[1], _has_bias(ours.fc1)
    theirs = tl.coord_attn.SimpleCoordAttn(c, rd_channels=ours.rd_channels, bias=bias,
                                           act_layer=type(ours.act), gate_layer=_gate_name(ours))
    return theirs, f"timm.layers.SimpleCoordAttn({c}, rd_channels={ours.rd_channels}, bias={bias})"


def _ela(tl, ours, shape):
    c = shape[1]
    if ours.shared or ours.num_groups != 1 or not isinstance(ours.act, nn.SiLU):
        raise InputError("timm's EfficientLocalAttn has per-direction convolutions, GroupNorm(1) and a SiLU: "
                         "compare ela with shared=False, num_groups=1, act_layer='silu'")
    return (tl.coord_attn.EfficientLocalAttn(c, kernel_size=ours.kernel_size),
            f"timm.layers.EfficientLocalAttn({c}, kernel_size={ours.kernel_size})")


def _strip(tl, ours, shape):
    c = shape[1]
    bias = _has_bias(getattr(ours, "conv_h", None))
    return (tl.coord_attn.StripAttn(c, use_conv=ours.use_conv, kernel_size=ours.kernel_size, bias=bias,
                                    gate_layer=_gate_name(ours)),
            f"timm.layers.StripAttn({c}, kernel_size={ours.kernel_size}, bias={bias})")


def _splat(tl, ours, shape):
    c, r = shape[1], ours.radix
    if ours.rd_channels % r:
        raise InputError(f"timm's SplitAttn takes d / radix: d = {ours.rd_channels} is not a multiple of {r}")
    kw = dict(stride=ours.stride, groups=ours.cardinality, radix=r, rd_channels=ours.rd_channels // r,
              norm_layer=type(ours.bn0) if not isinstance(ours.bn0, nn.Identity) else None)
    desc = ", ".join(f"{k}={v!r}" for k, v in kw.items() if k != "norm_layer")
    return (tl.SplitAttn(c, ours.out_channels, **kw),
            f"timm.layers.SplitAttn({c}, {ours.out_channels}, {desc})")


def _bat(tl, ours, shape):
    c, s = shape[1], ours.block_size
    if _has_bias(ours.reduce[0]):
        raise InputError("timm's BatNonLocalAttn has no bias in its 1x1 convolutions: compare bat with "
                         "bias=False")
    if shape[2] % s or shape[3] % s:
        raise InputError(f"timm's BatNonLocalAttn takes only H, W that are multiples of block_size={s}")
    kw = dict(block_size=s, groups=ours.groups, rd_channels=ours.rd_channels, drop_rate=ours.dropout.p)
    return (tl.BatNonLocalAttn(c, **kw),
            f"timm.layers.BatNonLocalAttn({c}, {', '.join(f'{k}={v!r}' for k, v in kw.items())})")


_BUILDERS: dict[str, Callable] = {
    "se": _se,
    "se_var3": _ese,
    "eca": _eca,
    "cbam": _cbam,
    "cbam_channel": _cbam_channel,
    "cbam_spatial": _cbam_spatial,
    "sk": _sk,
    "ge_theta_minus": _ge,
    "ge_theta": _ge,
    "ge_theta_plus": _ge,
    "ceca": _ceca,
    "gc": _global_context,
    "gca": _global_context,
    "lcbam": _lcbam,
    "coord": _coord,
    "scoord": _scoord,
    "ela": _ela,
    "strip": _strip,
    "splat": _splat,
    "bat": _bat,
}

#: Registry names that have a timm counterpart (construction may still fail, see the table).
TIMM_NAMES = tuple(_BUILDERS)


def timm_counterpart(name: str, ours: nn.Module, shape: Sequence[int]) -> tuple[nn.Module, str] | None:
    """timm's module computing what ``ours`` computes on inputs of ``shape`` (B, C, H, W), and a
    description of how it was built; ``None`` where timm has no such module.

    Args:
        name: the registry name of ``ours`` (aliases resolved).
        ours: our module, whose hyper-parameters timm's module copies.
        shape: the input shape.

    Raises:
        ImportError: timm is not installed.
        Exception: whatever timm raises when it cannot build its module.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        return None
    import timm.layers as tl

    return builder(tl, ours, tuple(int(v) for v in shape))
