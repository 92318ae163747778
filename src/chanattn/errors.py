"""The errors chanattn raises on purpose: one base class, :class:`ChanattnError`, and for each error
the built-in type it means, so that ``except ValueError`` keeps working.

    ChanattnError
    ├── InputError (ValueError)           an argument, option, shape or input a function cannot take
    │   ├── ConfigError                   a training configuration that cannot work
    │   ├── DataError                     a data set that is missing, corrupt or in another format
    │   └── CheckpointError               a checkpoint that is missing, corrupt or not chanattn's
    ├── InputTypeError (TypeError)        an argument of the wrong type
    ├── ExportError (RuntimeError)        a module or model that cannot take an export path
    ├── TrainingDiverged (RuntimeError)   the loss became NaN or Inf
    ├── NoPretrainedWeights (RuntimeError) pretrained weights asked for that do not exist
    └── MissingDependency (ImportError)   an optional package that is not installed (names the extra)

The library never imports the command line; the command line (:mod:`chanattn.cli`) turns any
:class:`ChanattnError` into one line ``chanattn <command>: error: <message>``.
"""

from __future__ import annotations

__all__ = [
    "ChanattnError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "InputError",
    "InputTypeError",
    "MissingDependency",
    "NoPretrainedWeights",
    "TrainingDiverged",
]


class ChanattnError(Exception):
    """Base of every error chanattn raises on purpose; its message is one line that names what
    failed, what was expected and what came."""


class InputError(ChanattnError, ValueError):
    """An argument, option, input shape or value that a module or function cannot take."""


class InputTypeError(ChanattnError, TypeError):
    """An argument of a type that a module or function cannot take."""


class ConfigError(InputError):
    """A training or compare configuration that cannot work (names the field)."""


class DataError(InputError):
    """A data set that is missing, corrupt or not in the expected format."""


class CheckpointError(InputError):
    """A checkpoint that is missing, truncated, corrupt or not a chanattn checkpoint."""


class ExportError(ChanattnError, RuntimeError):
    """A module or model that cannot take an export path: ``target: cannot export to fmt: reason``.

    Attributes:
        target: what was exported (``"se (SqueezeExcite, channels=32)"``, ``"resnet20"``).
        fmt: the path (``"torch.export"``, ``"onnx"``, ``"torchscript"``).
        reason: why, one line.
    """

    def __init__(self, target: str, fmt: str, reason: str) -> None:
        self.target, self.fmt, self.reason = target, fmt, reason
        super().__init__(f"{target}: cannot export to {fmt}: {reason}")

    def __reduce__(self):  # picklable across processes (compare's workers)
        return type(self), (self.target, self.fmt, self.reason)


class TrainingDiverged(ChanattnError, RuntimeError):
    """The training loss (or the evaluation) became NaN or Inf; the last good checkpoint is kept."""


class NoPretrainedWeights(ChanattnError, RuntimeError):
    """Pretrained weights asked for (``timm.create_model(..., pretrained=True)``) where none exist;
    a RuntimeError, as timm's own error for a model without weights."""


class MissingDependency(ChanattnError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip extra."""
