"""How many CPU threads a process should use on a machine that others share: the one rule of
``train``, ``compare`` and ``bench``, and their one warning when the machine is busy.

The rule (:func:`choose_threads`), for ``ranks`` processes of one job on this machine (the ranks of
a torchrun job, the ``--jobs`` of a compare, 1 for the bench):

    threads = max(1, min(cores // ranks, round((cores - load) / ranks), default))

``cores`` are the usable cores (the CPU affinity mask, capped by a cgroup CPU quota), ``load`` the
1-minute load average (the processes already running or waiting to run), ``default`` torch's own
default (the physical cores). On an idle machine that is torch's default split over the ranks; on
a busy one it leaves the cores that others use, and never goes below one thread. Threads asked for
(``--threads``) win, and so does ``OMP_NUM_THREADS`` (torch already follows it; torchrun sets it).
:func:`choose_threads` is a deterministic function of its arguments, so that it can be tested and
reasoned about; :func:`pick_threads` reads the machine and says where its answer came from.

:func:`busy_warning` is the one line all three print when the load is at or above the usable cores:
the other work then holds every core, and timings measure it too.
"""

from __future__ import annotations

import math
import os

from ..errors import InputError

__all__ = ["busy_warning", "choose_threads", "load_average", "pick_threads", "usable_cores"]


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


def choose_threads(cores: int, load: float | None, ranks: int = 1, default: int | None = None, *,
                   requested: int | None = None) -> int:
    """Threads per process for ``ranks`` processes on ``cores`` cores at 1-minute load ``load``
    (None: unknown, taken as idle), at most ``default`` (torch's default) when given; ``requested``
    (``--threads``), when given, is the answer.

    Raises:
        InputError: ``requested`` or ``ranks`` below 1.
    """
    if requested is not None:
        if int(requested) < 1:
            raise InputError(f"choose_threads: threads must be >= 1, got {requested}")
        return int(requested)
    if int(ranks) < 1:
        raise InputError(f"choose_threads: ranks (parallel processes) must be >= 1, got {ranks}")
    ranks = int(ranks)
    share = max(cores // ranks, 1)
    free = cores - (load or 0.0)
    fit = math.floor(free / ranks + 0.5)
    threads = min(share, fit)
    if default is not None:
        threads = min(threads, default)
    return max(threads, 1)


def pick_threads(requested: int | None = None, ranks: int = 1, *, current: int | None = None,
                 load: float | None = None) -> tuple[int, str]:
    """The torch threads per process of a command and where they come from, in words:
    ``requested`` (``--threads``); else ``current`` (torch's threads now) when ``OMP_NUM_THREADS``
    is set; else :func:`choose_threads` over the usable cores, the load (``load``, default
    :func:`load_average`), the ``ranks`` and ``current`` as torch's default.

    Args:
        requested: threads asked for, or None.
        ranks: processes that run at once, each with these threads.
        current: torch's threads now (default ``torch.get_num_threads()``: torch's default at the
            start of a command).
        load: the 1-minute load average the choice is made at (default: read now).
    """
    if requested is not None:
        return choose_threads(1, None, requested=requested), "--threads"
    if current is None:
        import torch

        current = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return current, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    cores = usable_cores()
    load = load_average() if load is None else load
    threads = choose_threads(cores, load, ranks, current)
    return threads, (f"chosen from {cores} usable cores, load {load or 0:.2f}, "
                     f"{ranks} process{'es' if ranks != 1 else ''}, torch's {current}")


def busy_warning(cores: int, load: float | None, threads: int | None = None, per_process: bool = False
                 ) -> str | None:
    """One line when the load is at or above the usable cores, else None; with ``threads``, it ends
    with the torch threads in use (``per_process``: of each of several processes)."""
    if load is None or load < cores:
        return None
    text = (f"the 1-minute load average is {load:.2f} on {cores} usable core{'s' if cores != 1 else ''}: "
            "this machine is busy, so speeds and timings (img/s, epoch times, latencies) measure the other "
            "work too and are not comparable with an idle machine's")
    if threads is not None:
        text += (f"; using {threads} torch thread{'s' if threads != 1 else ''}"
                 f"{' per process' if per_process else ''}")
    return text
