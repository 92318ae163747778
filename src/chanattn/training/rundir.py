"""The run directory: what a run leaves in it, and how a new ``train`` call treats a directory that
already holds one. A run is never overwritten silently:

- ``resume=None`` (a new run): a directory that holds a run is refused, unless ``overwrite=True``,
  which first deletes the old run's files (never other files), so that ``metrics.jsonl`` never
  mixes two runs;
- ``resume="auto"`` (the form torchrun's elastic restarts need, with the run's full settings):
  continue from ``DIR/last.pt`` when it exists, start otherwise; the saved settings must equal the
  given ones (all but the runtime fields and ``epochs``);
- ``resume=DIR`` (or a checkpoint file): continue with the saved settings;
- a continued run keeps writing the logs it wrote (``log``: csv, tensorboard) and adds those given;
- ``epochs`` may change when continuing: the schedule is recomputed for the new length (see
  :func:`chanattn.training.trainer.lr_at`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..io import write_text
from .checkpoint import load_checkpoint
from .config import RUNTIME_FIELDS, TrainConfig

__all__ = ["RUN_FILES", "RunPlan", "clear_run", "load_for_resume", "plan_run", "run_files", "write_metrics"]

#: The files a run writes into its directory.
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "last.pt", "previous.pt",
             "best.pt", "last.pt.corrupt")
_CHECKPOINTS = ("last.pt", "previous.pt", "best.pt", "last.pt.corrupt")
#: Settings that may differ between a run and its continuation besides the runtime fields:
#: ``epochs`` (extends or shortens the schedule), ``out`` (the same directory, spelt differently),
#: ``recipe`` (informational).
_MAY_CHANGE = (*RUNTIME_FIELDS, "epochs", "out", "recipe")


@dataclass
class RunPlan:
    """What ``train`` does with the run directory.

    Attributes:
        cfg: the configuration in force (the saved one when continuing).
        ckpt: the checkpoint to continue from, or None for a new run.
        clear: delete the files of an earlier run before starting (rank 0 does it).
        epochs_before: the saved schedule's length when ``epochs`` changed it, else None.
    """

    cfg: TrainConfig
    ckpt: dict[str, Any] | None = None
    clear: bool = False
    epochs_before: int | None = None


def run_files(out: str) -> list[str]:
    """The run files present in ``out``."""
    return [name for name in RUN_FILES if os.path.isfile(os.path.join(out, name))]


def clear_run(out: str) -> None:
    """Delete a run's files from ``out`` (the writer's leftover temporary files, the TensorBoard event
    files in ``out/tensorboard/``); other files stay."""
    for event in glob.glob(os.path.join(glob.escape(out), "tensorboard", "events.out.tfevents.*")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(event)
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out, name))
        stem, ext = os.path.splitext(name)
        for tmp in glob.glob(os.path.join(glob.escape(out), f".{stem}.*.tmp{ext}")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _describe(out: str, files: list[str]) -> str:
    text = ", ".join(files)
    path = os.path.join(out, "metrics.jsonl")
    if "metrics.jsonl" in files:
        with contextlib.suppress(OSError):
            with open(path, encoding="utf-8") as f:
                n = sum(1 for line in f if line.strip())
            text += f"; {n} epoch{'s' if n != 1 else ''} done"
    return text


def write_metrics(out: str, history: list[dict]) -> None:
    """``DIR/metrics.jsonl``: one JSON line per finished epoch, exactly the epochs of ``history``
    (rewritten whole, atomically, so that it always agrees with the checkpoint)."""
    write_text(os.path.join(out, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))


def load_for_resume(path: str) -> dict[str, Any]:
    """Load the checkpoint to resume from. A corrupt ``last.pt`` names the intact ``previous.pt`` to
    resume from instead; resuming from another file of the run directory moves a corrupt
    ``last.pt`` aside (``last.pt.corrupt``) so that it never replaces the good ``previous.pt``."""
    directory, name = os.path.split(os.path.abspath(path))
    previous = os.path.join(directory, "previous.pt")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        if name == "last.pt" and os.path.isfile(previous):
            try:
                epoch = load_checkpoint(previous)["epoch"]
            except CheckpointError:
                raise exc from None
            raise CheckpointError(
                f"{exc}; resume from the intact previous checkpoint (epoch {epoch}) with --resume {previous}"
            ) from None
        raise
    last = os.path.join(directory, "last.pt")
    if name != "last.pt" and os.path.isfile(last):
        try:
            load_checkpoint(last)
        except CheckpointError:
            os.replace(last, last + ".corrupt")
    return ckpt


def _continue(ckpt: dict[str, Any], cfg: TrainConfig, out: str, epochs: int | None) -> RunPlan:
    """The plan to continue ``ckpt``: its saved config with ``cfg``'s runtime fields and ``epochs``."""
    saved = TrainConfig(**ckpt["config"])
    before = saved.epochs
    logs = saved.log
    for name in RUNTIME_FIELDS:  # only what does not change the result may differ from the saved run
        setattr(saved, name, getattr(cfg, name))
    saved.log = list(dict.fromkeys([*logs, *cfg.log]))  # the run's logs go on; those given are added
    saved.out = out
    done = int(ckpt["epoch"])
    if epochs is not None and epochs != before:
        if epochs < done:
            raise ConfigError(
                f"the run in {out!r} has done {done} epochs; --epochs {epochs} would end it before that "
                f"(give --epochs {done} or more)")
        saved.epochs = epochs
    if saved.stop_after is not None and saved.stop_after > saved.epochs:
        raise ConfigError(f"stop_after ({saved.stop_after}) exceeds epochs ({saved.epochs})")
    return RunPlan(saved.validate(), ckpt, False, before if saved.epochs != before else None)


def plan_run(cfg: TrainConfig, *, resume: str | None = None, overwrite: bool = False,
             epochs: int | None = None) -> RunPlan:
    """Decide what to do with the run directory (see the module docstring).

    Args:
        cfg: the configuration given (for ``resume=DIR`` only its runtime fields count).
        resume: None (a new run), ``"auto"`` or a run directory / checkpoint file.
        overwrite: start over in a directory that holds a run, deleting its files first.
        epochs: a new schedule length for a continued run (``resume="auto"``: ``cfg.epochs``).

    Raises:
        ConfigError: a new run into a directory that holds one; settings that differ from the run
            being continued; ``overwrite`` together with ``resume``.
        CheckpointError: ``resume`` names no readable checkpoint.
    """
    if resume is not None and overwrite:
        raise ConfigError("--overwrite starts the run over and --resume continues it: give one of them")
    if resume is None or resume == "auto":
        if cfg.out is None:
            raise ConfigError("an output directory is required (--out DIR)")
        out = cfg.out
        files = run_files(out) if os.path.isdir(out) else []
        if resume is None:
            if files and not overwrite:
                raise ConfigError(
                    f"{out!r} holds a run ({_describe(out, files)}); continue it with --resume auto (the "
                    f"same flags) or --resume {out}, or start over with --overwrite (deletes those files)")
            return RunPlan(cfg, None, bool(files))
        last = os.path.join(out, "last.pt")
        if not os.path.isfile(last):
            others = [f for f in files if f in _CHECKPOINTS]
            if others:
                raise CheckpointError(
                    f"--resume auto: {out!r} has no last.pt but holds {', '.join(others)}: continue from "
                    f"one with --resume {os.path.join(out, others[0])}, or start over with --overwrite")
            return RunPlan(cfg, None, bool(files))  # stopped before its first epoch ended: start again
        ckpt = load_for_resume(last)
        saved = TrainConfig(**ckpt["config"]).to_dict()  # fields added since it was written: defaults
        given = cfg.to_dict()
        changed = [k for k in given if k not in _MAY_CHANGE and saved.get(k) != given[k]]
        if changed:
            diffs = ", ".join(f"{k} {saved.get(k)!r} there, {given[k]!r} given" for k in changed[:4])
            raise ConfigError(
                f"--resume auto: {out!r} holds a run with other settings ({diffs}"
                f"{', ...' if len(changed) > 4 else ''}); use another --out, or start over with --overwrite")
        return _continue(ckpt, cfg, out, epochs if epochs is not None else cfg.epochs)
    path = resume if os.path.isfile(resume) else os.path.join(resume, "last.pt")
    if not os.path.exists(path):
        files = run_files(resume) if os.path.isdir(resume) else []
        others = [f for f in files if f in _CHECKPOINTS]
        if others:
            first = os.path.join(resume, others[0])
            why = f"it holds {', '.join(others)}: continue from one with --resume {first}"
        elif files:
            why = ("the run stopped before its first epoch ended: start it again with the run's flags and "
                   "--resume auto")
        else:
            why = "a run directory holds last.pt"
        raise CheckpointError(f"--resume {resume!r}: no checkpoint {path!r} ({why})")
    ckpt = load_for_resume(path)
    return _continue(ckpt, cfg, os.path.dirname(os.path.abspath(path)), epochs)
