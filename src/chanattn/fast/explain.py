""":func:`explain`: which implementation a call takes, and why."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import registry

__all__ = ["Candidate", "Explanation", "explain"]


@dataclass(frozen=True)
class Candidate:
    """One registered fast implementation and whether it applies to the call (``reason`` if not)."""

    name: str
    purpose: str
    summary: str
    applies: bool
    reason: str


@dataclass(frozen=True)
class Explanation:
    """What ``module(x)`` runs: ``chosen`` (a fast implementation's name, or ``"formula"``), the
    ``candidates`` tried in order with their reasons, and the call's ``conditions`` (the input and
    the state that decide)."""

    module: str
    path: str  # where the module sits in a model ("" for the module itself)
    chosen: str
    candidates: tuple[Candidate, ...]
    conditions: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        lines = [f"{where}{self.module}: {self.chosen}", f"  call: {self.conditions}"]
        if not self.candidates:
            lines.append("  no fast implementation is registered: the formula runs")
        for c in self.candidates:
            mark = "->" if c.name == self.chosen else "  "
            verdict = "applies" if c.applies else f"no: {c.reason}"
            if c.applies and c.name != self.chosen:
                verdict = "applies, but an earlier one runs"
            lines.append(f"  {mark} {c.name} ({c.purpose}: {c.summary}): {verdict}")
        return "\n".join(lines)

    __repr__ = __str__


@dataclass(frozen=True)
class ModelExplanation:
    """:class:`Explanation` of every attention module a model's forward called, in call order."""

    calls: tuple[Explanation, ...]

    def __str__(self) -> str:
        if not self.calls:
            return "no attention module ran"
        return "\n".join(str(c) for c in self.calls)

    __repr__ = __str__


def _state(x: torch.Tensor, module: nn.Module) -> str:
    parts = [f"input {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} on {x.device.type}, "
             f"{registry.layout_of(x)}",
             f"module in {'train' if module.training else 'eval'} mode",
             "autograd records" if registry.grad_needed(x, module) else "autograd does not record"]
    if not registry.enabled():
        parts.append("fast paths off")
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        parts.append("torch.jit tracing")
    elif torch.compiler.is_exporting():
        parts.append("torch.export")
    elif torch.compiler.is_compiling():
        parts.append("torch.compile")
    if registry.autocast_on(x):
        parts.append("autocast on")
    parts.append(f"{torch.get_num_threads()} threads")
    return ", ".join(parts)


def _label(module: nn.Module) -> str:
    name = getattr(module, "registry_name", "")
    return f"{type(module).__name__}" + (f" {name!r}" if name else "")


def _explain_one(module: nn.Module, x: torch.Tensor, path: str = "") -> Explanation:
    candidates = []
    chosen = "formula"
    for impl in registry.implementations(module):
        ok, reason = impl.applies(module, x)
        if ok and chosen == "formula":
            chosen = impl.name
        candidates.append(Candidate(impl.name, impl.purpose, impl.summary, ok, reason))
    return Explanation(_label(module), path, chosen, tuple(candidates), _state(x, module))


def explain(module: nn.Module, x: torch.Tensor) -> Explanation | ModelExplanation:
    """Which implementation ``module(x)`` would take, and why: the first registered fast
    implementation that applies, else the formula; for each candidate the reason it does or does
    not apply (fast paths switched off, autograd recording or not, tracing or compiling, dtype,
    device, memory layout, the module's mode or configuration, the native kernel not built).

    The call is judged in the current state (grad mode, ``chanattn.fast_paths``, autocast), as the
    module would judge it. ``print(chanattn.explain(m, x))`` prints it; the result's ``chosen`` is
    the name.

    Args:
        module: an attention module, or a model that contains some: then the model runs once on
            ``x`` (in its mode and the current grad mode: a model in training mode updates its
            BatchNorm statistics as any call would) and every attention module it calls is
            explained at the input it receives (:class:`ModelExplanation`).
        x: the input.
    """
    from ..errors import InputTypeError
    from ..layers import AttentionModule

    if not isinstance(module, nn.Module):
        raise InputTypeError(f"chanattn.explain: module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"chanattn.explain: x must be a tensor, got {type(x).__name__}")
    if isinstance(module, AttentionModule):
        return _explain_one(module, x)
    calls: list[Explanation] = []
    names = {m: n for n, m in module.named_modules()}
    hooks = []

    def pre_hook(mod, args):
        if args and isinstance(args[0], torch.Tensor):
            calls.append(_explain_one(mod, args[0], names.get(mod, "")))

    for m in module.modules():
        if isinstance(m, AttentionModule):
            hooks.append(m.register_forward_pre_hook(pre_hook))
    try:
        module(x)
    finally:
        for h in hooks:
            h.remove()
    return ModelExplanation(tuple(calls))
