"""How many CPU threads a training process should use on a machine that others share.

The rule (:func:`choose_threads`), for ``ranks`` processes of one job on this machine:

    threads = max(1, min(cores // ranks, round((cores - load) / ranks), default))

``cores`` are the usable cores (the CPU affinity mask, capped by a cgroup CPU quota), ``load`` the
1-minute load average (the processes already running or waiting to run), ``default`` torch's own
default (the physical cores). On an idle machine that is torch's default split over the ranks; on
a busy one it leaves the cores that others use, and never goes below one thread. A deterministic
function of its arguments, so that it can be tested and reasoned about.
"""

from __future__ import annotations

import math
import os

__all__ = ["busy_warning", "choose_threads", "load_average", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(cores, 1)


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(cores: int, load: float | None, ranks: int = 1, default: int | None = None) -> int:
    """Threads per process for ``ranks`` processes on ``cores`` cores at 1-minute load ``load``
    (None: unknown, taken as idle), at most ``default`` (torch's default) when given."""
    ranks = max(int(ranks), 1)
    share = max(cores // ranks, 1)
    free = cores - (load or 0.0)
    fit = math.floor(free / ranks + 0.5)
    threads = min(share, fit)
    if default is not None:
        threads = min(threads, default)
    return max(threads, 1)


def busy_warning(cores: int, load: float | None) -> str | None:
    """One line when the load is at or above the usable cores, else None."""
    if load is None or load < cores:
        return None
    return (f"the 1-minute load average is {load:.2f} on {cores} usable core{'s' if cores != 1 else ''}: "
            "this machine is busy, so training is slower and its timings (img/s, epoch times) are "
            "not comparable with an idle machine's")
