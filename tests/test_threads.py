"""The one thread rule and busy-machine warning of ``train``, ``compare`` and ``bench``
(chanattn.training.threads): the rule as a function of cores, load, ranks and torch's default; where
a command's threads come from (--threads, OMP_NUM_THREADS, the rule); the warning's one text. The
commands' use of them is tested where they are run: test_runs.py (train), test_compare.py,
test_bench.py. No timing."""

from __future__ import annotations

import pytest

from chanattn.errors import InputError
from chanattn.training import threads


@pytest.mark.parametrize(("cores", "load", "ranks", "default", "expected"), [
    (2, 0.1, 1, 2, 2),    # idle: torch's default
    (2, 0.4, 1, None, 2),  # round(1.6) = 2
    (2, 0.6, 1, None, 1),  # round(1.4) = 1
    (2, 1.5, 1, None, 1),  # round(0.5) = 1: half up
    (2, 1.6, 1, 2, 1),    # another process on one core: the other core
    (2, 5.0, 1, 2, 1),    # overloaded: never below one
    (2, None, 1, 2, 2),   # no load average on this platform: as idle
    (16, 0.0, 2, 8, 8),   # two ranks share the cores, at most torch's default
    (16, 0.0, 2, 4, 4),   # torch's default caps it
    (16, 6.0, 2, 8, 5),   # (16 - 6) / 2 = 5 free cores each
    (16, 4.2, 3, None, 4),  # round(11.8 / 3) = 4, and 16 // 3 = 5
    (16, 0.0, 4, 16, 4),
    (2, 0.0, 4, None, 1),  # more ranks than cores: one each
    (1, 0.0, 1, None, 1),
])
def test_the_rule(cores, load, ranks, default, expected):
    assert threads.choose_threads(cores, load, ranks, default) == expected


def test_threads_asked_for_win_and_bad_counts_are_refused():
    assert threads.choose_threads(2, 9.0, 1, 2, requested=3) == 3
    with pytest.raises(InputError, match="ranks"):
        threads.choose_threads(2, 0.0, 0)
    with pytest.raises(ValueError, match="threads must be >= 1"):  # InputError is a ValueError
        threads.choose_threads(2, 0.0, requested=0)


def test_pick_threads_says_where_the_threads_come_from(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "load_average", lambda: 1.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.pick_threads(2, current=4) == (2, "--threads")
    n, why = threads.pick_threads(None, 1, current=4)
    assert n == 3 and why == "chosen from 4 usable cores, load 1.00, 1 process, torch's 4"
    n, why = threads.pick_threads(None, 2, current=4)
    assert n == 2 and why.startswith("chosen from 4 usable cores, load 1.00, 2 processes")  # round(3 / 2)
    assert threads.pick_threads(None, 1, current=4, load=3.9)[0] == 1  # a load given is used
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # torch follows it already: kept, whatever the load
    assert threads.pick_threads(None, 1, current=3) == (3, "OMP_NUM_THREADS=3")
    assert threads.pick_threads(1, current=3) == (1, "--threads")


def test_one_busy_warning():
    assert threads.busy_warning(2, 1.99) is None and threads.busy_warning(2, None) is None
    msg = threads.busy_warning(2, 2.0)
    assert msg.startswith("the 1-minute load average is 2.00 on 2 usable cores: this machine is busy")
    assert "not comparable with an idle machine's" in msg and "\n" not in msg
    assert threads.busy_warning(1, 3.0).startswith("the 1-minute load average is 3.00 on 1 usable core:")
    assert threads.busy_warning(2, 2.0, 1) == msg + "; using 1 torch thread"
    assert threads.busy_warning(2, 2.0, 2, per_process=True) == msg + "; using 2 torch threads per process"
    assert threads.usable_cores() >= 1
