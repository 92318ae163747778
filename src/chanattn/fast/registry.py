"""The registry of fast implementations, the switch that turns them all off, and the dispatch that
every module's ``forward`` goes through.

A module's ``forward`` is the paper's formula. :class:`~chanattn.layers.AttentionModule` wraps the
``forward`` of each subclass (:func:`dispatching`): a call first asks the fast implementations
registered for the class that defines that ``forward`` (in registration order) whether they apply
to this call, and runs the first one that does; otherwise, and while :class:`fast_paths` is off,
the formula runs. Each :class:`FastPath` declares when it applies (autograd recording or not, dtype,
device, memory layout, the module's mode and configuration, a resource such as a built kernel), so
that :func:`chanattn.explain` can say why a call takes the path it takes and the contract test
(tests/test_fast_contract.py) can build the inputs where each one applies.

Nothing here imports a module file: the registrations are in the other files of this package.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "PURPOSES",
    "FastPath",
    "autocast_on",
    "dispatching",
    "eager",
    "enabled",
    "fast_paths",
    "grad_needed",
    "implementations",
    "layout_of",
    "register",
]

#: Why a fast implementation exists: ``"speed"`` (less time than the formula), ``"memory"`` (less
#: saved for the backward in training).
PURPOSES = ("speed", "memory")
LAYOUTS = ("contiguous", "channels_last")

_enabled = True
_REGISTRY: dict[type, list[FastPath]] = {}


class fast_paths:  # a function-like switch, as torch.no_grad
    """Switch every fast implementation on (``True``) or off (``False``: the formula everywhere).

    A plain call sets the switch and keeps it set: ``chanattn.fast_paths(False)``. As a context
    manager it restores the previous setting on exit::

        with chanattn.fast_paths(False):
            y = model(x)          # every module runs its paper's formula

    Thread safety: the switch is one setting for the whole process, not per thread (unlike
    ``torch.no_grad``): a switch in one thread applies to calls in every thread, and context
    managers entered and left by several threads at once restore each other's settings out of
    order. Set it once, or use it from one thread at a time. ``torch.compile`` reads it when it
    traces and guards on it (flipping it recompiles).
    """

    def __init__(self, enabled: bool = True) -> None:
        global _enabled
        if not isinstance(enabled, bool):
            from ..errors import InputTypeError

            raise InputTypeError(f"chanattn.fast_paths: enabled must be True or False, got {enabled!r}")
        self.previous = _enabled
        self.enabled = enabled
        _enabled = enabled

    def __enter__(self) -> fast_paths:
        return self

    def __exit__(self, *exc) -> None:
        global _enabled
        _enabled = self.previous

    def __repr__(self) -> str:
        return f"chanattn.fast_paths({self.enabled})"


def enabled() -> bool:
    """Whether the fast implementations are switched on (:class:`fast_paths`)."""
    return _enabled


# -- conditions shared by the implementations ------------------------------------------------------


def eager() -> bool:
    """True outside ``torch.jit`` tracing and scripting, ``torch.compile`` and ``torch.export``."""
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


def grad_needed(x: torch.Tensor, module: nn.Module | None = None) -> bool:
    """True where autograd will record this call: grad mode is on and ``x`` or a parameter of
    ``module`` requires a gradient."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad:
        return True
    return module is not None and any(p.requires_grad for p in module.parameters())


def autocast_on(x: torch.Tensor) -> bool:
    """True where autocast is enabled for ``x``'s device type (False for a device type without an
    autocast state, such as meta)."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:
        return False


def layout_of(x: torch.Tensor) -> str:
    """``"contiguous"`` (NCHW), ``"channels_last"`` (NHWC; a 1 x 1 map counts as contiguous) or
    ``"strided"`` (anything else, such as a view)."""
    if x.is_contiguous():
        return "contiguous"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


# -- the registry -----------------------------------------------------------------------------------


def _names(values) -> str:
    return ", ".join(str(v).replace("torch.", "") for v in values)


@dataclass(frozen=True)
class FastPath:
    """One fast implementation of a module class's formula, and when it applies.

    Attributes:
        name: ``"<module>.<what>"``, as :func:`chanattn.explain` prints it.
        module: the class whose ``forward`` (the formula) it replaces; it applies to instances of
            subclasses that do not define their own ``forward`` (``rcan_ca`` is an SE).
        run: ``run(module, x) -> y``, the same result as the formula (to rounding); it checks the
            input as the formula does.
        summary: what it does instead of the formula, one line.
        purpose: ``"speed"`` or ``"memory"`` (:data:`PURPOSES`).
        autograd: True: only where autograd records the call (a training path); False: only where
            it does not (an inference path, which may work in place and has no backward); None:
            either.
        dtypes, devices, layouts: the inputs it takes (None: any; layouts from ``"contiguous"``,
            ``"channels_last"``).
        module_mode: ``"train"`` or ``"eval"``: the module's mode it needs (None: either).
        configured: ``configured(module) -> None`` where it computes the module's configuration,
            else the reason it does not (another activation, a BatchNorm swapped out, ...).
        requires: ``requires() -> bool``: a resource it needs is there (the native kernel built);
            ``requires_why() -> str`` says why not.
        under_compile: it also applies under ``torch.compile`` (an operator the compiler can put
            in its graph); the others leave the formula to the compiler.
        examples: registry names and options the contract test builds (default: every registry
            name whose class takes this implementation, with its defaults).
    """

    name: str
    module: type
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor] = field(repr=False)
    summary: str
    purpose: str
    autograd: bool | None
    dtypes: tuple[torch.dtype, ...] | None = None
    devices: tuple[str, ...] | None = None
    layouts: tuple[str, ...] | None = None
    module_mode: str | None = None
    configured: Callable[[nn.Module], str | None] | None = field(default=None, repr=False)
    requires: Callable[[], bool] | None = field(default=None, repr=False)
    requires_why: Callable[[], str] | None = field(default=None, repr=False)
    under_compile: bool = False
    examples: tuple[tuple[str, dict], ...] = ()

    def __post_init__(self) -> None:
        from ..errors import InputError

        if self.purpose not in PURPOSES:
            raise InputError(f"FastPath {self.name!r}: purpose must be one of {PURPOSES}, "
                             f"got {self.purpose!r}")
        if self.layouts is not None and not set(self.layouts) <= set(LAYOUTS):
            raise InputError(f"FastPath {self.name!r}: layouts must be among {LAYOUTS}, got {self.layouts}")
        if self.module_mode not in (None, "train", "eval"):
            raise InputError(f"FastPath {self.name!r}: module_mode must be 'train', 'eval' or None")
        # the reasons as constants: under torch.compile the checks below are traced
        reasons = {
            "dtype": f"takes {_names(self.dtypes or ())} only",
            "device": f"runs on {_names(self.devices or ())} only",
            "layout": f"takes {_names(self.layouts or ())} tensors only",
            "mode": f"needs the module in {self.module_mode} mode",
        }
        object.__setattr__(self, "_reasons", reasons)

    def applies(self, module: nn.Module, x: torch.Tensor) -> tuple[bool, str]:
        """(True, "applies") where this implementation runs for ``module(x)``, else (False, the first
        reason it does not), the switch and the tracing state included."""
        if not _enabled:
            return False, "fast paths are off (chanattn.fast_paths(False))"
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return False, "torch.jit is tracing or scripting: the formula is recorded"
        if torch.compiler.is_exporting():
            return False, "torch.export: the formula is exported"
        if torch.compiler.is_compiling() and not self.under_compile:
            return False, "torch.compile: the compiler fuses the formula itself"
        return self.applies_to_call(module, x)

    def applies_to_call(self, module: nn.Module, x: torch.Tensor) -> tuple[bool, str]:
        """:meth:`applies` without the switch and the tracing state: the conditions on the call."""
        reasons: dict[str, str] = self._reasons  # type: ignore[attr-defined]
        if self.autograd is not None:
            records = grad_needed(x, module)
            if self.autograd and not records:
                return False, "autograd does not record this call (a training path)"
            if not self.autograd and records:
                return False, "autograd records this call (an inference path: no backward)"
            if self.autograd and autocast_on(x):
                return False, "autocast is on (a backward that recomputes would not see its casts)"
        if self.dtypes is not None and x.dtype not in self.dtypes:
            return False, reasons["dtype"]
        if self.devices is not None and x.device.type not in self.devices:
            return False, reasons["device"]
        if self.layouts is not None and layout_of(x) not in self.layouts:
            return False, reasons["layout"]
        if self.module_mode is not None and module.training != (self.module_mode == "train"):
            return False, reasons["mode"]
        if self.configured is not None:
            why = self.configured(module)
            if why is not None:
                return False, why
        if self.requires is not None and not self.requires():
            if self.requires_why is None or torch.compiler.is_compiling():
                return False, "a resource it needs is missing"
            return False, self.requires_why()
        return True, "applies"


def register(impl: FastPath) -> FastPath:
    """Add ``impl`` to its class's list (after the ones registered before: the first that applies
    runs).

    Raises:
        ValueError: the name is taken.
    """
    from ..errors import InputError

    for impls in _REGISTRY.values():
        if any(other.name == impl.name for other in impls):
            raise InputError(f"chanattn.fast.register: the name {impl.name!r} is already registered")
    _REGISTRY.setdefault(impl.module, []).append(impl)
    return impl


def implementations(module: nn.Module | type | None = None) -> list[FastPath]:
    """The fast implementations registered for ``module`` (an instance or a class: those of the
    class whose ``forward`` it runs), in the order they are tried; every one with None."""
    from ..registry import _ensure_loaded

    _ensure_loaded()  # the module classes, and with them the registrations
    if module is None:
        return [impl for impls in _REGISTRY.values() for impl in impls]
    cls = module if isinstance(module, type) else type(module)
    owner = getattr(cls.forward, "_formula_owner", None)
    return list(_REGISTRY.get(owner, ())) if owner is not None else []


def dispatching(owner: type, formula: Callable) -> Callable:
    """``owner.forward``: the first registered fast implementation that applies, else ``formula``."""

    @functools.wraps(formula)
    def forward(self, x, *args, **kwargs):
        if _enabled and not args and not kwargs and isinstance(x, torch.Tensor):
            for impl in _REGISTRY.get(owner, ()):
                if impl.applies(self, x)[0]:
                    return impl.run(self, x)
        return formula(self, x, *args, **kwargs)

    forward._formula_owner = owner
    forward.formula = formula
    return forward
