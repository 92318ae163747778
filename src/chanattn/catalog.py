"""The module table: what ``chanattn list`` prints and the README shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import InputError
from .io import write_text
from .registry import create, list_modules, module_info
from .table import Column, render, render_markdown

__all__ = ["Row", "count_parameters", "export_markdown", "markdown_table", "paper_models_markdown", "rows",
           "text_table", "update_readme"]

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
    aliases: tuple[str, ...]
    params: int | None
    note: str = ""
    placement: str = "block"


def rows(channels: int = TABLE_CHANNELS) -> list[Row]:
    """One row per registered module, its parameters counted at ``channels`` with defaults; a
    module that cannot take ``channels`` has ``params=None`` and its reason in ``note``."""
    out = []
    for name in list_modules():
        info = module_info(name)
        try:
            params, note = count_parameters(create(name, channels)), ""
        except ValueError as exc:
            params, note = None, f"cannot take C={channels}: {' '.join(str(exc).split())}"
        out.append(Row(name, info.title, info.paper, info.year, info.kind, info.aliases, params, note,
                       info.placement))
    return out


def _name_cell(rec: dict) -> str:
    return rec["name"] + (f" ({', '.join(rec['aliases'])})" if rec["aliases"] else "")


def _markdown_name(rec: dict) -> str:
    aliases = f" (alias {', '.join('`' + a + '`' for a in rec['aliases'])})" if rec["aliases"] else ""
    return f"`{rec['name']}`{aliases}"


def markdown_table(channels: int = TABLE_CHANNELS) -> str:
    """The README's table (name, module, paper, kind, placement, parameters at ``channels``)."""
    cols = [Column("name", get=_markdown_name), Column("module", "title"), Column("paper", "paper"),
            Column("kind", "kind"), Column("placement", "placement"),
            Column(f"params at C={channels}", "params", ",")]
    return render_markdown([asdict(r) for r in rows(channels)], cols)


def text_table(channels: int = TABLE_CHANNELS) -> str:
    """The terminal table of ``chanattn list``; a module that cannot take ``channels`` says why."""
    cols = [Column("name", get=_name_cell), Column("module", "title"), Column("kind", "kind"),
            Column("year", "year", "d"), Column("placement", "placement"),
            Column(f"params@C={channels}", "params", ","),
            Column("note", "note")]
    return render([asdict(r) for r in rows(channels)], cols)


START, END = "<!-- modules:start -->", "<!-- modules:end -->"
EXPORT_START, EXPORT_END = "<!-- exports:start -->", "<!-- exports:end -->"
PAPERS_START, PAPERS_END = "<!-- paper-models:start -->", "<!-- paper-models:end -->"


def _figure(value: float, unit: str) -> str:
    return f"{value / 1e9:.3g}" if unit == "G" else f"{value / 1e6:.1f}"


def paper_models_markdown() -> str:
    """The README's table of the papers' models (:data:`chanattn.models.papers.PAPER_MODELS`): how
    to build each, our parameters and multiply-adds (counted on the meta device, at the paper's
    input) beside the paper's, and the accuracy the paper reports, with the sources."""
    from .models.papers import PAPER_MODELS

    lines = ["| model | data | build (`chanattn.create_model`) | params, ours / paper | "
             "MACs, ours / paper | top-1 (paper) | source |",
             "|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for m in PAPER_MODELS:
        params, macs = m.counts()
        params /= m.params_unit
        unit = "Mi" if m.params_unit == 2**20 else "M"
        mac_unit = "G" if max(macs, m.macs or 0) >= 1e9 else "M"
        mac_cell = f"{_figure(macs, mac_unit)} {mac_unit}"
        if m.macs is not None:
            mac_cell = f"{_figure(macs, mac_unit)} / {_figure(m.macs, mac_unit)} {mac_unit}"
        if m.macs_note:
            if m.macs_note not in notes:
                notes.append(m.macs_note)
            mac_cell += f" [{notes.index(m.macs_note) + 1}]"
        build = m.build.replace("create_model(", "", 1)[:-1]
        top1 = f"{m.accuracy:.2f}" if m.accuracy is not None else "-"
        source = m.source if not m.accuracy_source or m.accuracy_source == m.source \
            else f"{m.source}; top-1: {m.accuracy_source}"
        lines.append(f"| {m.title} | {m.dataset} | `{build}` | {params:.2f} / {m.params:g} {unit} | "
                     f"{mac_cell} | {top1} | {source} |")
    lines.append("")
    lines += [f"[{i}] {note[0].upper()}{note[1:]}." for i, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"

#: The export results (written by ``chanattn export --record``), relative to the README.
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
    from .export.formats import FORMATS

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
        checked = data.get("make_test_models", {}).get("paths", {}).get(name, ())
        cells = [_export_cell(entries[f], f) + ("" if f in checked else " \\*") for f in FORMATS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "`trace`: `torch.jit.script` cannot compile it (for the modules, their Python input "
                  "checks), so it is traced: Python branches on shapes keep the example's H and W. "
                  "\\*: checked by the full run (`CHANATTN_EXPORT_ALL=1` or `--record`), not by "
                  "`make test` (a deeper or wider variant of code checked there)."]
    return "\n".join(lines) + "\n"


def _replace_section(text: str, start: str, end: str, body: str, path: str) -> str:
    if start not in text or end not in text:
        raise InputError(f"{path}: the markers {start} and {end} are missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def update_readme(path: str, export_results: str | None = None) -> bool:
    """Write the current :func:`markdown_table`, :func:`paper_models_markdown` and
    :func:`export_markdown` between the markers of the README at ``path``. ``export_results``: the
    JSON of :func:`chanattn.export.record` (default :data:`EXPORT_RESULTS` beside the README).
    Returns True if the file changed."""
    from pathlib import Path

    from .export import load_support

    with open(path, encoding="utf-8") as f:
        text = f.read()
    results = export_results or str(Path(path).resolve().parent / EXPORT_RESULTS)
    new = _replace_section(text, START, END, markdown_table(), path)
    new = _replace_section(new, PAPERS_START, PAPERS_END, paper_models_markdown(), path)
    new = _replace_section(new, EXPORT_START, EXPORT_END, export_markdown(load_support(results)), path)
    if new != text:
        write_text(path, new)
    return new != text


if __name__ == "__main__":
    import sys

    changed = update_readme(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print("README tables updated" if changed else "README tables already up to date")
