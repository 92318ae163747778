"""chanattn.table, the one renderer of the tables chanattn prints or writes: text, markdown and CSV
from one list of columns."""

from __future__ import annotations

import csv
import io

from chanattn.table import Column, TextTable, render, render_csv, render_markdown

RECORDS = [{"name": "se", "params": 8464, "top1": 93.456}, {"name": "a, b", "params": None, "top1": 1.0}]
COLUMNS = [Column("name", "name"), Column("params", "params", ","),
           Column("top-1", spec=".2f", get=lambda r: r["top1"])]


def test_text_and_markdown_from_the_same_columns():
    assert render(RECORDS, COLUMNS).splitlines() == [
        "name  params  top-1", "----  ------  -----", "se     8,464  93.46", "a, b           1.00"]
    assert render_markdown(RECORDS, COLUMNS).splitlines() == [
        "| name | params | top-1 |", "|---|---:|---:|", "| se | 8,464 | 93.46 |", "| a, b |  | 1.00 |"]
    table = TextTable([Column("name", "name", width=6), Column("params", "params", "d", width=7)],
                      note_key="note")
    assert table.head() == ["name    params  note", "-" * 20]
    assert table.row({"name": "se", "params": 5, "note": "slow"}) == "se           5  slow"


def test_csv_quotes_and_reads_back():
    cols = [Column("name", "name"), Column("params", "params", "d"), Column("top1", "top1", ".3f")]
    text = render_csv(RECORDS, cols)
    assert text.splitlines()[:2] == ["name,params,top1", "se,8464,93.456"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[1] == {"name": "a, b", "params": "", "top1": "1.000"}  # quoted comma, empty None
