"""What a run writes besides its checkpoints and ``metrics.jsonl``, as callbacks that rank 0 runs:

- ``log: csv`` (:class:`CSVLogger`): ``DIR/metrics.csv``, the same rows as ``metrics.jsonl`` (a
  header of the record's keys, one row per epoch), rewritten whole and atomically every epoch from
  the run's history, so that it always holds exactly the epochs of the checkpoint; a continued run
  continues it;
- ``log: tensorboard`` (:class:`TensorBoardLogger`): TensorBoard scalars in ``DIR/tensorboard/``
  through torch's ``SummaryWriter`` (``pip install tensorboard``), one point per epoch (the epoch is
  the step): ``train/loss``, ``train/top1``, ``test/loss``, ``test/top1``, ``test/top5``, ``lr``,
  ``images_per_s``, ``epoch_time_s``. A continued run appends a new event file and purges the
  points past its checkpoint's epoch (``purge_step``), so TensorBoard shows each epoch once.

View them with ``tensorboard --logdir DIR`` (or ``--logdir runs/`` for every run below it).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from .._optional import require
from ..io import write_text
from .callbacks import Callback

__all__ = ["CSVLogger", "TensorBoardLogger", "build_loggers", "csv_text", "tensorboard_tag"]

#: DIR/<this> holds the TensorBoard event files of a run.
TENSORBOARD_DIR = "tensorboard"


def csv_text(history: list[dict[str, Any]]) -> str:
    """The records as CSV: a header of the keys (first record's order, then any new ones), one row each."""
    keys: list[str] = []
    for record in history:
        keys += [k for k in record if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in record.items()})
    return buf.getvalue() if history else ""


class CSVLogger(Callback):
    """``DIR/metrics.csv``: the rows of ``metrics.jsonl`` (floats written with ``repr``, so they read
    back to the same numbers), rewritten atomically from the run's history every epoch."""

    def __init__(self, out: str) -> None:
        self.path = os.path.join(out, "metrics.csv")
        self.history: list[dict[str, Any]] = []

    def on_train_start(self, cfg, state) -> None:
        self.history = state.history  # the run's own list: the epochs of the checkpoint
        write_text(self.path, csv_text(self.history))

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        write_text(self.path, csv_text(self.history))


def tensorboard_tag(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``test_top1`` -> ``test/top1``; other keys unchanged."""
    for prefix in ("train_", "test_"):
        if key.startswith(prefix):
            return prefix[:-1] + "/" + key[len(prefix):]
    return key


class TensorBoardLogger(Callback):
    """TensorBoard scalars of every epoch in ``DIR/tensorboard/`` (torch's ``SummaryWriter``).

    Raises:
        MissingDependency: tensorboard is not installed (``pip install tensorboard``).
    """

    def __init__(self, out: str) -> None:
        require("tensorboard", "--log tensorboard")
        self.logdir = os.path.join(out, TENSORBOARD_DIR)
        self.writer = None

    def on_train_start(self, cfg, state) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # points past the checkpoint's epoch (logged before a crash) are hidden by purge_step
        self.writer = SummaryWriter(self.logdir, purge_step=state.epoch + 1 if state.epoch else None)

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        assert self.writer is not None, "on_train_start opens the writer"
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(tensorboard_tag(key), value, epoch)
        self.writer.flush()

    def on_train_end(self, summary: dict) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def build_loggers(cfg) -> list[Callback]:
    """The loggers ``cfg.log`` asks for besides ``metrics.jsonl`` (which the trainer writes itself)."""
    loggers: list[Callback] = []
    if "csv" in cfg.log:
        loggers.append(CSVLogger(cfg.out))
    if "tensorboard" in cfg.log:
        loggers.append(TensorBoardLogger(cfg.out))
    return loggers
