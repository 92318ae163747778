"""The module table: what ``chanattn list`` prints and the README shows."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import create, list_modules, module_info

__all__ = ["Row", "count_parameters", "export_markdown", "markdown_table", "rows", "text_table",
           "update_readme"]

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
EXPORT_START, EXPORT_END = "<!-- exports:start -->", "<!-- exports:end -->"

#: The export results (written by ``python -m chanattn.export --record``), relative to the README.
EXPORT_RESULTS = "tests/export_support.json"

_EXPORT_HEADS = {"torch.export": "torch.export", "onnx": "ONNX + onnxruntime", "torchscript": "TorchScript"}


def _export_cell(entry: dict, fmt: str) -> str:
    if not entry["ok"]:
        return "no: " + entry["reason"]
    text = entry["via"] if fmt == "torchscript" else "yes"
    return text if entry["dynamic_batch"] else f"{text}, fixed batch"


def export_markdown(data: dict) -> str:
    """The README's export tables (modules, then architectures) from the results of
    :func:`chanattn.export.record`."""
    from .export import DEFAULT_TEST_MODELS, FORMATS

    v = data.get("versions", {})
    stack = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnx", "onnxscript", "onnxruntime") if k in v)
    lines = [
        f"Recorded with {stack}; ONNX opset {data['onnx_opset']}; outputs within "
        f"{data['atol']:g} x max(1, max |eager|) of eager mode at batch sizes 1, 2 and 3. "
        "\"yes\": exported with a dynamic batch; TorchScript: `script` (compiled) or `trace`.",
        "",
        "| module | " + " | ".join(_EXPORT_HEADS[f] for f in FORMATS) + " |",
        "|---|" + "---|" * len(FORMATS),
    ]
    for name, entries in data["modules"].items():
        lines.append(f"| `{name}` | " + " | ".join(_export_cell(entries[f], f) for f in FORMATS) + " |")
    lines += [
        "",
        "| architecture (no attention) | " + " | ".join(_EXPORT_HEADS[f] for f in FORMATS) + " |",
        "|---|" + "---|" * len(FORMATS),
    ]
    for name, entries in data["models"].items():
        checked = DEFAULT_TEST_MODELS.get(name, ())
        cells = [_export_cell(entries[f], f) + ("" if f in checked else " \\*") for f in FORMATS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "`trace`: `torch.jit.script` cannot compile it (for the modules, their Python input "
                  "checks), so it is traced: Python branches on shapes keep the example's H and W. "
                  "\\*: checked by the full run (`CHANATTN_EXPORT_ALL=1` or `--record`), not by "
                  "`make test` (a deeper or wider variant of code checked there)."]
    return "\n".join(lines) + "\n"


def _replace_section(text: str, start: str, end: str, body: str, path: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"{path}: the markers {start} and {end} are missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def update_readme(path: str, export_results: str | None = None) -> bool:
    """Write the current :func:`markdown_table` and :func:`export_markdown` between the markers of
    the README at ``path``. ``export_results``: the JSON of :func:`chanattn.export.record` (default
    :data:`EXPORT_RESULTS` beside the README). Returns True if the file changed."""
    from pathlib import Path

    from .export import load_support

    with open(path, encoding="utf-8") as f:
        text = f.read()
    results = export_results or str(Path(path).resolve().parent / EXPORT_RESULTS)
    new = _replace_section(text, START, END, markdown_table(), path)
    new = _replace_section(new, EXPORT_START, EXPORT_END, export_markdown(load_support(results)), path)
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":
    import sys

    changed = update_readme(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print("README tables updated" if changed else "README tables already up to date")
