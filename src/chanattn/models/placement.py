"""Where an attention module goes in a backbone, from the module's registration.

Each module registers its paper's placement (:data:`chanattn.registry.PLACEMENTS`), its per-stage
settings (``stage_kwargs``) and its paper's backbone options (``backbone``); nothing here is keyed
on module names. :class:`AttnPlan` reads them for one backbone, and every model of
:mod:`chanattn.models` and :func:`chanattn.attach` build through it:

- ``"block"``, ``"last_block"``, ``"shared_per_stage"``: :meth:`AttnPlan.block_modules`, the
  modules of a stage's blocks (on the residual branch after the last BN, before the addition);
- ``"stage_start"``: :meth:`AttnPlan.stage_start`, a module on the input of a stage's first block
  (its ``pre_attn``, applied before the branch and the shortcut);
- ``"after_stage"``, ``"group_end"``, ``"head"``: :meth:`AttnPlan.stage_end`, a module after a
  stage (appended to the stage's ``nn.Sequential``, or wrapping its last block in
  :class:`AttnAfter`);
- ``"every_conv"``: :meth:`AttnPlan.before_every_conv`, a module on the input of every
  convolution (the convolution becomes a :class:`PreAttnConv2d`, its parameters keep their names);
- ``"replace_conv"``: :meth:`AttnPlan.conv3x3`, the module in place of a 3x3 convolution.

State-dict keys (stable; later code that converts published checkpoints relies on them): the
backbone's keys are torchvision's; a module on a block's residual branch is ``<block>.attn.*``,
one before a stage is ``<first block>.pre_attn.*``, one before a convolution ``<conv>.attn.*``
(the convolution's own ``<conv>.weight`` unchanged), one after a stage ``<stage>.<n>.*`` (the next
index of the stage's ``nn.Sequential``) or ``<block>.attn.*`` of an :class:`AttnAfter`, whose
wrapped block moves to ``<block>.module.*``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..registry import PLACEMENTS, ModuleInfo, Stage, create, module_info

__all__ = [
    "AttnAfter",
    "AttnKwargs",
    "AttnPlan",
    "AttnSpec",
    "IdentityInit",
    "PreAttnConv2d",
    "downsampled",
    "init_backbone_",
    "make_pool",
    "stage_end_flags",
]

#: ``attn`` of :func:`chanattn.create_model`: a registered name, a callable ``f(channels, **kw)``
#: returning a module (placed like ``"block"`` unless ``placement`` says otherwise), or None.
AttnSpec = str | Callable[..., nn.Module] | None

#: ``attn_kwargs``: options for every module, or ``f(stage) -> options`` per
#: :class:`~chanattn.registry.Stage` (None: no module in that stage).
AttnKwargs = dict | Callable[[Stage], "dict | None"] | None

#: Placements that put modules on the residual branch of blocks.
BLOCK_PLACEMENTS = ("block", "last_block", "shared_per_stage")
#: Placements that put one module after a stage.
STAGE_END_PLACEMENTS = ("after_stage", "group_end", "head")


def stage_end_flags(strides: Sequence[int]) -> list[bool]:
    """For stages whose first blocks have ``strides``, whether an ``"after_stage"`` module (BAM)
    follows each stage: where the next stage downsamples (BAM's "bottlenecks of the network")."""
    return [i + 1 < len(strides) and strides[i + 1] > 1 for i in range(len(strides))]


def downsampled(size: tuple[int, int] | None, stride: int) -> tuple[int, int] | None:
    """(H, W) after a padded convolution or pooling with ``stride`` (3x3 padding 1, 7x7 padding 3,
    1x1, 3x3 max pooling with padding 1 alike): ceil(H / stride), ceil(W / stride)."""
    if size is None or stride == 1:
        return size
    return (math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def _pair(size, owner: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (isinstance(size, (tuple, list)) and len(size) == 3):  # (C, H, W) as ModelInfo.input_size
        size = tuple(size[1:])
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise InputError(f"{owner}: input_size must be a positive int, (H, W) or (C, H, W), got {size!r}")
    return (int(size[0]), int(size[1]))


class PreAttnConv2d(nn.Conv2d):
    """y = conv(attn(x)): a convolution with an attention module on its input (``"every_conv"``,
    GCT before every convolution).

    A plain ``nn.Conv2d`` becomes one in place (``conv.__class__``), so its parameters keep their
    names (``weight``, ``bias``); the module is its child ``attn``.
    """

    attn: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.attn(x), self.weight, self.bias)


def put_before_conv(conv: nn.Conv2d, module: nn.Module) -> nn.Conv2d:
    """Turn the plain ``conv`` into a :class:`PreAttnConv2d` that applies ``module`` first."""
    if type(conv) is not nn.Conv2d:
        raise InputTypeError(f"put_before_conv: expected a plain nn.Conv2d, got {type(conv).__name__}")
    conv.__class__ = PreAttnConv2d
    conv.attn = module
    return conv


class AttnPlan:
    """The attention of one backbone: which module, with which options, and where it goes.

    Args:
        attn: a registered module name, a callable ``f(channels, **kwargs)`` returning an
            ``nn.Module`` that maps (B, C, H, W) to itself, or None.
        attn_kwargs: options for the module's constructor: a dict for every module, or a callable
            ``f(stage) -> dict | None`` (:class:`~chanattn.registry.Stage`; None: no module there).
            They are applied over the module's registered ``stage_kwargs``.
        placement: one of :data:`~chanattn.registry.PLACEMENTS` instead of the module's
            registered placement (a callable ``attn``: ``"block"`` unless given).
        arch: the architecture's name, for the modules' per-stage settings (ECA's released
            kernels).
        input_size: (H, W) the backbone is built for (its stages' feature sizes follow); None:
            the backbone's default.
        owner: named in errors.
    """

    def __init__(self, attn: AttnSpec = None, attn_kwargs: AttnKwargs = None, *, placement: str | None = None,
                 arch: str | None = None, input_size=None, owner: str = "create_model") -> None:
        if attn_kwargs is not None and not isinstance(attn_kwargs, Mapping) and not callable(attn_kwargs):
            raise InputTypeError(f"{owner}: attn_kwargs must be a dict or a callable f(stage) -> dict, "
                                 f"got {type(attn_kwargs).__name__}")
        if placement is not None and placement not in PLACEMENTS:
            raise InputError(f"{owner}: placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        self.kwargs: dict = dict(attn_kwargs) if isinstance(attn_kwargs, Mapping) else {}
        self.kwargs_fn = None if attn_kwargs is None or isinstance(attn_kwargs, Mapping) else attn_kwargs
        self.owner = owner
        self.arch = arch
        self.input_size = _pair(input_size, owner)
        self.num_stages = 1
        self.head = "avg"
        self.info: ModuleInfo | None = None
        #: every module this plan built (the backbone's initialisation leaves them alone)
        self.created: list[nn.Module] = []
        if attn is None:
            if self.kwargs or self.kwargs_fn is not None:
                raise InputError(f"{owner}: attn_kwargs given without attn")
            if placement is not None:
                raise InputError(f"{owner}: placement={placement!r} given without attn")
            self.name, self.factory, self.placement = None, None, "none"
        elif isinstance(attn, str):
            self.info = module_info(attn)
            self.name = self.info.name
            self.factory = None
            self.placement = placement or self.info.placement
        elif callable(attn):
            self.name, self.factory, self.placement = None, attn, placement or "block"
        else:
            raise InputTypeError(f"{owner}: attn must be a module name, a callable or None, got {attn!r}")
        self._check_placement()

    def _check_placement(self) -> None:
        what = self.name or getattr(self.factory, "__name__", "the attn callable")
        if self.placement == "replace_conv" and (self.info is None or self.info.kind != "branch"):
            raise InputError(f"{self.owner}: placement='replace_conv' replaces 3x3 convolutions and needs a "
                             f"module of kind 'branch' (sk), got {what!r}")
        shares = hasattr(getattr(self.info, "cls", None), "make_stage")
        if self.placement == "shared_per_stage" and not shares:
            raise InputError(f"{self.owner}: placement='shared_per_stage' needs a module that shares its "
                             f"state across a stage (dia), got {what!r}")

    @classmethod
    def of(cls, attn, attn_kwargs: AttnKwargs = None, *, owner: str) -> AttnPlan:
        """``attn`` itself if it is a plan (built by :func:`chanattn.create_model`), else a new one."""
        if isinstance(attn, AttnPlan):
            if attn_kwargs is not None:
                raise InputError(f"{owner}: attn_kwargs given with an AttnPlan (give them to the plan)")
            attn.owner = owner
            return attn
        return cls(attn, attn_kwargs, owner=owner)

    def __repr__(self) -> str:
        what = self.name or getattr(self.factory, "__name__", repr(self.factory))
        return f"AttnPlan({what!r}, placement={self.placement!r}, kwargs={self.kwargs_fn or self.kwargs})"

    @property
    def uses_sizes(self) -> bool:
        """Whether the modules' options depend on the feature sizes (per-stage settings)."""
        return self.kwargs_fn is not None or (self.info is not None and self.info.stage_kwargs is not None)

    def bind(self, *, num_stages: int, default_input_size, head: str = "avg") -> tuple[int, int]:
        """Tell the plan about the backbone (its stages, its pooling head); returns the input size
        to build for (the plan's, else ``default_input_size``)."""
        self.num_stages = num_stages
        self.head = head
        if self.input_size is None:
            self.input_size = _pair(default_input_size, self.owner)
        return self.input_size

    def stage(self, index: int, channels: int, size: tuple[int, int] | None, num_blocks: int = 1) -> Stage:
        """The :class:`~chanattn.registry.Stage` of a module of this backbone."""
        return Stage(index=index, channels=channels, size=None if size is None else tuple(size),
                     num_blocks=num_blocks, num_stages=self.num_stages, arch=self.arch, head=self.head)

    def options(self, stage: Stage) -> dict | None:
        """The module's constructor options in ``stage``: its registered ``stage_kwargs``, then
        ``attn_kwargs`` over them; None where there is no module."""
        base: dict | None = {}
        if self.info is not None and self.info.stage_kwargs is not None:
            base = self.info.stage_kwargs(stage)
        if self.kwargs_fn is not None:
            extra = self.kwargs_fn(stage)
            if extra is None:
                return None
            if not isinstance(extra, dict):
                raise InputTypeError(f"{self.owner}: the attn_kwargs callable returned "
                                     f"{type(extra).__name__}, expected a dict or None")
            return {**(base or {}), **extra}
        if base is None:
            return None
        return {**base, **self.kwargs}

    def new(self, where: Stage | int) -> nn.Module | None:
        """The module for ``where`` (a :class:`~chanattn.registry.Stage`, or a channel count: a
        stage of its own), or None where its settings put none."""
        stage = where if isinstance(where, Stage) else self.stage(0, where, None)
        kwargs = self.options(stage)
        if kwargs is None:
            return None
        if self.factory is not None:
            module = self.factory(stage.channels, **kwargs)
            if not isinstance(module, nn.Module):
                raise InputTypeError(f"{self.owner}: the attn callable returned {type(module).__name__}, "
                                     "expected an nn.Module")
        else:
            module = create(self.name, stage.channels, **kwargs)
        self.created.append(module)
        return module

    # --- the placements ---------------------------------------------------------------------

    def block_modules(self, stage: Stage, num_blocks: int | None = None) -> list[nn.Module | None]:
        """The modules of the ``num_blocks`` blocks of ``stage`` (default ``stage.num_blocks``)
        for the residual branch after the last BN (None: no module)."""
        n = stage.num_blocks if num_blocks is None else num_blocks
        if self.placement == "block":
            return [self.new(stage) for _ in range(n)]
        if self.placement == "last_block":
            return [None] * (n - 1) + [self.new(stage)]
        if self.placement == "shared_per_stage":
            kwargs = self.options(stage)
            if kwargs is None:
                return [None] * n
            modules = list(self.info.cls.make_stage(stage.channels, n, **kwargs))
            self.created += modules
            return modules
        return [None] * n

    def stage_start(self, stage: Stage) -> nn.Module | None:
        """The module on the input of ``stage`` (``"stage_start"``), else None; ``stage`` gives
        the stage's input channels and size."""
        return self.new(stage) if self.placement == "stage_start" else None

    def stage_end(self, stage: Stage, downsampled_next: bool) -> nn.Module | None:
        """The module after ``stage`` (``"after_stage"`` where the next stage downsamples,
        ``"group_end"`` after every stage, ``"head"`` after the last), else None."""
        if (self.placement == "after_stage" and downsampled_next) or self.placement == "group_end" \
                or (self.placement == "head" and stage.last):
            return self.new(stage)
        return None

    @property
    def replaces_conv(self) -> bool:
        """True for ``"replace_conv"`` (sk): blocks build their 3x3 convolution with :meth:`conv3x3`."""
        return self.placement == "replace_conv"

    def conv3x3(self, in_channels: int, out_channels: int, stride: int = 1,
                overrides: dict | None = None, stage: Stage | None = None) -> nn.Module:
        """The module that replaces a 3x3 convolution with its BN and ReLU (``sk``) in ``stage``;
        ``overrides`` are this backbone's defaults (MobileNetV2: depthwise, ReLU6), the module's
        options win."""
        if not self.replaces_conv:
            raise RuntimeError(f"{self!r} does not replace convolutions")
        options = self.options(stage or self.stage(0, in_channels, None))
        module = create(self.name, in_channels, out_channels=out_channels, stride=stride,
                        **{**(overrides or {}), **(options or {})})
        self.created.append(module)
        return module

    def conv_factory(self, stage: Stage, overrides: dict | None = None
                     ) -> Callable[[int, int, int], nn.Module] | None:
        """``f(in_channels, out_channels, stride)`` building :meth:`conv3x3` in ``stage`` for the
        blocks (``sk_conv``), or None where the plan does not replace convolutions."""
        if not self.replaces_conv:
            return None
        return lambda cin, cout, stride: self.conv3x3(cin, cout, stride, overrides, stage)

    def before_every_conv(self, model: nn.Module, stage_of: Callable[[str], tuple[int, int]]) -> list[str]:
        """``"every_conv"``: a module on the input of every plain ``nn.Conv2d`` of ``model`` (outside
        attention modules), with the convolution's input channels; ``stage_of(name)`` gives (stage
        index, blocks of the stage), -1 for the stem. Returns the convolutions' names."""
        if self.placement != "every_conv":
            return []
        from ..layers import AttentionModule

        created = {id(m) for m in self.created}
        skip: list[str] = []
        convs = []
        for name, m in model.named_modules():
            if isinstance(m, AttentionModule) or id(m) in created:
                skip.append(name + ".")
            elif type(m) is nn.Conv2d and not any(name.startswith(s) for s in skip):
                convs.append((name, m))
        done = []
        for name, conv in convs:
            index, blocks = stage_of(name)
            module = self.new(self.stage(index, conv.in_channels, None, blocks))
            if module is not None:
                put_before_conv(conv, module)
                done.append(name)
        return done


class AttnAfter(nn.Module):
    """y = attn(module(x)): a module followed by an attention module.

    Used where an attention module goes after a module that is not a Sequential (a module after
    the last block of a MobileNetV2 stage, or an explicit ``targets=`` of :func:`chanattn.attach`).
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


class IdentityInit(nn.Module):
    """y = b(x) + alpha * (attn(x) - b(x)), alpha a learnable scalar initialised to 0: an attention
    module inserted into a trained network without changing its output (``attach(init="identity")``).

    ``b`` is the identity, or the module that ``attn`` replaces (the SE of an EfficientNet block),
    so at insertion y = b(x) exactly. Training moves away from it: dL/dalpha = sum(dL/dy *
    (attn(x) - b(x))) is non-zero from the first step wherever the module does anything, while
    ``attn``'s own parameters get dL/dy * alpha * d attn/d theta, zero at the first step and
    non-zero once alpha has moved. At alpha = 1 the block computes what it would with ``attn``
    alone. As ReZero (Bachlechner et al., 2020) and SkipInit (De and Smith, 2020), which
    zero-initialise a scale on a residual branch; here the scale is on the module's change of the
    branch, so it works for any module that maps (B, C, H, W) to itself, not only gates whose
    parameters could be set to give the identity (a sigmoid gate cannot give 1).

    State dict: ``alpha``, the module's keys under ``module.``, the replaced module's under
    ``base.``. A state dict saved without the wrapper still loads: with a ``base``, the original
    network's (its keys map to ``base.``; alpha and the module are missing keys); without, one
    with the module alone (``attach`` without ``init``, ``create_model``; its keys map to
    ``module.`` and alpha = 1, the module as it was trained).

    Args:
        module: the attention module.
        base: the module it replaces (kept, trained as before), or None for the identity.
    """

    def __init__(self, module: nn.Module, base: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module
        self.base = base
        self.alpha = nn.Parameter(torch.zeros(()))
        self.register_load_state_dict_pre_hook(_map_unwrapped_attn_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x if self.base is None else self.base(x)
        return b + self.alpha * (self.module(x) - b)

    def extra_repr(self) -> str:
        return "y = b(x) + alpha * (module(x) - b(x))"


def _map_unwrapped_attn_keys(module: IdentityInit, state_dict: dict, prefix: str, *args) -> None:
    # A key saved without the wrapper, <prefix><rest>: the replaced module's (a checkpoint of the
    # original network) -> <prefix>base.<rest>; else the attention module's -> <prefix>module.<rest>
    # (and alpha = 1: the module alone, as it was trained).
    into = "module" if module.base is None else "base"
    inner = {f"{prefix}{into}.{k}" for k in getattr(module, into).state_dict()}
    mapped = False
    for key in list(state_dict):
        target = f"{prefix}{into}.{key[len(prefix):]}"
        if key.startswith(prefix) and key not in inner and target in inner:
            state_dict[target] = state_dict.pop(key)
            mapped = True
    if mapped and into == "module" and f"{prefix}alpha" not in state_dict:
        state_dict[f"{prefix}alpha"] = torch.ones(())


def make_pool(head: str, channels: int, head_kwargs: dict | None = None, *, owner: str,
              global_pool: str = "avg") -> tuple[nn.Module, int]:
    """The global pooling before the classifier and its number of output features.

    ``head="avg"``: a :class:`~chanattn.models.classifier.GlobalPool` of type ``global_pool``
    (default ``"avg"``, global average pooling: C features; timm's ``"max"``, ``"avgmax"``,
    ``"catavgmax"`` (2C), ``""``). ``head="gsop"``: the covariance-pooling head of GSoP-Net2
    (:class:`chanattn.modules.gsop.GSoPHead`, d(d+1)/2 features).
    """
    from .classifier import POOL_TYPES, GlobalPool

    if head == "avg":
        if head_kwargs:
            raise InputError(f"{owner}: head='avg' takes no head_kwargs, got {sorted(head_kwargs)}")
        if global_pool not in POOL_TYPES:
            raise InputError(f"{owner}: global_pool must be one of {POOL_TYPES}, got {global_pool!r}")
        pool = GlobalPool(global_pool)
        return pool, channels * pool.feat_mult()
    if head == "gsop":
        from ..modules.gsop import GSoPHead

        if global_pool != "avg":
            raise InputError(f"{owner}: head='gsop' is its own pooling; global_pool must stay 'avg', "
                             f"got {global_pool!r}")
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
