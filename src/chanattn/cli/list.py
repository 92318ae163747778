"""``chanattn list``: the table of registered modules."""

from __future__ import annotations

import argparse
import sys

from ._args import positive


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(name, parents=parents, help="print the table of modules",
                       description="The registered attention modules: name, paper, kind, year and "
                                   "parameters at --channels (a module that cannot take that C says why).")
    p.add_argument("--channels", type=positive, default=256, help="C at which parameters are counted")
    p.add_argument("--format", choices=("text", "markdown"), default="text",
                   help="a terminal table or the README's markdown table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..catalog import markdown_table, text_table

    table = markdown_table if args.format == "markdown" else text_table
    sys.stdout.write(table(args.channels))
    return 0
