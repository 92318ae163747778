"""The three export paths (torch.export, ONNX through onnxruntime, TorchScript), each checked against
eager mode; :func:`run_export` takes one prepared :class:`Job` along one path."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ChanattnError, ExportError, InputTypeError
from ..io import atomic_path
from .formats import ONNX_OPSET, normalise_format
from .limitations import failure_reason, first_line, limitation_for

__all__ = ["ExportResult", "Job", "prepare", "run_export"]

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
        # torch.export.load of a program whose tensors share storage (views of one buffer)
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
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
    raise InputTypeError(f"chanattn.export: outputs must be tensors or tuples of tensors, "
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
                                               f"mode: {failure_reason(exc)}") from exc
            try:
                out = _flat(run(x))
            except Exception as exc:
                raise ExportError(target, fmt, f"the exported artifact fails at batch {x.shape[0]}: "
                                               f"{failure_reason(exc)}") from exc
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
                    return _Capture(None, False, error=failure_reason(exc))
                notes = ("the forward fixes the batch size (torch.export: the batch dimension specialised)",)
        try:
            return _Capture(torch.export.export(module, (example,), strict=False), False, notes)
        except Exception as exc:
            return _Capture(None, False, error=failure_reason(exc))


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
                                          f"(pip install 'chanattn[export]'); {first_line(exc)}") from exc
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
class Job:
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


def _write(job: Job, fmt: str, save: Callable[[str], None]) -> None:
    """``save(name)`` into a temporary file beside ``job.path``, renamed to it once whole
    (:func:`chanattn.io.atomic_path`); a failure is an ExportError naming the file."""
    try:
        with atomic_path(job.path) as tmp:
            save(tmp)
    except Exception as exc:
        raise ExportError(job.target, fmt, f"cannot write {job.path}: {failure_reason(exc)}") from exc


def _read_back(job: Job, fmt: str, load: Callable[[str], Any]) -> Any:
    """``load(path)`` of the file just written; a failure is an ExportError naming the file."""
    try:
        return load(str(job.path))
    except Exception as exc:
        raise ExportError(job.target, fmt, f"the written file {job.path} cannot be loaded back: "
                                           f"{failure_reason(exc)}") from exc


def _export_program(job: Job) -> ExportResult:
    fmt = "torch.export"
    cap = job.program(fmt)
    if job.path is not None:
        _write(job, fmt, lambda name: torch.export.save(cap.program, name))
        runnable = _read_back(job, fmt, lambda name: torch.export.load(name).module())
    else:
        runnable = cap.program.module()
    diff, batches = job.verify(fmt, runnable, cap.dynamic)
    return job.result(fmt, "torch.export", cap.dynamic, diff, batches, cap.program, cap.notes)


def _export_onnx(job: Job) -> ExportResult:
    fmt = "onnx"
    ort = _import_onnxruntime(job.target)
    cap = job.program(fmt)
    try:
        onnx_program = _onnx_from_program(cap.program)
        proto = onnx_program.model_proto
    except Exception as exc:
        raise ExportError(job.target, fmt, failure_reason(exc)) from exc
    if job.path is not None:
        _write(job, fmt, onnx_program.save)
        source: bytes | str = str(job.path)
    else:
        source = proto.SerializeToString()
    try:
        run = _ort_runner(ort, source)
    except Exception as exc:
        reason = f"onnxruntime cannot load the model: {failure_reason(exc)}"
        raise ExportError(job.target, fmt, reason) from exc
    diff, batches = job.verify(fmt, run, cap.dynamic)
    return job.result(fmt, "dynamo", cap.dynamic, diff, batches, proto, cap.notes)


def _export_torchscript(job: Job) -> ExportResult:
    fmt = "torchscript"
    notes: list[str] = []
    with _out_of_place_activations(job.module):
        try:
            scripted, via = torch.jit.script(job.module), "script"
        except Exception as exc:  # the usual case: Python-only constructs in the forward
            notes.append(f"torch.jit.script failed ({first_line(exc, 160)}); traced instead")
            try:
                example = _example_for_capture(job.example) if job.dynamic_batch else job.example
                scripted, via = torch.jit.trace(job.module, example, check_trace=False), "trace"
            except Exception as exc2:
                raise ExportError(job.target, fmt, f"neither scripting nor tracing works: "
                                                   f"{failure_reason(exc2)}") from exc2
    runnable = scripted
    if job.path is not None:
        _write(job, fmt, lambda name: torch.jit.save(scripted, name))
        runnable = _read_back(job, fmt, torch.jit.load)
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


_EXPORTERS: dict[str, Callable[[Job], ExportResult]] = {
    "torch.export": _export_program, "onnx": _export_onnx, "torchscript": _export_torchscript}


def prepare(module: nn.Module, example_input: torch.Tensor, fmt: str, target: str | None) -> tuple[str, str]:
    fmt = normalise_format(fmt)
    if not isinstance(module, nn.Module):
        raise InputTypeError(f"chanattn.export: module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise InputTypeError(f"chanattn.export: example_input must be a tensor, "
                        f"got {type(example_input).__name__}")
    target = target or _label(module)
    limitation = limitation_for(module, fmt)
    if limitation is not None:
        raise ExportError(target, fmt, limitation.reason)
    return fmt, target


def run_export(job: Job, fmt: str) -> ExportResult:
    """Export ``job`` along ``fmt``. The module's own input errors (eager mode, the example) come
    first, unchanged; every failure of the export itself is an :class:`ExportError` with its
    reason."""
    with _eval_mode(job.module), _quiet():
        with torch.no_grad():
            job.module(job.example)  # the module's own input errors come first, unchanged
        try:
            return _EXPORTERS[fmt](job)
        except ChanattnError:
            raise
        except Exception as exc:  # a failure no path above names: still one line, still an ExportError
            raise ExportError(job.target, fmt, failure_reason(exc)) from exc

