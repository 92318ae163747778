"""Hooks of the training loop, and the fault injection of the reliability tests built on them.

``train(cfg, callbacks=[...])`` calls each :class:`Callback`'s hooks in the order given, on every
rank of a distributed run (``info.is_main`` in ``on_train_start`` says which rank writes files):

==================  ============================================================================
``on_train_start``  once, after the model, data and optimiser are built (and a continued run's
                    checkpoint loaded), before the first epoch: ``(cfg, state)``
``on_epoch_start``  before each epoch's first step: ``(epoch)``, 1-based
``on_loss``         after each step's forward pass, before the backward pass: ``(epoch, step,
                    loss)``; returns the loss to use (step is 0-based)
``on_step_end``     after each optimiser step: ``(epoch, step)``
``on_epoch_end``    after the epoch's evaluation, checkpoint and ``metrics.jsonl`` line:
                    ``(epoch, record)``; return True to stop the run after this epoch (a
                    distributed run stops when any rank's callback asks)
``on_train_end``    once, after ``summary.json`` is written: ``(summary)`` (not after an error)
==================  ============================================================================

A run stopped by a callback is a finished run as far as its files go (checkpoint, metrics,
summary with ``"stopped_by"``), and ``--resume`` continues it.

>>> class StopAtTop1(Callback):
...     def __init__(self, target):
...         self.target = target
...     def on_epoch_end(self, epoch, record):
...         return record["test_top1"] >= self.target
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

import torch

from ..errors import ConfigError

__all__ = ["FAULT_ENV", "Callback", "FaultInjection"]

#: ``CHANATTN_FAULT=kill@E.S`` kills the process (SIGKILL) at step S (0-based) of epoch E;
#: ``nan@E.S`` makes that step's loss NaN. Under torchrun it fires in the first attempt only
#: (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so that a restarted job can finish.
FAULT_ENV = "CHANATTN_FAULT"


class Callback:
    """Hooks of the training loop (see the module docstring for when each fires); each does
    nothing unless overridden."""

    def on_train_start(self, cfg, state) -> None:
        """Before the first epoch: the configuration in force (a continued run's saved one) and the
        :class:`~.trainer.RunState` (``state.epoch`` epochs done, ``state.history`` their records)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of ``epoch`` (1-based)."""

    def on_loss(self, epoch: int, step: int, loss: torch.Tensor) -> torch.Tensor:
        """After the forward pass of ``step`` (0-based) of ``epoch`` (1-based), before the backward
        pass: the loss to use."""
        return loss

    def on_step_end(self, epoch: int, step: int) -> None:
        """After the optimiser step of ``step`` of ``epoch``."""

    def on_epoch_end(self, epoch: int, record: dict) -> bool | None:
        """After ``epoch``'s evaluation, checkpoint and metrics line (``record``: the keys of a
        ``metrics.jsonl`` line). Return True to stop the run after this epoch."""
        return None

    def on_train_end(self, summary: dict) -> None:
        """After the run's ``summary.json`` is written (``summary`` is its content)."""


class FaultInjection(Callback):
    """Fail on purpose at one step: ``kind`` ``"kill"`` (SIGKILL after the step) or ``"nan"`` (the
    step's loss becomes NaN before the backward pass, as a diverging run's would)."""

    def __init__(self, kind: str, epoch: int, step: int) -> None:
        if kind not in ("kill", "nan"):
            raise ConfigError(f"{FAULT_ENV}: unknown fault {kind!r} (kill or nan)")
        self.kind, self.epoch, self.step = kind, epoch, step

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FaultInjection | None:
        """The fault ``CHANATTN_FAULT`` asks for, or None (also in a torchrun restart)."""
        spec = environ.get(FAULT_ENV)
        if not spec or int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
            return None
        try:
            kind, where = spec.split("@")
            epoch, step = (int(v) for v in where.split("."))
        except ValueError:
            raise ConfigError(
                f"{FAULT_ENV} must look like kill@EPOCH.STEP or nan@EPOCH.STEP, got {spec!r}"
            ) from None
        return cls(kind, epoch, step)

    def on_loss(self, epoch: int, step: int, loss: torch.Tensor) -> torch.Tensor:
        if self.kind == "nan" and (epoch, step) == (self.epoch, self.step):
            return loss * float("nan")
        return loss

    def on_step_end(self, epoch: int, step: int) -> None:
        if self.kind == "kill" and (epoch, step) == (self.epoch, self.step):
            os.kill(os.getpid(), signal.SIGKILL)
