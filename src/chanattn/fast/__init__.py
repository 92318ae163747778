"""Fast implementations of the modules' formulas, in one place: the registry, the switch, and why a
call takes the path it takes.

Every module's ``forward`` is its paper's formula (``chanattn/modules/``). The files here register,
per module class, the implementations that compute the same thing faster or with less memory saved
for training, each with the conditions under which it applies (:class:`FastPath`); a module's call
runs the first that applies, else the formula:

- :func:`explain` (``chanattn.explain(module, x)``): which implementation a call takes and why;
- :class:`fast_paths` (``chanattn.fast_paths(False)``, also a context manager): the formula
  everywhere;
- :func:`implementations`: the registered implementations (of one module, or all).

Layout: :mod:`.registry` (:class:`FastPath`, the switch, the dispatch), :mod:`.explain`, the shared
building blocks (:mod:`.functional`: pooling and small layers arranged around ATen's CPU kernels and
the autograd Function of CBAM's spatial pooling; :mod:`.recompute`: BatchNorm and convolutions
inside Functions that recompute in the backward; :mod:`.native`: the C++ operator
``chanattn::cbam_forward``), and one file per paper that registers its implementations (:mod:`.se`,
:mod:`.cbam`, ...). Which implementations are kept, and the measurements behind each decision:
benchmarks/README.md ("Fast paths"); ``benchmarks/fast_paths.py`` measures them.
"""

from __future__ import annotations

import importlib

from .explain import Candidate, Explanation, ModelExplanation, explain
from .registry import FastPath, enabled, fast_paths, implementations, register

__all__ = [
    "Candidate",
    "Explanation",
    "FastPath",
    "ModelExplanation",
    "enabled",
    "explain",
    "fast_paths",
    "implementations",
    "register",
]

#: The files that register implementations, imported once the module classes exist
#: (:mod:`chanattn.modules` imports them last).
BUILTIN = ("se", "eca", "cbam", "selective_kernel", "c3", "encnet", "gsop", "soca")


def _register_builtin() -> None:
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.{name}")
