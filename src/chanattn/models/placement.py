"""Where an attention module goes in a backbone: the rules of MODULES.md ("Placement in ResNets"),
shared by every model of :mod:`chanattn.models` and by :func:`chanattn.attach`.

- ``"block"`` (every channel module, ``cbam``, ``cbam_spatial``, ``ge_*``, ``bilinear``, ``c3``,
  ...): one module per block, on the residual branch after its last BN, before the addition with
  the shortcut;
- ``"stage"`` (``bam``): one module after each stage that is followed by a downsampling stage
  (stages 1-3 of an ImageNet ResNet, 1-2 of a CIFAR ResNet), not inside blocks;
- ``"conv"`` (``sk``, ``splat``): the module replaces a block's 3x3 convolution (and the BN and
  ReLU after it, which SK brings in each of its branches and split attention after its grouped
  convolution);
- ``"shared"`` (``dia``): per block like ``"block"``, with one LSTM cell and one state shared by
  the blocks of a stage (:func:`chanattn.modules.dianet.make_dia_stage`);
- ``"last_block"`` (``gsop``): like ``"block"``, in the last block of each stage only.

``c3`` goes per block, as MODULES.md says, on its default 8 x 8 working grid (inputs of another
size are resampled; ``attn_kwargs={"spatial_size": ...}`` changes it). The C3 paper's CIFAR models
put one C3 block before each stage instead (see :class:`chanattn.modules.c3.CrossChannelCommunication`);
that placement, behind the +0.07 M parameters of the paper's C3 column, is not offered here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..registry import create, resolve_name

__all__ = [
    "PLACEMENTS",
    "AttnAfter",
    "AttnPlan",
    "AttnSpec",
    "init_backbone_",
    "make_pool",
    "placement_of",
    "stage_end_flags",
]

#: The registry names whose placement is not "block".
PLACEMENTS: dict[str, str] = {"bam": "stage", "sk": "conv", "splat": "conv", "dia": "shared",
                              "gsop": "last_block"}

#: ``attn`` of :func:`chanattn.create_model`: a registered name, a callable ``f(channels, **kw)``
#: returning a module (placed like ``"block"``), or None.
AttnSpec = str | Callable[..., nn.Module] | None


def placement_of(name: str) -> str:
    """The placement rule of a registered module name (see the module docstring)."""
    return PLACEMENTS.get(resolve_name(name), "block")


def stage_end_flags(strides: Sequence[int]) -> list[bool]:
    """For stages whose first blocks have ``strides``, whether a ``"stage"`` module (BAM) follows
    each stage: where the next stage downsamples (BAM's "bottlenecks of the network")."""
    return [i + 1 < len(strides) and strides[i + 1] > 1 for i in range(len(strides))]


class AttnPlan:
    """The attention of one backbone: which module, with which options, and where it goes.

    Args:
        attn: a registered module name, a callable ``f(channels, **attn_kwargs)`` returning an
            ``nn.Module`` that maps (B, C, H, W) to itself (placed per block), or None.
        attn_kwargs: options for the module's constructor.
        owner: named in errors.
    """

    def __init__(self, attn: AttnSpec = None, attn_kwargs: dict | None = None, *,
                 owner: str = "create_model") -> None:
        if attn_kwargs is not None and not isinstance(attn_kwargs, dict):
            raise InputTypeError(f"{owner}: attn_kwargs must be a dict, got {type(attn_kwargs).__name__}")
        self.kwargs = dict(attn_kwargs or {})
        self.owner = owner
        #: every module this plan built (the backbone's initialisation leaves them alone)
        self.created: list[nn.Module] = []
        if attn is None:
            if self.kwargs:
                raise InputError(f"{owner}: attn_kwargs {sorted(self.kwargs)} given without attn")
            self.name, self.factory, self.placement = None, None, "none"
        elif isinstance(attn, str):
            self.name = resolve_name(attn)
            self.factory = None
            self.placement = placement_of(self.name)
        elif callable(attn):
            self.name, self.factory, self.placement = None, attn, "block"
        else:
            raise InputTypeError(f"{owner}: attn must be a module name, a callable or None, got {attn!r}")

    def __repr__(self) -> str:
        what = self.name or getattr(self.factory, "__name__", repr(self.factory))
        return f"AttnPlan({what!r}, placement={self.placement!r}, kwargs={self.kwargs})"

    @property
    def replaces_conv(self) -> bool:
        """True for ``sk``: blocks build their 3x3 convolution with :meth:`conv3x3`."""
        return self.placement == "conv"

    def new(self, channels: int) -> nn.Module:
        """One module for ``channels`` channels (any placement but ``"conv"``)."""
        if self.factory is not None:
            module = self.factory(channels, **self.kwargs)
            if not isinstance(module, nn.Module):
                raise InputTypeError(f"{self.owner}: the attn callable returned {type(module).__name__}, "
                                "expected an nn.Module")
        else:
            module = create(self.name, channels, **self.kwargs)
        self.created.append(module)
        return module

    def block_modules(self, channels: int, num_blocks: int) -> list[nn.Module | None]:
        """The attention of each of the ``num_blocks`` blocks of a stage (None: no module), for
        the residual branch after the last BN."""
        if self.placement == "block":
            return [self.new(channels) for _ in range(num_blocks)]
        if self.placement == "shared":
            from ..modules.dianet import make_dia_stage

            modules = list(make_dia_stage(channels, num_blocks, **self.kwargs))
            self.created += modules
            return modules
        if self.placement == "last_block":
            return [None] * (num_blocks - 1) + [self.new(channels)]
        return [None] * num_blocks

    def stage_module(self, channels: int) -> nn.Module | None:
        """The module that follows a stage (``bam``), else None."""
        return self.new(channels) if self.placement == "stage" else None

    def conv3x3(self, in_channels: int, out_channels: int, stride: int = 1,
                overrides: dict | None = None) -> nn.Module:
        """The module that replaces a 3x3 convolution with its BN and ReLU (``sk``); ``overrides``
        are this backbone's defaults (MobileNetV2: depthwise, ReLU6), ``attn_kwargs`` win."""
        if not self.replaces_conv:
            raise RuntimeError(f"{self!r} does not replace convolutions")
        kwargs = {**(overrides or {}), **self.kwargs}
        module = create(self.name, in_channels, out_channels=out_channels, stride=stride, **kwargs)
        self.created.append(module)
        return module


class AttnAfter(nn.Module):
    """y = attn(module(x)): a module followed by an attention module.

    Used where an attention module goes after a module that is not a Sequential (BAM after the
    last block of a MobileNetV2 stage, or an explicit ``targets=`` of :func:`chanattn.attach`).
    The wrapped module's parameters move from ``<name>.<param>`` to ``<name>.module.<param>``; a
    state dict saved before the wrapping still loads (the old keys are mapped on loading).

    Args:
        module: the wrapped module.
        attn: the attention module applied to its output.
    """

    def __init__(self, module: nn.Module, attn: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.attn = attn
        self.register_load_state_dict_pre_hook(_map_unwrapped_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.module(x))


def _map_unwrapped_keys(module: AttnAfter, state_dict: dict, prefix: str, *args) -> None:
    # A key of the wrapped module saved before the wrapping: <prefix><rest> -> <prefix>module.<rest>
    inner = {f"{prefix}module.{k}" for k in module.module.state_dict()}
    for key in list(state_dict):
        if key.startswith(prefix) and key not in inner and f"{prefix}module.{key[len(prefix):]}" in inner:
            state_dict[f"{prefix}module.{key[len(prefix):]}"] = state_dict.pop(key)


def make_pool(head: str, channels: int, head_kwargs: dict | None = None, *, owner: str
              ) -> tuple[nn.Module, int]:
    """The global pooling before the classifier and its number of output features.

    ``head="avg"``: global average pooling (C features). ``head="gsop"``: the covariance-pooling
    head of GSoP-Net2 (:class:`chanattn.modules.gsop.GSoPHead`, d(d+1)/2 features).
    """
    if head == "avg":
        if head_kwargs:
            raise InputError(f"{owner}: head='avg' takes no head_kwargs, got {sorted(head_kwargs)}")
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), channels
    if head == "gsop":
        from ..modules.gsop import GSoPHead

        pool = GSoPHead(channels, **(head_kwargs or {}))
        return pool, pool.out_features
    raise InputError(f"{owner}: head must be 'avg' or 'gsop', got {head!r}")


def init_backbone_(model: nn.Module, keep: Iterable[nn.Module] = ()) -> None:
    """Initialise the backbone's own layers in place: convolutions Kaiming-normal (fan-out, ReLU
    gain, as torchvision's ResNets), norms to weight 1 and bias 0. The modules in ``keep`` (the
    attention modules, the GSoP head) keep the initialisation their papers give them."""
    kept = {id(m) for m in keep}

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if id(child) in kept:
                continue
            if isinstance(child, nn.Conv2d):
                nn.init.kaiming_normal_(child.weight, mode="fan_out", nonlinearity="relu")
                if child.bias is not None:
                    nn.init.zeros_(child.bias)
            elif isinstance(child, (nn.BatchNorm2d, nn.GroupNorm)) and child.weight is not None:
                nn.init.ones_(child.weight)
                nn.init.zeros_(child.bias)
            visit(child)

    visit(model)
