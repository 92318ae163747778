"""Progress of an epoch: a one-line bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """``mode``: ``"bar"`` (redrawn line), ``"lines"`` (a line every ``interval`` steps and per epoch),
    ``"none"``, or ``"auto"`` (bar when stderr is a terminal, lines otherwise)."""

    def __init__(
        self, mode: str, epoch: int, epochs: int, steps: int, interval: int = 50, stream=None
    ) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if hasattr(self.stream, "isatty") and self.stream.isatty() else "lines"
        self.mode, self.epoch, self.epochs, self.steps = mode, epoch, epochs, steps
        self.interval = max(int(interval), 1)
        self.t0 = time.perf_counter()
        self._last_draw = 0.0

    def wants_update(self, step: int) -> bool:
        if self.mode == "none":
            return step % self.interval == 0  # the caller also checks the loss there
        if self.mode == "bar":
            return time.perf_counter() - self._last_draw > 0.2
        return step % self.interval == 0

    def update(self, step: int, loss: float, top1: float, images_per_s: float, lr: float) -> None:
        if self.mode == "none":
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / step * (self.steps - step) if step else 0.0
        head = f"epoch {self.epoch}/{self.epochs}"
        stats = (
            f"loss {loss:.4f} acc {top1:5.1f}% lr {lr:.4g} {images_per_s:,.0f} img/s "
            f"ETA {format_duration(eta)}"
        )
        if self.mode == "bar":
            width = 24
            filled = int(width * step / max(self.steps, 1))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r{head} [{bar}] {step}/{self.steps} {stats}\033[K")
            self._last_draw = time.perf_counter()
        else:
            self.stream.write(f"{head} step {step}/{self.steps} {stats}\n")
        self.stream.flush()

    def close(self, record: dict) -> None:
        if self.mode == "none":
            return
        if self.mode == "bar":
            self.stream.write("\r\033[K")
        self.stream.write(
            f"epoch {record['epoch']}/{self.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_top1']:.2f}% | test loss {record['test_loss']:.4f} "
            f"top-1 {record['test_top1']:.2f}% "
            f"top-5 {record['test_top5']:.2f}% | {record['images_per_s']:,.0f} img/s, "
            f"{format_duration(record['epoch_time_s'])}\n"
        )
        self.stream.flush()
