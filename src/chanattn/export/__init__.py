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

Layout: :mod:`.formats` (the paths and the check's settings), :mod:`.limitations` (what is known
not to export, and why a failure happened), :mod:`.backends` (the three paths and the check),
:mod:`.api` (:func:`export`, :func:`export_module`, :func:`export_model`), :mod:`.support` (the
record of every module and architecture along every path: ``chanattn export --record
tests/export_support.json`` writes it; the README tables are made from it and
``tests/test_export.py`` checks it). The command is :mod:`chanattn.cli.export`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "ATOL": ".formats",
    "FORMATS": ".formats",
    "ONNX_OPSET": ".formats",
    "SUFFIXES": ".formats",
    "ExportError": "..errors",
    "ExportResult": ".backends",
    "KNOWN_LIMITATIONS": ".limitations",
    "Limitation": ".limitations",
    "export": ".api",
    "export_model": ".api",
    "export_module": ".api",
    "load_support": ".support",
    "model_support": ".support",
    "module_support": ".support",
    "randomise_norms": ".support",
    "record": ".support",
}

__all__ = [
    "ATOL",
    "FORMATS",
    "KNOWN_LIMITATIONS",
    "ONNX_OPSET",
    "SUFFIXES",
    "ExportError",
    "ExportResult",
    "Limitation",
    "export",
    "export_model",
    "export_module",
    "load_support",
    "model_support",
    "module_support",
    "randomise_norms",
    "record",
]  # the names of _EXPORTS (a test checks)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from ..errors import ExportError
    from .api import export, export_model, export_module
    from .backends import ExportResult
    from .formats import ATOL, FORMATS, ONNX_OPSET, SUFFIXES
    from .limitations import KNOWN_LIMITATIONS, Limitation
    from .support import load_support, model_support, module_support, randomise_norms, record
