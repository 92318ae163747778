"""What cannot be exported, known in advance (:data:`KNOWN_LIMITATIONS`, checked before any attempt),
and the one-line reason of a failure found by trying (:func:`failure_reason`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .formats import FORMATS, ONNX_OPSET

__all__ = ["KNOWN_LIMITATIONS", "Limitation", "failure_reason", "first_line", "limitation_for"]

@dataclass(frozen=True)
class Limitation:
    """A module configuration that cannot take some export paths, and why.

    Attributes:
        formats: the paths it rules out.
        reason: one line, shown in :class:`ExportError`.
        applies: ``f(module) -> bool``, true for the modules it concerns.
    """

    formats: tuple[str, ...]
    reason: str
    applies: Callable[[nn.Module], bool] = field(repr=False)


def _dia_block_of_a_stage(module: nn.Module) -> bool:
    from ..modules.dianet import DenseImplicitAttention

    return isinstance(module, DenseImplicitAttention) and module.stage_state.num_blocks > 1


#: What is known not to export, checked before any attempt. The registered modules with their
#: defaults and every architecture of :func:`chanattn.list_models` take all three paths; these are
#: the configurations that do not.
KNOWN_LIMITATIONS: tuple[Limitation, ...] = (
    Limitation(
        FORMATS,
        "a block of a multi-block DIA stage reads the (h, c) state that the block before it leaves "
        "during the same forward (Python state, not an input); export the model or the stage that "
        "runs all its blocks in order",
        _dia_block_of_a_stage,
    ),
)

# Failures whose cause a pattern of torch's or onnxruntime's message tells: (pattern, reason);
# the reason may use the pattern's groups ({0}, {1}).
_FAILURE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"GuardOnDataDependentSymNode|data-dependent|data dependent",
     "the forward branches on tensor values or turns them into Python numbers (data-dependent "
     "control flow), which a captured graph cannot hold"),
    (r"Could not find an implementation for (\w+)\((\d+)\)",
     "onnxruntime's CPU provider has no kernel for the ONNX operator {0} (opset {1}) in this dtype"),
    (r"No ONNX function found for <OpOverload\(op='([\w.:]+)'",
     "the operator {0} has no ONNX translation at opset {opset}"),
    (r"Unsupported: ONNX export of operator ([\w:.]+)",
     "the operator {0} has no ONNX translation"),
    (r"No decomposition|not supported by the ONNX exporter|Unsupported FX node",
     "an operator has no ONNX translation ({msg})"),
)


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def failure_reason(exc: BaseException) -> str:
    """One line saying why an export failed."""
    text = str(exc)
    for pattern, reason in _FAILURE_PATTERNS:
        found = re.search(pattern, text)
        if found:
            return reason.format(*found.groups(), msg=first_line(exc, 200), opset=ONNX_OPSET)
    return first_line(exc)



def limitation_for(module: nn.Module, fmt: str) -> Limitation | None:
    """The known limitation that rules ``fmt`` out for ``module``, or None."""
    return next((lim for lim in KNOWN_LIMITATIONS if fmt in lim.formats and lim.applies(module)), None)
