"""One table renderer for every table chanattn prints or writes: terminal text, markdown and CSV.

A table is a list of :class:`Column` (header, how to get and format a cell) over records (dicts).
Text tables align numbers right and text left; with fixed widths a table can be printed row by row
as its records arrive (``chanattn bench``), otherwise the widths fit the cells.

>>> cols = [Column("name", "name"), Column("params", "params", ",")]
>>> print(render([{"name": "se", "params": 8464}, {"name": "eca", "params": 5}], cols), end="")
name  params
----  ------
se     8,464
eca        5
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Column", "TextTable", "format_cell", "render", "render_csv", "render_markdown"]


def format_cell(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec`` (a format spec such as ``",``" or ``".2f"``); None and
    ``""`` give an empty cell, a non-number is shown as text whatever the spec."""
    if value is None or value == "":
        return ""
    if spec and isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


@dataclass(frozen=True)
class Column:
    """A column: ``header``, the record's ``key`` (or ``get(record)``), the format ``spec`` of its
    numbers, ``align`` (``"<"`` or ``">"``; default right for a numeric spec, else left) and a fixed
    ``width`` (default: the widest cell)."""

    header: str
    key: str = ""
    spec: str = ""
    align: str = ""
    width: int | None = None
    get: Callable[[dict], Any] | None = None

    def text(self, record: dict) -> str:
        value = self.get(record) if self.get is not None else record.get(self.key)
        return format_cell(value, self.spec)

    @property
    def right(self) -> bool:
        return self.align == ">" if self.align else bool(self.spec)


def _widths(columns: Sequence[Column], cells: list[list[str]]) -> list[int]:
    return [c.width if c.width is not None else max([len(c.header), *(len(r[i]) for r in cells)])
            for i, c in enumerate(columns)]


def _line(columns: Sequence[Column], cells: Sequence[str], widths: Sequence[int], sep: str = "  ") -> str:
    parts = [s.rjust(w) if c.right else s.ljust(w) for c, s, w in zip(columns, cells, widths)]
    return sep.join(parts).rstrip()


class TextTable:
    """A text table printed row by row: :meth:`head` (header and rule), then :meth:`row` for each
    record. Columns without a fixed width take the header's width."""

    def __init__(self, columns: Sequence[Column], sep: str = " ", note_key: str | None = None) -> None:
        self.columns = list(columns)
        self.sep = sep
        self.note_key = note_key
        self.widths = [c.width if c.width is not None else len(c.header) for c in self.columns]

    def head(self) -> list[str]:
        header = _line(self.columns, [c.header for c in self.columns], self.widths, self.sep)
        header += "  note" if self.note_key else ""
        return [header, "-" * len(header)]

    def row(self, record: dict) -> str:
        line = _line(self.columns, [c.text(record) for c in self.columns], self.widths, self.sep)
        note = record.get(self.note_key) if self.note_key else None
        return f"{line}  {note}" if note else line


def render(records: Iterable[dict], columns: Sequence[Column], *, sep: str = "  ") -> str:
    """The text table of ``records``: header, a rule of dashes, one line per record."""
    cells = [[c.text(r) for c in columns] for r in records]
    widths = _widths(columns, cells)
    lines = [_line(columns, [c.header for c in columns], widths, sep),
             _line(columns, ["-" * w for w in widths], widths, sep)]
    lines += [_line(columns, row, widths, sep) for row in cells]
    return "\n".join(lines) + "\n"


def render_markdown(records: Iterable[dict], columns: Sequence[Column]) -> str:
    """The markdown table of ``records`` (numbers right-aligned)."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "|".join("---:" if c.right else "---" for c in columns) + "|"]
    for r in records:
        lines.append("| " + " | ".join(c.text(r) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def render_csv(records: Iterable[dict], columns: Sequence[Column]) -> str:
    """The CSV of ``records`` (RFC 4180 quoting, ``\n`` line ends): the headers, then one line per
    record; give the columns specs without thousands separators for values that read back as
    numbers."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.header for c in columns])
    for r in records:
        writer.writerow([c.text(r) for c in columns])
    return buf.getvalue()
