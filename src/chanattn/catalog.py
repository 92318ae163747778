"""The module table: what ``chanattn list`` prints and the README shows."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import create, list_modules, module_info

__all__ = ["Row", "count_parameters", "markdown_table", "rows", "text_table"]

#: The channel count the table's parameter column is taken at.
TABLE_CHANNELS = 256


def count_parameters(module) -> int:
    """Trainable and frozen parameters (buffers such as BN statistics are not counted)."""
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    paper: str
    year: int
    kind: str
    seed: str
    aliases: tuple[str, ...]
    params: int


def rows(channels: int = TABLE_CHANNELS) -> list[Row]:
    """One row per registered module, its parameters counted at ``channels`` with defaults."""
    out = []
    for name in list_modules():
        info = module_info(name)
        out.append(Row(name, info.title, info.paper, info.year, info.kind, info.seed, info.aliases,
                       count_parameters(create(name, channels))))
    return out


def _name_cell(row: Row) -> str:
    return row.name + (f" ({', '.join(row.aliases)})" if row.aliases else "")


def markdown_table(channels: int = TABLE_CHANNELS) -> str:
    """The README's table (name, module, paper, kind, parameters at ``channels``)."""
    lines = [
        f"| name | module | paper | kind | params at C={channels} |",
        "|---|---|---|---|---:|",
    ]
    for r in rows(channels):
        cell = "`" + r.name + "`" + (f" (alias {', '.join('`' + a + '`' for a in r.aliases)})"
                                     if r.aliases else "")
        lines.append(f"| {cell} | {r.title} | {r.paper} | {r.kind} | {r.params:,} |")
    return "\n".join(lines) + "\n"


def text_table(channels: int = TABLE_CHANNELS) -> str:
    """The terminal table of ``chanattn list``."""
    rs = rows(channels)
    head = ("name", "module", "kind", "year", f"params@C={channels}", "seed")
    body = [(_name_cell(r), r.title, r.kind, str(r.year), f"{r.params:,}", r.seed) for r in rs]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    right = {3, 4}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body]
    return "\n".join(lines) + "\n"


START, END = "<!-- modules:start -->", "<!-- modules:end -->"


def update_readme(path: str) -> bool:
    """Write the current :func:`markdown_table` between the markers of the README at ``path``.
    Returns True if the file changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if START not in text or END not in text:
        raise ValueError(f"{path}: the markers {START} and {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{markdown_table()}{END}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":
    import sys

    changed = update_readme(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print("README table updated" if changed else "README table already up to date")
