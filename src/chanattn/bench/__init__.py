"""The cost bench behind ``chanattn bench``: parameters, multiply-adds, latency, memory and the
memory-traffic floor of attention modules (against timm's where it has them), and the throughput of
whole models with attention.

:mod:`.core` measures, :mod:`.timm_refs` builds timm's counterparts; the command is
:mod:`chanattn.cli.bench`.
"""

from __future__ import annotations

from .core import (
    FLOOR_PASSES,
    Timing,
    bench_model,
    bench_module,
    machine_info,
    parse_shapes,
    peak_bytes,
    saved_bytes,
    time_interleaved,
)

__all__ = [
    "FLOOR_PASSES",
    "Timing",
    "bench_model",
    "bench_module",
    "machine_info",
    "parse_shapes",
    "peak_bytes",
    "saved_bytes",
    "time_interleaved",
]
