"""What every command's parser shares: one-line usage errors, ``--debug`` and ``--version``
anywhere on the line, help that shows defaults, and the parsers of common values."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .. import __version__
from ..errors import InputError

__all__ = ["HelpFormatter", "Parser", "UsageError", "common_options", "names", "non_negative",
           "parse_shape", "positive", "positive_number", "stdout_line"]


class UsageError(InputError):
    """Options of a command that do not go together (the command line's own errors)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that ends each option with its default where it has one worth showing (not None, not
    the False of a switch) and its help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or default is False
                or "default" in text or "%(default)" in text or isinstance(action, argparse._HelpAction)):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else "%(default)s"
        return f"{text} (default {shown})" if text else f"default {shown}"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that points to ``--help`` (exit code 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def common_options() -> argparse.ArgumentParser:
    """``--debug`` and ``--version``, taken before or after the command (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error instead of one line")
    common.add_argument("--version", action="version", version=f"chanattn {__version__}",
                        help="print the version and exit")
    return common


def parse_shape(text: str, option: str = "--shape") -> tuple[int, int, int, int]:
    """``BxCxHxW`` as four positive ints."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise UsageError(f"{option} expects BxCxHxW with positive integers (e.g. 8x64x14x14), got {text!r}")
    return dims  # type: ignore[return-value]


def names(text: str, option: str) -> list[str]:
    """A comma-separated list of names (at least one)."""
    out = [n.strip() for n in str(text).split(",") if n.strip()]
    if not out:
        raise UsageError(f"{option} expects comma-separated names, got {text!r}")
    return out


def positive(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def non_negative(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def stdout_line(text: str = "") -> None:
    """Print a line and flush (tables printed as their rows arrive)."""
    print(text, flush=True, file=sys.stdout)
