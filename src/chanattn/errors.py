"""Errors that the library and the command line report as one clear line."""

from __future__ import annotations

__all__ = ["CLIError", "CheckpointError", "DataError"]


class CLIError(Exception):
    """An error the command line reports as one line (``chanattn <command>: error: ...``)."""


class DataError(CLIError, ValueError):
    """A data set that is missing, corrupt or not in the expected format."""


class CheckpointError(CLIError, ValueError):
    """A checkpoint that is missing, truncated, corrupt or not a chanattn checkpoint."""
