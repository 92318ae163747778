"""The ``chanattn`` command line: one file per command, each with ``add_parser(subparsers)`` and
``run(args) -> exit code``.

    chanattn list            the module table            (list.py)
    chanattn models          the architectures           (models.py)
    chanattn demo            every module forward and backward on a random batch (demo.py)
    chanattn train | eval    training and evaluation     (train.py, eval.py)
    chanattn compare         baseline and modules, table and plots (compare.py)
    chanattn bench           cost of modules and models  (bench.py)
    chanattn export          torch.export, ONNX, TorchScript (export.py)

The library never imports this package. Building the parser imports no torch (``chanattn --help``
answers at once); a command imports what it needs when it runs. Errors: any
:class:`~chanattn.errors.ChanattnError` (and the OS's file errors) become one line
``chanattn <command>: error: <message>`` with exit code 2; anything else is reported as an internal
error in one line; ``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import ChanattnError
from ._args import Parser, common_options

__all__ = ["COMMANDS", "build_parser", "main"]

#: The commands, in the order of ``chanattn --help``: (name, module under chanattn.cli).
COMMANDS: tuple[tuple[str, str], ...] = (
    ("list", "list"), ("models", "models"), ("demo", "demo"), ("train", "train"), ("eval", "eval"),
    ("compare", "compare"), ("bench", "bench"), ("export", "export"),
)

def _train_hint(args: argparse.Namespace) -> str:
    """How an interrupted ``train`` continues; works also before its first checkpoint."""
    resume = getattr(args, "resume", None)
    if resume == "auto":
        return " (run the same command again to continue it)"
    if resume is not None:
        return f" (run the same command again to continue from {resume}'s last checkpoint)"
    added = "in place of --overwrite" if getattr(args, "overwrite", False) else "added"
    return f" (to continue, run the same command with --resume auto {added})"


#: What an interrupted command can do next: a text, or a function of the parsed arguments.
_INTERRUPT_HINTS = {
    "train": _train_hint,
    "compare": " (run the same compare again: finished runs are kept)",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (imports no torch)."""
    common = common_options()
    parser = Parser(prog="chanattn", description="Channel attention for PyTorch.", parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, module in COMMANDS:
        importlib.import_module(f"{__name__}.{module}").add_parser(sub, name, [common])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``chanattn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, a usage error: its exit code, as a return value
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = _INTERRUPT_HINTS.get(args.command, "")
        print(f"chanattn {args.command}: interrupted{hint(args) if callable(hint) else hint}",
              file=sys.stderr)
        return 130
    except (ChanattnError, OSError) as exc:
        if debug:
            raise
        print(f"chanattn {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else is our bug or the machine's: still one line
        if debug:
            raise
        print(f"chanattn {args.command}: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an OSError as 'reason: file')."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename!r}"
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
