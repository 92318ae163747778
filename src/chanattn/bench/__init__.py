"""The cost bench behind ``chanattn bench``: parameters, multiply-adds, latency, memory and the
memory-traffic floor of attention modules (against timm's and ``torch.compile`` where asked), and
the cost of attention in whole models over their backbones. The thread rule and the busy-machine
warning, shared with ``train`` and ``compare``, are in :mod:`chanattn.training.threads`.

:mod:`.core` measures (one timer, :func:`time_interleaved`, also used by ``chanattn compare``; the
machine record with its load), :mod:`.models` benches whole models, :mod:`.timm_refs` builds
timm's counterparts; the command is :mod:`chanattn.cli.bench`.
"""

from __future__ import annotations

from .core import (
    FLOOR_PASSES,
    Timing,
    bench_module,
    formula_forward,
    machine_info,
    parse_shapes,
    peak_bytes,
    saved_bytes,
    time_interleaved,
)
from .models import bench_model, bench_models, default_batch

__all__ = [
    "FLOOR_PASSES",
    "Timing",
    "bench_model",
    "bench_models",
    "bench_module",
    "default_batch",
    "formula_forward",
    "machine_info",
    "parse_shapes",
    "peak_bytes",
    "saved_bytes",
    "time_interleaved",
]
