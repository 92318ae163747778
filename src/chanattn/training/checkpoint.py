"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is one dict (torch.save) of tensors, numbers, strings, lists and dicts:
``{"format", "version", "epoch", "model", "optimizer", "scheduler", "scaler", "rng", "config",
"metrics", "best_top1"}``. It is written to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a crash
leaves either the old or the new file, never half of one. Before the new ``last.pt`` replaces the
old one, the old one is kept as ``previous.pt``.

Loading uses ``torch.load(weights_only=True)``: only tensors and plain containers can come out of
the file, and a pickle that asks for any other object (``os.system``, a class) is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_open

__all__ = ["FORMAT", "atomic_save", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

FORMAT = "chanattn-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (:func:`chanattn.io.atomic_open`)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, *, keep_previous: bool = True) -> None:
    """Write a checkpoint atomically; the file it replaces is kept as ``previous.pt`` beside it."""
    path = os.fspath(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    if keep_previous and os.path.exists(path):
        previous = os.path.join(os.path.dirname(path), "previous.pt")
        os.replace(path, previous)
    atomic_save(state, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds objects other than
            tensors and plain containers (a pickle payload), or is not a chanattn checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with warnings.catch_warnings():
            # random bytes read as a pickle header warn about an odd protocol before failing
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {path!r} holds objects other than tensors and plain containers; refused to "
                f"unpickle it (weights_only=True): {first}"
            ) from None
        raise CheckpointError(f"checkpoint {path!r} is corrupt: {first}") from None
    except Exception as exc:
        # any failure to parse is a corrupt file: random bytes reach the unpickler's IndexError,
        # TypeError, ... as well as EOFError and BadZipFile
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path!r} is truncated or corrupt ({first}); "
            "the run directory's previous.pt is the checkpoint before it"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a chanattn checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has format version {state.get('version')!r}; "
            f"this chanattn reads version {VERSION}"
        )
    return state


def capture_rng() -> dict[str, Any]:
    """The random states a training step consumes (torch CPU and CUDA, Python's ``random``)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    version, internal, gauss = random.getstate()
    state["python"] = [version, list(internal), gauss]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
