"""Progress of an epoch: a bar on a terminal (tqdm's when it is installed), plain log lines otherwise."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _tqdm_class():
    """tqdm's bar class, or None when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """``mode``: ``"bar"`` (one redrawn line: tqdm's bar when tqdm is installed and ``stream`` is a
    terminal, else a bar of its own), ``"log"`` (or its older name ``"lines"``: a line every
    ``interval`` steps), ``"none"``, or ``"auto"`` (bar on a terminal, log lines otherwise). Every
    mode but ``"none"`` ends the epoch with one summary line (:meth:`close`)."""

    def __init__(
        self, mode: str, epoch: int, epochs: int, steps: int, interval: int = 50, stream=None
    ) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if _is_terminal(self.stream) else "lines"
        if mode == "log":
            mode = "lines"
        self.mode, self.epoch, self.epochs, self.steps = mode, epoch, epochs, steps
        self.interval = max(int(interval), 1)
        self.t0 = time.perf_counter()
        self._last_draw = 0.0
        self._tqdm = None
        tqdm = _tqdm_class() if mode == "bar" and _is_terminal(self.stream) else None
        if tqdm is not None:
            # redrawn at every update(), which wants_update() already spaces 0.2 s apart
            self._tqdm = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", file=self.stream, leave=False,
                              unit="step", dynamic_ncols=True, mininterval=0, miniters=1)
            self._done = 0

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
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(stats.rsplit(" ETA", 1)[0], refresh=False)  # tqdm shows its own ETA
            self._tqdm.update(step - self._done)
            self._done = step
            self._last_draw = time.perf_counter()
            return
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
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
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
