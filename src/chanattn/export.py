"""Export attention modules and models along three paths, each checked against eager mode.

- ``"torch.export"``: :func:`torch.export.export` (non-strict), the batch dimension dynamic; the
  program is run (``ExportedProgram.module()``) and compared with eager mode.
- ``"onnx"``: that program translated to ONNX (opset :data:`ONNX_OPSET`) by torch's dynamo-based
  exporter, run in onnxruntime on the CPU and compared with eager mode.
- ``"torchscript"``: :func:`torch.jit.script` where it compiles, else :func:`torch.jit.trace`
  (which one is recorded); run and compared with eager mode.

Every export is taken in eval mode (the module's mode is restored afterwards), with H and W fixed
to the example's and the batch dimension dynamic where the module allows it; the check runs the
artifact on the example and on fresh inputs at batch sizes B, 1 and B + 1 (B of the example) and
requires ``|exported - eager| <= atol * max(1, max |eager|)`` everywhere (``atol`` =
:data:`ATOL`, 1e-4). The fresh input of the example's own shape catches a value of the example
fixed into the artifact (a trace of a branch on tensor values).
A module that cannot take a path raises :class:`ExportError`, whose message names the module, the
path and the reason: from :data:`KNOWN_LIMITATIONS` where the reason is known in advance, else
from the failure (data-dependent control flow, an operator without an ONNX translation, a missing
onnxruntime kernel, outputs that differ from eager mode), one line instead of torch's traceback.

Why the ONNX path has no fallback to the older TorchScript-based ONNX exporter: that exporter
traces, so a Python branch on tensor values would be fixed silently to the branch the example
took; the dynamo-based exporter exports every registered module and every architecture here.

``python -m chanattn.export --record tests/export_support.json`` re-runs every module and every
architecture along the three paths and writes the outcomes that the README table is made from and
that ``tests/test_export.py`` checks; ``chanattn export`` exports one module or model from the
command line.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CLIError

__all__ = [
    "ATOL",
    "DEFAULT_TEST_MODELS",
    "FORMATS",
    "KNOWN_LIMITATIONS",
    "ONNX_OPSET",
    "ExportError",
    "ExportResult",
    "Limitation",
    "add_parsers",
    "export",
    "export_model",
    "export_module",
    "load_support",
    "model_support",
    "module_support",
    "randomise_norms",
    "record",
]

#: The export paths, in the order of the README table.
FORMATS = ("torch.export", "onnx", "torchscript")

#: The ONNX opset of the ``"onnx"`` path (torch 2.14's default; onnxruntime 1.18+ runs it).
ONNX_OPSET = 20

#: The tolerance of the comparison with eager mode, relative to max(1, max |eager output|).
ATOL = 1e-4

_ALIASES = {"export": "torch.export", "torch_export": "torch.export", "pt2": "torch.export",
            "jit": "torchscript", "script": "torchscript", "trace": "torchscript"}


class ExportError(CLIError, RuntimeError):
    """A module or model that cannot take an export path: ``target: cannot export to fmt: reason``.

    Attributes:
        target: what was exported (``"se (SqueezeExcite, channels=32)"``, ``"resnet20"``).
        fmt: the path (one of :data:`FORMATS`).
        reason: why, one line.
    """

    def __init__(self, target: str, fmt: str, reason: str) -> None:
        self.target, self.fmt, self.reason = target, fmt, reason
        super().__init__(f"{target}: cannot export to {fmt}: {reason}")


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
    from .modules.dianet import DenseImplicitAttention

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


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """One line saying why an export failed."""
    text = str(exc)
    for pattern, reason in _FAILURE_PATTERNS:
        found = re.search(pattern, text)
        if found:
            return reason.format(*found.groups(), msg=_first_line(exc, 200), opset=ONNX_OPSET)
    return _first_line(exc)


@dataclass
class ExportResult:
    """What an export produced and how it was checked.

    Attributes:
        target: what was exported.
        fmt: the path.
        via: how: ``"torch.export"`` (non-strict); ``"dynamo"`` (the ONNX exporter); ``"script"`` or
            ``"trace"`` (TorchScript).
        dynamic_batch: the artifact takes any batch size (else only the example's).
        max_abs_diff: the largest |exported - eager| over the checked inputs.
        checked_batches: the batch sizes the artifact was run at (the example's first).
        path: the file written, or None.
        artifact: the ``ExportedProgram``, ``onnx.ModelProto`` or ``torch.jit.ScriptModule``.
        notes: what else happened (why scripting failed where it was traced, why the batch is
            fixed).
    """

    target: str
    fmt: str
    via: str
    dynamic_batch: bool
    max_abs_diff: float
    checked_batches: tuple[int, ...]
    path: str | None = None
    artifact: Any = field(default=None, repr=False)
    notes: tuple[str, ...] = ()

    def support(self) -> dict[str, Any]:
        """The outcome as recorded in the results file: ``{"ok": True, "via": ..., "dynamic_batch": ...}``."""
        return {"ok": True, "via": self.via, "dynamic_batch": self.dynamic_batch}


def _normalise_format(fmt: str) -> str:
    key = str(fmt).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"chanattn.export: fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return key


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the deprecation and tracer warnings of torch.jit and torch.onnx: the checks below
    are what tells whether an export is right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx.*|onnxscript.*")
        yield


def _label(module: nn.Module) -> str:
    name = getattr(module, "registry_name", "")
    channels = getattr(module, "channels", None)
    inner = type(module).__name__ + (f", channels={channels}" if channels is not None else "")
    return f"{name} ({inner})" if name else inner


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    raise TypeError(f"chanattn.export: outputs must be tensors or tuples of tensors, "
                    f"got {type(out).__name__}")


def _difference(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> tuple[float, float]:
    """(max |out - ref|, allowed scale max(1, max |ref|)); NaN or Inf where both agree counts as equal."""
    if len(outs) != len(refs):
        return math.inf, 1.0
    diff, scale = 0.0, 1.0
    for o, r in zip(outs, refs):
        o = torch.as_tensor(o).detach().to(torch.float64).cpu()
        r = r.detach().to(torch.float64).cpu()
        if o.shape != r.shape:
            return math.inf, 1.0
        same = (o == r) | (o.isnan() & r.isnan())
        d = torch.where(same, torch.zeros_like(o), (o - r).abs())
        d = torch.nan_to_num(d, nan=math.inf)
        if d.numel():
            diff = max(diff, float(d.max()))
            finite = r[r.isfinite()]
            if finite.numel():
                scale = max(scale, float(finite.abs().max()))
    return diff, scale


def _check_inputs(example: torch.Tensor, dynamic: bool) -> list[torch.Tensor]:
    """The inputs the artifact is checked on: the example, a fresh input of its shape (a value of
    the example fixed into the artifact shows there), and with a dynamic batch fresh inputs at
    batch sizes 1 and B + 1. Fresh inputs come from a fixed generator, on the example's scale."""
    g = torch.Generator().manual_seed(1234)
    scale = float(example.detach().float().std()) if example.numel() > 1 else 1.0
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    b = example.shape[0]
    sizes = [b] + (sorted({1, b + 1} - {b}) if dynamic else [])
    inputs = [example]
    for n in sizes:
        x = torch.randn((n, *example.shape[1:]), generator=g, dtype=torch.float32) * scale
        inputs.append(x.to(example.dtype))
    return inputs


def _verify(target: str, fmt: str, run: Callable[[torch.Tensor], Any], eager: nn.Module,
            inputs: list[torch.Tensor], atol: float) -> float:
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            try:
                ref = _flat(eager(x))
            except Exception as exc:
                raise ExportError(target, fmt, f"the module itself fails at batch {x.shape[0]} in eager "
                                               f"mode: {_reason(exc)}") from exc
            try:
                out = _flat(run(x))
            except Exception as exc:
                raise ExportError(target, fmt, f"the exported artifact fails at batch {x.shape[0]}: "
                                               f"{_reason(exc)}") from exc
        diff, scale = _difference(out, ref)
        if not diff <= atol * scale:
            raise ExportError(target, fmt, f"the exported outputs differ from eager mode by {diff:.3g} at "
                                           f"batch {x.shape[0]} (allowed {atol:g} x {scale:.3g})")
        worst = max(worst, diff)
    return worst


def _example_for_capture(example: torch.Tensor) -> torch.Tensor:
    # torch.export specialises a dimension of size 1: capture a batch of 1 as a batch of 2.
    return example if example.shape[0] >= 2 else example.repeat(2, *([1] * (example.dim() - 1)))


@contextlib.contextmanager
def _out_of_place_activations(module: nn.Module) -> Iterator[None]:
    """Activations built with ``inplace=True`` (``nn.ReLU(inplace=True)``, ...) run out of place
    while the graph is captured: the captured graph is functional either way, and torch's ONNX
    decompositions of in-place activations under a dynamic batch cost several times more (ReLU6 in
    MobileNetV2: 9 s instead of 4 s). The check compares with the module as it was."""
    flagged = [m for m in module.modules() if getattr(m, "inplace", None) is True]
    for m in flagged:
        m.inplace = False
    try:
        yield
    finally:
        for m in flagged:
            m.inplace = True


@dataclass
class _Capture:
    """A torch.export capture (or its failure), reused by the torch.export and ONNX paths."""

    program: torch.export.ExportedProgram | None
    dynamic: bool
    notes: tuple[str, ...] = ()
    error: str | None = None


def _capture(module: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> _Capture:
    """torch.export (non-strict), the batch dynamic where the module allows it (and was asked)."""
    notes: tuple[str, ...] = ()
    with _out_of_place_activations(module):
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1)
            try:
                program = torch.export.export(module, (_example_for_capture(example),),
                                              dynamic_shapes=({0: batch},), strict=False)
                return _Capture(program, True)
            except Exception as exc:  # a specialised batch is retried with a fixed one
                if not re.search(r"Constraints violated|specialized|specialised", str(exc)):
                    return _Capture(None, False, error=_reason(exc))
                notes = ("the forward fixes the batch size (torch.export: the batch dimension specialised)",)
        try:
            return _Capture(torch.export.export(module, (example,), strict=False), False, notes)
        except Exception as exc:
            return _Capture(None, False, error=_reason(exc))


@functools.cache
def _onnx_registry(opset: int):
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=opset)


def _onnx_from_program(program: torch.export.ExportedProgram):
    """The ONNX program of an ExportedProgram (dynamo-based exporter, opset :data:`ONNX_OPSET`).

    ``torch.onnx.export`` rebuilds its table of ONNX translations (about 1 s of CPU) on every call;
    where torch's exporter core takes a prepared table, it is built once per process and reused.
    The result is the same as ``torch.onnx.export(program, dynamo=True, opset_version=...)``.
    """
    try:
        from torch.onnx._internal.exporter import _core

        params = inspect.signature(_core.export).parameters
        fast = {"registry", "opset_version", "optimize", "verbose"} <= set(params)
    except (ImportError, AttributeError, ValueError):
        fast = False
    if fast:
        return _core.export(program, registry=_onnx_registry(ONNX_OPSET), opset_version=ONNX_OPSET,
                            optimize=True, verbose=False)
    return torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET, verbose=False)


def _import_onnxruntime(target: str):
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as exc:
        raise ExportError(target, "onnx", f"needs the packages onnx, onnxscript and onnxruntime "
                                          f"(pip install 'chanattn[export]'); {_first_line(exc)}") from exc
    return onnxruntime


def _ort_runner(ort, model: bytes | str) -> Callable[[torch.Tensor], Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor):
        return [torch.from_numpy(o) for o in session.run(None, {name: x.detach().cpu().numpy()})]

    return run


@dataclass
class _Job:
    """One export: what, how, and the capture shared between paths."""

    module: nn.Module
    example: torch.Tensor
    path: Path | None
    target: str
    atol: float
    dynamic_batch: bool
    capture: _Capture | None = None

    def program(self, fmt: str) -> _Capture:
        if self.capture is None:
            self.capture = _capture(self.module, self.example, self.dynamic_batch)
        if self.capture.error is not None:
            raise ExportError(self.target, fmt, self.capture.error)
        return self.capture

    def verify(self, fmt: str, run: Callable[[torch.Tensor], Any], dynamic: bool
               ) -> tuple[float, tuple[int, ...]]:
        inputs = _check_inputs(self.example, dynamic)
        diff = _verify(self.target, fmt, run, self.module, inputs, self.atol)
        return diff, tuple(dict.fromkeys(x.shape[0] for x in inputs))

    def result(self, fmt: str, via: str, dynamic: bool, diff: float, batches: tuple[int, ...],
               artifact: Any, notes: tuple[str, ...]) -> ExportResult:
        return ExportResult(self.target, fmt, via, dynamic, diff, batches,
                            None if self.path is None else str(self.path), artifact, notes)


def _export_program(job: _Job) -> ExportResult:
    fmt = "torch.export"
    cap = job.program(fmt)
    if job.path is not None:
        torch.export.save(cap.program, str(job.path))
        runnable = torch.export.load(str(job.path)).module()
    else:
        runnable = cap.program.module()
    diff, batches = job.verify(fmt, runnable, cap.dynamic)
    return job.result(fmt, "torch.export", cap.dynamic, diff, batches, cap.program, cap.notes)


def _export_onnx(job: _Job) -> ExportResult:
    fmt = "onnx"
    ort = _import_onnxruntime(job.target)
    cap = job.program(fmt)
    try:
        onnx_program = _onnx_from_program(cap.program)
        proto = onnx_program.model_proto
    except Exception as exc:
        raise ExportError(job.target, fmt, _reason(exc)) from exc
    if job.path is not None:
        onnx_program.save(str(job.path))
        source: bytes | str = str(job.path)
    else:
        source = proto.SerializeToString()
    try:
        run = _ort_runner(ort, source)
    except Exception as exc:
        raise ExportError(job.target, fmt, f"onnxruntime cannot load the model: {_reason(exc)}") from exc
    diff, batches = job.verify(fmt, run, cap.dynamic)
    return job.result(fmt, "dynamo", cap.dynamic, diff, batches, proto, cap.notes)


def _export_torchscript(job: _Job) -> ExportResult:
    fmt = "torchscript"
    notes: list[str] = []
    with _out_of_place_activations(job.module):
        try:
            scripted, via = torch.jit.script(job.module), "script"
        except Exception as exc:  # the usual case: Python-only constructs in the forward
            notes.append(f"torch.jit.script failed ({_first_line(exc, 160)}); traced instead")
            try:
                example = _example_for_capture(job.example) if job.dynamic_batch else job.example
                scripted, via = torch.jit.trace(job.module, example, check_trace=False), "trace"
            except Exception as exc2:
                raise ExportError(job.target, fmt, f"neither scripting nor tracing works: "
                                                   f"{_reason(exc2)}") from exc2
    runnable = scripted
    if job.path is not None:
        torch.jit.save(scripted, str(job.path))
        runnable = torch.jit.load(str(job.path))
    try:
        dynamic = job.dynamic_batch
        diff, batches = job.verify(fmt, runnable, dynamic)
    except ExportError as exc:
        if not job.dynamic_batch:
            raise
        # a trace (or the module itself) may fix the batch size: accept it at the example's batch
        diff, batches = job.verify(fmt, runnable, False)
        dynamic = False
        notes.append(f"the {'trace' if via == 'trace' else 'module'} fixes the batch size ({exc.reason})")
    return job.result(fmt, via, dynamic, diff, batches, scripted, tuple(notes))


_EXPORTERS: dict[str, Callable[[_Job], ExportResult]] = {
    "torch.export": _export_program, "onnx": _export_onnx, "torchscript": _export_torchscript}


def _prepare(module: nn.Module, example_input: torch.Tensor, fmt: str, target: str | None) -> tuple[str, str]:
    fmt = _normalise_format(fmt)
    if not isinstance(module, nn.Module):
        raise TypeError(f"chanattn.export: module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"chanattn.export: example_input must be a tensor, "
                        f"got {type(example_input).__name__}")
    target = target or _label(module)
    for limitation in KNOWN_LIMITATIONS:
        if fmt in limitation.formats and limitation.applies(module):
            raise ExportError(target, fmt, limitation.reason)
    return fmt, target


def _run(job: _Job, fmt: str) -> ExportResult:
    with _eval_mode(job.module), _quiet():
        with torch.no_grad():
            job.module(job.example)  # the module's own input errors come first, unchanged
        return _EXPORTERS[fmt](job)


def export(module: nn.Module, example_input: torch.Tensor, path: str | Path | None = None,
           fmt: str = "onnx", *, target: str | None = None, atol: float = ATOL,
           dynamic_batch: bool = True) -> ExportResult:
    """Export ``module`` along ``fmt`` in eval mode and check the result against eager mode.

    Args:
        module: any ``nn.Module`` taking one tensor (an attention module, a model).
        example_input: the input the export is captured with; H, W (and every dimension but the
            batch) are fixed to its shape.
        path: where to write the artifact (``.pt2`` for ``torch.export``, ``.onnx``, ``.pt`` for
            TorchScript; default None: nothing is written). When given, the check runs the file
            read back.
        fmt: ``"torch.export"``, ``"onnx"`` or ``"torchscript"`` (default ``"onnx"``).
        target: the name used in messages (default: the module's registry name and class).
        atol: the tolerance of the check, relative to max(1, max |eager output|) (default 1e-4).
        dynamic_batch: capture the batch dimension as dynamic where the module allows it (default
            True); False fixes it to the example's (a faster capture).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: the module cannot take the path; the message names the module, the path and
            the reason.
        ValueError, TypeError: ``fmt`` is unknown, or the module rejects ``example_input`` in
            eager mode (its own error).
    """
    fmt, target = _prepare(module, example_input, fmt, target)
    job = _Job(module, example_input.detach(), None if path is None else Path(path), target, atol,
               bool(dynamic_batch))
    return _run(job, fmt)


def _default_example(channels: int, size: tuple[int, int] = (9, 7), batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, *size, generator=g)


def export_module(module_or_name: nn.Module | str, example_input: torch.Tensor | None = None,
                  path: str | Path | None = None, fmt: str = "onnx", *, channels: int | None = None,
                  atol: float = ATOL, dynamic_batch: bool = True, **module_kwargs) -> ExportResult:
    """Export an attention module, given as a module or a registered name.

    Args:
        module_or_name: a module, or a name of :func:`chanattn.list_modules` (built with
            ``channels`` and ``module_kwargs``).
        example_input: default a (2, C, 9, 7) standard normal batch (fixed seed).
        path, fmt, atol, dynamic_batch: as :func:`export`.
        channels: C for a name (default: the example's channels, else 32).
        **module_kwargs: the module's constructor options, for a name.
    """
    from .registry import create

    if isinstance(module_or_name, str):
        if channels is None:
            channels = int(example_input.shape[1]) if example_input is not None else 32
        module = create(module_or_name, channels, **module_kwargs)
    elif module_kwargs or channels is not None:
        raise ValueError("export_module: channels and module options apply to a registered name, "
                         f"not to a module instance ({type(module_or_name).__name__})")
    else:
        module = module_or_name
    if example_input is None:
        example_input = _default_example(int(getattr(module, "channels", channels or 32)))
    return export(module, example_input, path, fmt, atol=atol, dynamic_batch=dynamic_batch)


def _model_example(arch: str, size: int | None = None, batch: int = 2) -> torch.Tensor:
    from .models import model_info

    c, h, w = model_info(arch).input_size
    if size is not None:
        h = w = size
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, c, h, w, generator=g)


def export_model(arch: str, example_input: torch.Tensor | None = None, path: str | Path | None = None,
                 fmt: str = "onnx", *, attn=None, attn_kwargs: dict | None = None, atol: float = ATOL,
                 dynamic_batch: bool = True, **model_kwargs) -> ExportResult:
    """Export ``chanattn.create_model(arch, attn=attn, attn_kwargs=attn_kwargs, **model_kwargs)``.

    ``example_input`` defaults to a batch of 2 at the architecture's input size (224 x 224 for the
    ImageNet family); see :func:`export` for the rest.
    """
    from .models import create_model

    model = create_model(arch, attn=attn, attn_kwargs=attn_kwargs, **model_kwargs)
    if example_input is None:
        example_input = _model_example(arch)
    target = arch + (f" + {attn}" if isinstance(attn, str) else "")
    return export(model, example_input, path, fmt, target=target, atol=atol, dynamic_batch=dynamic_batch)


# ---- the support record: what the README table shows and tests/test_export.py checks ----

#: The channels and input size each registered module is checked at (every module takes C = 32).
SUPPORT_CHANNELS = 32
#: The architectures and paths whose outcomes ``make test`` checks (tests/test_export.py): each
#: distinct code path (plain CNN, CIFAR ResNet, pre-activation wide ResNet, basic and bottleneck
#: ImageNet ResNet with the max-pooling stem, MobileNetV2's depthwise blocks and ReLU6) through
#: torch.export and TorchScript, and ONNX for one of each operator set (CIFAR ResNet, ImageNet
#: ResNet, MobileNetV2), within about 20 s of CPU. The rest are deeper or wider variants of the same
#: code, checked by the full run (``CHANATTN_EXPORT_ALL=1``, or :func:`record`).
DEFAULT_TEST_MODELS: dict[str, tuple[str, ...]] = {
    "plain_cnn": ("torch.export", "torchscript"),
    "resnet8": FORMATS,
    "wrn16_4": ("torch.export", "torchscript"),
    "resnet18": FORMATS,
    "resnet50": ("torch.export", "torchscript"),
    "mobilenet_v2": FORMATS,
}
#: The input side of the ImageNet and mobile architectures in the check (their stems reduce by 4,
#: their stages by 8 more: 64 leaves a 2 x 2 map in the last stage).
SUPPORT_IMAGENET_SIZE = 64


def randomise_norms(module: nn.Module, seed: int = 1) -> None:
    """Give every BatchNorm non-trivial running statistics, weights and biases, so that a check in
    eval mode cannot pass only because BN is the identity at initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _outcome(job: _Job, fmt: str) -> dict[str, Any]:
    try:
        fmt, _ = _prepare(job.module, job.example, fmt, job.target)
        return _run(job, fmt).support()
    except ExportError as exc:
        return {"ok": False, "reason": exc.reason}


# One job per name, kept while its paths are checked in turn (the torch.export capture is shared by
# the torch.export and ONNX paths); a few at a time, since a model job holds the model.
@functools.lru_cache(maxsize=4)
def _module_job(name: str) -> _Job:
    from .registry import create

    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's generator
        torch.manual_seed(0)
        module = create(name, SUPPORT_CHANNELS)
    randomise_norms(module)
    return _Job(module, _default_example(SUPPORT_CHANNELS), None, name, ATOL, True)


@functools.lru_cache(maxsize=1)
def _model_job(arch: str) -> _Job:
    from .models import create_model, model_info

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(arch)
    randomise_norms(model)
    size = None if model_info(arch).family in ("cifar", "plain") else SUPPORT_IMAGENET_SIZE
    return _Job(model, _model_example(arch, size), None, arch, ATOL, True)


def module_support(name: str, fmt: str) -> dict[str, Any]:
    """The outcome of the registered module ``name`` along ``fmt``, as the results file records it:
    ``{"ok": True, "via": ..., "dynamic_batch": ...}`` or ``{"ok": False, "reason": ...}``.

    The module is built with its defaults at C = 32, seeded, with random BN statistics; the
    example is a (2, 32, 9, 7) batch (a non-square map, not the 8 x 8 or 7 x 7 grids that ``c3``,
    ``ge_theta`` and ``fca`` pool to, so that their resampling is exported too).
    """
    return _outcome(_module_job(name), fmt)


def model_support(arch: str, fmt: str) -> dict[str, Any]:
    """The outcome of the architecture ``arch`` (no attention) along ``fmt``: seeded, random BN
    statistics, a batch of 2 at 32 x 32 (the CIFAR and plain families) or 64 x 64 (ImageNet, mobile)."""
    return _outcome(_model_job(arch), fmt)


def record(path: str | Path, *, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run every registered module and every architecture along every path and write the outcomes
    to ``path`` (JSON): the file the README table is generated from and the tests check."""
    import time

    from .models import list_models
    from .registry import list_modules

    def versions() -> dict[str, str]:
        out = {"torch": torch.__version__.split("+")[0]}
        for pkg in ("onnx", "onnxscript", "onnxruntime"):
            with contextlib.suppress(ImportError):
                out[pkg] = __import__(pkg).__version__
        return out

    data: dict[str, Any] = {"onnx_opset": ONNX_OPSET, "atol": ATOL, "versions": versions(),
                            "modules": {}, "models": {}}
    for kind, names, check in (("modules", list_modules(), module_support),
                               ("models", list_models(), model_support)):
        for name in names:
            data[kind][name] = {}
            for fmt in FORMATS:
                t0 = time.perf_counter()
                data[kind][name][fmt] = check(name, fmt)
                if log is not None:
                    log(f"{name:<18} {fmt:<13} {data[kind][name][fmt]}  ({time.perf_counter() - t0:.1f} s)")
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return data


def load_support(path: str | Path) -> dict[str, Any]:
    """The results file written by :func:`record`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"chanattn.export: no export results at {path}; write them with "
                                f"`python -m chanattn.export --record {path}`") from None


# ---- command line: chanattn export ----

def _cmd_export(args: argparse.Namespace) -> int:
    from .cli import _parse_shape

    if args.record is not None:
        if args.module or args.arch:
            raise CLIError("--record runs every module and model; leave out --module and --arch")
        record(args.record)
        print(f"chanattn export: wrote {args.record}")
        return 0
    if bool(args.module) == bool(args.arch):
        raise CLIError("give one of --module NAME or --arch NAME (or --record FILE)")
    if args.out is None:
        raise CLIError("--out FILE is required")
    fmt = _normalise_format(args.format)
    if args.module:
        if args.attn is not None:
            raise CLIError("--attn goes with --arch, not --module")
        if args.shape is not None:
            b, c, h, w = _parse_shape(args.shape)
            if args.channels is not None and args.channels != c:
                raise CLIError(f"--channels {args.channels} disagrees with --shape {args.shape}")
        else:
            c = args.channels if args.channels is not None else 64
            b, h, w = 1, 14, 14
        g = torch.Generator().manual_seed(0)
        result = export_module(args.module, torch.randn(b, c, h, w, generator=g), args.out, fmt)
    else:
        from .models import model_info

        if args.channels is not None:
            raise CLIError("--channels goes with --module; a model's input is set by --shape")
        shape = _parse_shape(args.shape) if args.shape is not None else (1, *model_info(args.arch).input_size)
        g = torch.Generator().manual_seed(0)
        kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
        result = export_model(args.arch, torch.randn(*shape, generator=g), args.out, fmt, attn=args.attn,
                              in_chans=shape[1], **kwargs)
    batch = "dynamic batch" if result.dynamic_batch else "fixed batch"
    print(f"chanattn export: {result.target} -> {result.path} ({result.fmt} via {result.via}, {batch}; "
          f"max |exported - eager| = {result.max_abs_diff:.2g} at batch sizes "
          f"{', '.join(map(str, result.checked_batches))})")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def add_parsers(subparsers) -> None:
    """The ``export`` sub-command of ``chanattn``."""
    p = subparsers.add_parser(
        "export", help="export a module or a model (torch.export, ONNX, TorchScript), checked against eager",
        description="Export one attention module or model in eval mode and check the artifact against "
                    "eager mode (onnxruntime for ONNX). --record FILE re-runs every module and model "
                    "along every path and writes the results table.")
    p.add_argument("--module", default=None, help="a registered module name (chanattn list)")
    p.add_argument("--arch", default=None, help="an architecture (chanattn models)")
    p.add_argument("--attn", default=None, help="with --arch: the attention module in it")
    p.add_argument("--num-classes", type=int, default=None, help="with --arch: classes of the head")
    p.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)} (default onnx)")
    p.add_argument("--out", default=None, help="the file to write (.onnx, .pt2, .pt)")
    p.add_argument("--shape", default=None,
                   help="example input BxCxHxW (default 1xCx14x14 for a module, the architecture's size "
                        "for a model); H and W are fixed in the export, the batch is dynamic")
    p.add_argument("--channels", type=int, default=None, help="with --module: C (default 64)")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="run every module and model along every path and write the results (JSON)")
    p.set_defaults(func=_cmd_export)


def main(argv: list[str] | None = None) -> int:
    """``python -m chanattn.export --record FILE`` (or any ``chanattn export`` arguments)."""
    from .cli import main as cli_main

    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
