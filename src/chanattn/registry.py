"""The module registry: names -> classes, with the facts each module's paper gives.

Every attention module registers itself with :func:`register`; :func:`create` builds one by name,
:func:`list_modules` lists the names and :func:`module_info` returns what the catalogue says about
a name: title, paper, year, kind, and where the paper puts it in a network (``placement``, the
per-stage settings ``stage_kwargs`` and the ``backbone`` options of the paper's models), which
:func:`chanattn.create_model` and :func:`chanattn.attach` read.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from torch import nn

from .errors import InputError, InputTypeError

__all__ = ["KINDS", "PLACEMENTS", "ModuleInfo", "Stage", "create", "list_modules", "module_info", "register",
           "resolve_name"]

#: The kinds a module can be (see MODULES.md).
KINDS = ("channel", "spatial", "hybrid", "branch", "communication")

#: Where a module goes in a backbone (MODULES.md, "Placement in ResNets"), name -> what it means.
#: A module's registration names its paper's placement; ``create_model(..., placement=...)`` and
#: ``attach(..., placement=...)`` choose another.
PLACEMENTS: Mapping[str, str] = MappingProxyType({
    "block": "one module per residual block, on the residual branch after its last BN, before the "
             "addition with the shortcut",
    "last_block": "as 'block', in the last block of each stage only",
    "shared_per_stage": "as 'block', with one module state (DIA's LSTM cell) shared by the blocks of a stage",
    "stage_start": "one module before each stage, on the input of its first block (shortcut included)",
    "every_conv": "one module before every convolution of the backbone, the stem and the shortcuts included",
    "after_stage": "one module after each stage that is followed by a downsampling (the network's "
                   "bottlenecks), not inside the blocks",
    "group_end": "one module after every stage (the end of each residual group)",
    "head": "one module after the last stage, on the backbone's final feature map",
    "replace_conv": "the module replaces each block's 3x3 convolution with its BN and ReLU",
})


@dataclass(frozen=True)
class Stage:
    """Where one module goes in a backbone: what a module's ``stage_kwargs`` (and a callable
    ``attn_kwargs`` of :func:`chanattn.create_model`) receive to choose the module's options.

    Attributes:
        index: the stage, 0 for the first (``layer1``); -1 for the stem (``"every_conv"``).
        channels: the channels of the tensor the module sees.
        size: its (H, W) at the model's input size, or None where it is not known.
        num_blocks: the blocks of the stage (0 for the stem).
        num_stages: the stages of the backbone.
        arch: the architecture's name (``"resnet50"``), or None (a model :func:`chanattn.attach`
            does not recognise).
        head: the model's pooling head (``"avg"``, or ``"gsop"`` for GSoP-Net2).
    """

    index: int
    channels: int
    size: tuple[int, int] | None = None
    num_blocks: int = 1
    num_stages: int = 1
    arch: str | None = None
    head: str = "avg"

    @property
    def first(self) -> bool:
        """The first stage of the backbone."""
        return self.index == 0

    @property
    def last(self) -> bool:
        """The last stage of the backbone."""
        return self.index == self.num_stages - 1


#: A module's per-stage settings: ``f(stage) -> kwargs`` for its constructor, or None where its
#: paper puts no module in that stage.
StageKwargs = Callable[[Stage], "dict | None"]


@dataclass(frozen=True)
class ModuleInfo:
    """What the catalogue says about a registered module.

    Attributes:
        name: registry name (``"se"``).
        title: the module's name in its paper (``"Squeeze-and-Excitation"``).
        paper: paper title and where it appeared (arXiv id or venue).
        year: year of the paper.
        kind: one of :data:`KINDS`.
        cls: the ``nn.Module`` class that implements it.
        aliases: other names that resolve to it.
        placement: where its paper puts it in a network, one of :data:`PLACEMENTS`.
        stage_kwargs: its paper's per-stage settings, ``f(Stage) -> kwargs`` (None: none); where
            it returns None, the stage gets no module.
        backbone: options of the backbone its paper's models use (``{"last_stride": 1}``), which
            :func:`chanattn.create_model` applies where the architecture takes them and the
            caller did not set them.
        placement_note: why it goes there, with the paper's or official code's reference, and
            where a default is a choice rather than the paper's.
    """

    name: str
    title: str
    paper: str
    year: int
    kind: str
    cls: type = field(repr=False, compare=False)
    aliases: tuple[str, ...] = ()
    placement: str = "block"
    stage_kwargs: StageKwargs | None = field(default=None, repr=False, compare=False)
    backbone: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    placement_note: str = ""

    @property
    def channel_multiple(self) -> int:
        """Input channel counts must be a multiple of this (with the defaults)."""
        return getattr(self.cls, "channel_multiple", 1)

    @property
    def min_size(self) -> int:
        """The smallest H and W the module accepts (with the defaults)."""
        return getattr(self.cls, "min_size", 1)


_REGISTRY: dict[str, ModuleInfo] = {}
_ALIASES: dict[str, str] = {}

T = TypeVar("T", bound=type)


def register(
    name: str,
    *,
    title: str,
    paper: str,
    year: int,
    kind: str,
    aliases: tuple[str, ...] = (),
    placement: str = "block",
    stage_kwargs: StageKwargs | None = None,
    backbone: Mapping[str, object] | None = None,
    placement_note: str = "",
) -> Callable[[T], T]:
    """Class decorator that registers an attention module under ``name`` (and ``aliases``), with
    the facts of its paper (see :class:`ModuleInfo`).

    Raises:
        ValueError: the name or an alias is already registered, or ``kind`` or ``placement`` is
            unknown.
    """
    if kind not in KINDS:
        raise InputError(f"register({name!r}): kind must be one of {KINDS}, got {kind!r}")
    if placement not in PLACEMENTS:
        raise InputError(f"register({name!r}): placement must be one of {tuple(PLACEMENTS)}, "
                         f"got {placement!r}")
    if stage_kwargs is not None and not callable(stage_kwargs):
        raise InputError(f"register({name!r}): stage_kwargs must be a callable f(Stage) -> dict")

    def decorator(cls: T) -> T:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise InputError(f"register({name!r}): the name {key!r} is already registered")
        info = ModuleInfo(
            name=name, title=title, paper=paper, year=year, kind=kind, cls=cls,
            aliases=tuple(aliases), placement=placement, stage_kwargs=stage_kwargs,
            backbone=MappingProxyType(dict(backbone or {})), placement_note=placement_note,
        )
        _REGISTRY[name] = info
        for alias in aliases:
            _ALIASES[alias] = name
        cls.registry_name = name
        cls.kind = kind
        return cls

    return decorator


def _ensure_loaded() -> None:
    # The modules register themselves on import; importing the subpackage is enough.
    from . import modules  # noqa: F401


def resolve_name(name: str) -> str:
    """The canonical registry name for ``name`` (an alias resolves to its target).

    Raises:
        ValueError: unknown name; the message lists the close matches.
    """
    _ensure_loaded()
    key = normalize_name(name)
    if key in _REGISTRY:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise unknown_name_error("module", name, _REGISTRY, candidates=[*_REGISTRY, *_ALIASES])


def normalize_name(name: str, what: str = "module") -> str:
    """``name`` as a registry key: stripped, lower case, dashes as underscores."""
    if not isinstance(name, str):
        raise InputTypeError(f"chanattn: a {what} name must be a str, got {type(name).__name__}")
    return name.strip().lower().replace("-", "_")


def unknown_name_error(what: str, name: str, known, candidates=None) -> ValueError:
    """The ValueError for an unknown ``what`` (module, architecture): the close matches among
    ``candidates`` (default ``known``) and the ``known`` names."""
    key = normalize_name(name, what)
    close = difflib.get_close_matches(key, list(candidates if candidates is not None else known),
                                      n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return InputError(f"chanattn: unknown {what} {name!r}{hint} (known: {', '.join(sorted(known))})")


def list_modules(kind: str | None = None) -> list[str]:
    """Sorted registry names (aliases are not listed), optionally only those of one ``kind``."""
    _ensure_loaded()
    if kind is not None and kind not in KINDS:
        raise InputError(f"list_modules: kind must be one of {KINDS}, got {kind!r}")
    return sorted(n for n, info in _REGISTRY.items() if kind is None or info.kind == kind)


def module_info(name: str) -> ModuleInfo:
    """The :class:`ModuleInfo` of a registered name or alias."""
    return _REGISTRY[resolve_name(name)]


def create(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention module registered as ``name`` for ``channels`` input channels.

    The module maps (B, C, H, W) to (B, C, H, W). ``kwargs`` go to the module's constructor.

    Example:
        >>> import torch, chanattn
        >>> m = chanattn.create("se", 64)
        >>> m(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """
    info = module_info(name)
    return info.cls(channels, **kwargs)
