"""Checkpoints: written atomically, read without unpickling arbitrary objects, and files that are
not chanattn checkpoints named as what they are.

A checkpoint is one dict (torch.save) of tensors, numbers, strings, lists and dicts:
``{"format", "version", "epoch", "model", "optimizer", "scheduler", "scaler", "rng", "config",
"metrics", "history", "best_top1", "best_epoch"}``. It is written with :func:`chanattn.io.atomic_open`
(a temporary file in the same directory, flushed, fsync'ed and renamed over the target), so a crash
leaves either the old or the new file, never half of one. Before the new ``last.pt`` replaces the
old one, the old one is kept as ``previous.pt``.

Loading uses ``torch.load(weights_only=True)``: only tensors and plain containers can come out of
the file, and a pickle that asks for any other object (``os.system``, a class) is refused. Before
that, the first bytes say what a file is: a torch.export archive (.pt2), a TorchScript archive, an
ONNX model, a safetensors file, another zip archive or none of these; each is named in one line
that says what to do with it. A state dict that does not fit a model is reported with its
missing, unexpected and mis-shaped keys (:func:`load_model_state`).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_open

__all__ = [
    "FORMAT",
    "atomic_save",
    "capture_rng",
    "load_checkpoint",
    "load_model_state",
    "load_weights",
    "restore_rng",
    "save_checkpoint",
    "sniff",
    "state_dict_mismatch",
]

FORMAT = "chanattn-checkpoint"
VERSION = 1

#: Keys under which other training programs keep the model's state dict in their checkpoints.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")


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


# ------------------------------------------------------------------------------- what is this file
# ModelProto's fields (onnx.proto3) and their wire types: 0 varint, 2 length-delimited.
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 21: 2, 25: 2}


def _varint(f) -> int | None:
    value = shift = 0
    for _ in range(10):
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
    return None


def _is_onnx(path: str, size: int) -> bool:
    """The file parses, field by field to its last byte, as an ONNX ModelProto with a graph."""
    fields = set()
    with open(path, "rb") as f:
        while f.tell() < size:
            tag = _varint(f)
            if tag is None or _ONNX_FIELDS.get(tag >> 3) != (tag & 7):
                return False
            value = _varint(f)
            if value is None:
                return False
            if tag & 7 == 2:
                if f.tell() + value > size:
                    return False
                f.seek(value, os.SEEK_CUR)
            fields.add(tag >> 3)
    return 7 in fields


def _safetensors_header(path: str, size: int) -> dict | None:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), or None."""
    if size < 10:
        return None
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if not 2 <= n <= size - 8 or n > 100 << 20:
            return None
        head = f.read(n)
    if head[:1] != b"{":
        return None
    try:
        header = json.loads(head)
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def sniff(path: str | os.PathLike) -> str:
    """What a file is, from its bytes: ``"torch"`` (a torch.save zip archive or legacy pickle),
    ``"pt2"`` (torch.export), ``"torchscript"``, ``"onnx"``, ``"safetensors"``, ``"zip"`` (another
    zip archive), ``"broken-zip"`` (a zip archive cut short), ``"empty"`` or ``"unknown"``."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "broken-zip"
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return "pt2"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # a pickle: torch.save's legacy format
        return "torch"
    if _safetensors_header(path, size) is not None:
        return "safetensors"
    if head[:1] == b"\x08" and _is_onnx(path, size):
        return "onnx"
    return "unknown"


def _foreign(path: str, kind: str) -> CheckpointError:
    """The one-line error for a file chanattn does not read as a checkpoint."""
    p = repr(path)
    if kind == "pt2":
        return CheckpointError(
            f"{p} is a torch.export archive (.pt2), not a chanattn checkpoint; load the exported model "
            f"with torch.export.load({p}).module(), or evaluate the run directory it came from")
    if kind == "torchscript":
        return CheckpointError(
            f"{p} is a TorchScript archive, not a chanattn checkpoint; load it with torch.jit.load({p})")
    if kind == "onnx":
        return CheckpointError(
            f"{p} is an ONNX model, not a chanattn checkpoint; evaluate it with onnxruntime "
            f"(onnxruntime.InferenceSession({p}))")
    if kind == "safetensors":
        header = _safetensors_header(path, os.path.getsize(path)) or {}
        n = len([k for k in header if k != "__metadata__"])
        if "chanattn_config" in (header.get("__metadata__") or {}):  # chanattn.save_safetensors
            return CheckpointError(
                f"{p} is a chanattn safetensors file (the weights and model config of {n} tensors, as "
                "chanattn export --format safetensors writes), not a training checkpoint; load the model "
                f"with chanattn.from_pretrained({p}), or start a training run from it with "
                f"--init-from {path}")
        return CheckpointError(
            f"{p} is a safetensors file of {n} tensors (weights only, no config), not a chanattn "
            f"checkpoint; start a training run from these weights with --init-from {path}, or load them "
            f"with safetensors.torch.load_file({p})")
    if kind == "zip":
        return CheckpointError(
            f"{p} is a zip archive but not one torch.save writes (no data.pkl), not a chanattn checkpoint")
    if kind in ("broken-zip", "empty"):
        what = "is empty" if kind == "empty" else "is truncated or corrupt (a zip archive cut short)"
        return CheckpointError(
            f"checkpoint {p} {what}; the run directory's previous.pt is the checkpoint before it")
    with open(path, "rb") as f:
        head = f.read(8).hex(" ")
    return CheckpointError(
        f"{p} is not a chanattn checkpoint: not a file torch.save writes (neither a zip archive nor a "
        f"pickle; it starts with bytes {head}); a chanattn checkpoint is the last.pt or best.pt of a "
        "chanattn train run directory")


def _torch_load(path: str, map_location) -> Any:
    """torch.load(weights_only=True) with every failure as a CheckpointError that says what to do."""
    try:
        with warnings.catch_warnings():
            # random bytes read as a pickle header warn about an odd protocol before failing
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only" in text.lower() or "unsupported global" in text.lower():
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f"a pickled {found.group(1)} object" if found else "pickled Python objects"
            raise CheckpointError(
                f"{path!r} holds {what} (e.g. a whole model saved with torch.save(model)), not only "
                "tensors and plain containers; refused to unpickle it, since unpickling can run any "
                "code. If you trust its source, save its state_dict() with torch.save and start a run "
                "from that with --init-from") from None
        raise CheckpointError(f"checkpoint {path!r} is corrupt: {_first_line(exc)}") from None
    except Exception as exc:
        # any failure to parse is a corrupt file: random bytes reach the unpickler's IndexError,
        # TypeError, ... as well as EOFError and BadZipFile
        raise CheckpointError(
            f"checkpoint {path!r} is truncated or corrupt ({_first_line(exc)}); "
            "the run directory's previous.pt is the checkpoint before it"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _keys_sample(keys: list[str], show: int = 3) -> str:
    return ", ".join(repr(k) for k in keys[:show]) + (", ..." if len(keys) > show else "")


def _not_ours(path: str, state: Any) -> CheckpointError:
    """The one-line error for a torch.save file that is not a chanattn checkpoint."""
    p = repr(path)
    if _is_state_dict(state):
        return CheckpointError(
            f"{p} is a plain state_dict of {len(state)} tensors ({_keys_sample(list(state))}), not a "
            "chanattn checkpoint (which also holds the config the model is built from); start a "
            f"training run from these weights with --init-from {path}, or load them into a model with "
            f"model.load_state_dict(torch.load({p}, weights_only=True))")
    if isinstance(state, Mapping):
        for key in _NESTED_KEYS:
            if key in state and _is_state_dict(state[key]):
                return CheckpointError(
                    f"{p} is a checkpoint of another training program (its {key!r} holds "
                    f"{len(state[key])} tensors), not a chanattn checkpoint (no '{FORMAT}' tag); start "
                    f"a training run from these weights with --init-from {path}")
        return CheckpointError(
            f"{p} is not a chanattn checkpoint (a dict without the '{FORMAT}' tag; its keys: "
            f"{_keys_sample([str(k) for k in state], 5)})")
    return CheckpointError(
        f"{p} is not a chanattn checkpoint: it holds a {type(state).__name__}, not the dict chanattn "
        "train writes")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds objects other than
            tensors and plain containers (a pickle payload), or is not a chanattn checkpoint (the
            message names what it is: a .pt2, TorchScript, ONNX or safetensors file, a plain
            state_dict, ...).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    kind = sniff(path)
    if kind != "torch":
        raise _foreign(path, kind)
    state = _torch_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _not_ours(path, state)
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has format version {state.get('version')!r}; "
            f"this chanattn reads version {VERSION}"
        )
    return state


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The model weights of a file and what they are, for starting a run from them (``init_from``):
    a chanattn checkpoint or run directory (its ``last.pt``), a plain state_dict, another program's
    checkpoint with the weights under ``state_dict``/``model``/``model_state_dict``, or a
    safetensors file. Returns ``(state_dict, description)``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        last = os.path.join(path, "last.pt")
        if not os.path.isfile(last):
            raise CheckpointError(f"{path!r} holds no last.pt (a run directory's final weights)")
        path = last
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    kind = sniff(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        return load_file(path), f"safetensors file {path!r}"
    if kind != "torch":
        raise _foreign(path, kind)
    state = _torch_load(path, "cpu")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        cfg = state.get("config", {})
        model = f"{cfg.get('arch')}{'+' + cfg['attn'] if cfg.get('attn') else ''}"
        return state["model"], (f"checkpoint {path!r} ({model} trained on {cfg.get('dataset')}, "
                                f"epoch {state.get('epoch')})")
    if _is_state_dict(state):
        return dict(state), f"state_dict {path!r}"
    if isinstance(state, Mapping):
        for key in _NESTED_KEYS:
            if key in state and _is_state_dict(state[key]):
                return dict(state[key]), f"{key!r} of {path!r}"
    raise _not_ours(path, state)


# ------------------------------------------------------------------------------ fitting a model
def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, mis-shaped)``: keys of ``expected`` (a model's state dict) not in
    ``given``, keys of ``given`` not in ``expected``, and ``"key: file [shape], model [shape]"``
    for the keys in both whose shapes differ."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshaped = [
        f"{k}: file {list(given[k].shape)}, model {list(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, misshaped


def describe_mismatch(missing: list[str], unexpected: list[str], misshaped: list[str], show: int = 3) -> str:
    """``"2 missing keys ('a', 'b'), 1 mis-shaped key (c: file [8], model [4])"``: a few of each,
    with the counts."""

    def part(items: list[str], what: str, quote: bool) -> str | None:
        if not items:
            return None
        shown = ", ".join(repr(i) if quote else i for i in items[:show])
        shown += ", ..." if len(items) > show else ""
        return f"{len(items)} {what} key{'s' if len(items) != 1 else ''} ({shown})"

    parts = [part(missing, "missing", True), part(unexpected, "unexpected", True),
             part(misshaped, "mis-shaped", False)]
    return "; ".join(p for p in parts if p)


def load_model_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str,
                     hint: str = "") -> None:
    """``model.load_state_dict(state)`` (strict), or a CheckpointError ``"<what> does not fit
    <model>: 3 missing keys (...); 1 mis-shaped key (...)[; <hint>]"``."""
    missing, unexpected, misshaped = state_dict_mismatch(model.state_dict(), state)
    if missing or unexpected or misshaped:
        extra = ""
        if unexpected and all(k.startswith("module.") for k in state):
            extra = "; its keys start with 'module.' (saved from DistributedDataParallel): strip that prefix"
        raise CheckpointError(
            f"{what} does not fit {type(model).__name__}: "
            f"{describe_mismatch(missing, unexpected, misshaped)}{extra}{'; ' + hint if hint else ''}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:  # dtype or other problems the key check does not see
        raise CheckpointError(f"{what} does not fit {type(model).__name__}: {_first_line(exc)}") from None


# ------------------------------------------------------------------------------------------ RNG
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
