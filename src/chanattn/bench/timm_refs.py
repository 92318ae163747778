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
