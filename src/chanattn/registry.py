"""The module registry: names -> classes, with the facts each module's paper gives.

Every attention module registers itself with :func:`register`; :func:`create` builds one by name,
:func:`list_modules` lists the names and :func:`module_info` returns what the catalogue says about
a name (title, paper, year, kind).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from torch import nn

from .errors import InputError, InputTypeError

__all__ = ["KINDS", "ModuleInfo", "create", "list_modules", "module_info", "register", "resolve_name"]

#: The kinds a module can be (see MODULES.md).
KINDS = ("channel", "spatial", "hybrid", "branch", "communication")


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
    """

    name: str
    title: str
    paper: str
    year: int
    kind: str
    cls: type = field(repr=False, compare=False)
    aliases: tuple[str, ...] = ()

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
) -> Callable[[T], T]:
    """Class decorator that registers an attention module under ``name`` (and ``aliases``).

    Raises:
        ValueError: the name or an alias is already registered, or ``kind`` is unknown.
    """
    if kind not in KINDS:
        raise InputError(f"register({name!r}): kind must be one of {KINDS}, got {kind!r}")

    def decorator(cls: T) -> T:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise InputError(f"register({name!r}): the name {key!r} is already registered")
        info = ModuleInfo(
            name=name, title=title, paper=paper, year=year, kind=kind, cls=cls,
            aliases=tuple(aliases),
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
