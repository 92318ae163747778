"""The support record: every registered module and every architecture along every path, written to
``tests/export_support.json`` by :func:`record` (``chanattn export --record FILE``); the README's
tables are generated from it and ``tests/test_export.py`` checks it."""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExportError
from ..io import write_json
from .api import default_example, model_example
from .backends import Job, prepare, run_export
from .formats import ATOL, FORMATS, ONNX_OPSET, SUFFIXES, normalise_format

__all__ = ["SUPPORT_CHANNELS", "SUPPORT_IMAGENET_SIZE", "load_support", "model_support", "module_support",
           "randomise_norms", "record"]

# ---- the support record: what the README table shows and tests/test_export.py checks ----

#: The channels and input size each registered module is checked at (every module takes C = 32).
SUPPORT_CHANNELS = 32
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


def _outcome(job: Job, fmt: str, directory: str | Path | None = None) -> dict[str, Any]:
    """The outcome of ``job`` along ``fmt``, the artifact written to ``directory`` (default a
    temporary one, removed afterwards) and checked as read back from the file."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="chanattn-export-"))
        job.path = Path(directory) / f"{job.target}{SUFFIXES[normalise_format(fmt)]}"
        try:
            fmt, _ = prepare(job.module, job.example, fmt, job.target)
            return run_export(job, fmt).support()
        except ExportError as exc:
            return {"ok": False, "reason": exc.reason}
        finally:
            job.path = None


# One job per name, kept while its paths are checked in turn (the torch.export capture is shared by
# the torch.export and ONNX paths); a few at a time, since a model job holds the model.
@functools.lru_cache(maxsize=4)
def _module_job(name: str) -> Job:
    from ..registry import create

    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's generator
        torch.manual_seed(0)
        module = create(name, SUPPORT_CHANNELS)
    randomise_norms(module)
    return Job(module, default_example(SUPPORT_CHANNELS), None, name, ATOL, True)


@functools.lru_cache(maxsize=1)
def _model_job(arch: str) -> Job:
    from ..models import create_model, model_info

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(arch)
    randomise_norms(model)
    size = None if model_info(arch).family in ("cifar", "plain") else SUPPORT_IMAGENET_SIZE
    return Job(model, model_example(arch, size), None, arch, ATOL, True)


def module_support(name: str, fmt: str, directory: str | Path | None = None) -> dict[str, Any]:
    """The outcome of the registered module ``name`` along ``fmt``, as the results file records it:
    ``{"ok": True, "via": ..., "dynamic_batch": ...}`` or ``{"ok": False, "reason": ...}``. The
    artifact is written (to ``directory`` as ``<name>.pt2``, ``.onnx`` or ``.pt``; default a
    temporary directory) and checked as loaded back from the file.

    The module is built with its defaults at C = 32, seeded, with random BN statistics; the
    example is a (2, 32, 9, 7) batch (a non-square map, not the 8 x 8 or 7 x 7 grids that ``c3``,
    ``ge_theta`` and ``fca`` pool to, so that their resampling is exported too).
    """
    return _outcome(_module_job(name), fmt, directory)


def model_support(arch: str, fmt: str, directory: str | Path | None = None) -> dict[str, Any]:
    """The outcome of the architecture ``arch`` (no attention) along ``fmt``: seeded, random BN
    statistics, a batch of 2 at 32 x 32 (the CIFAR and plain families) or 64 x 64 (ImageNet, mobile);
    written and read back as :func:`module_support`."""
    return _outcome(_model_job(arch), fmt, directory)


def record(path: str | Path, *, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run every registered module and every architecture along every path and write the outcomes
    to ``path`` (JSON): the file the README table is generated from and the tests check. The
    file's ``make_test_models`` (which architectures and paths ``make test`` checks, the rest being
    left to the full run) is kept from the file already there."""
    import time

    from ..models import list_models
    from ..registry import list_modules

    def versions() -> dict[str, str]:
        out = {"torch": torch.__version__.split("+")[0]}
        for pkg in ("onnx", "onnxscript", "onnxruntime"):
            with contextlib.suppress(ImportError):
                out[pkg] = __import__(pkg).__version__
        return out

    quick = load_support(path).get("make_test_models", {}) if Path(path).is_file() else {}
    data: dict[str, Any] = {"onnx_opset": ONNX_OPSET, "atol": ATOL, "versions": versions(),
                            "make_test_models": quick, "modules": {}, "models": {}}
    for kind, names, check in (("modules", list_modules(), module_support),
                               ("models", list_models(), model_support)):
        for name in names:
            data[kind][name] = {}
            for fmt in FORMATS:
                t0 = time.perf_counter()
                data[kind][name][fmt] = check(name, fmt)
                if log is not None:
                    log(f"{name:<18} {fmt:<13} {data[kind][name][fmt]}  ({time.perf_counter() - t0:.1f} s)")
    write_json(path, data, indent=1)
    return data


def load_support(path: str | Path) -> dict[str, Any]:
    """The results file written by :func:`record`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"chanattn.export: no export results at {path}; write them with "
                                f"`chanattn export --record {path}`") from None

