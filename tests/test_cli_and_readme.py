from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import chanattn
from chanattn.catalog import END, PAPERS_END, PAPERS_START, START, markdown_table, paper_models_markdown
from chanattn.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_up_to_date():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == markdown_table().strip(), "README table is stale: run `make readme`"
    for name in chanattn.list_modules():
        assert f"`{name}`" in table


def test_readme_paper_models_table_is_up_to_date():
    from chanattn.models.papers import PAPER_MODELS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split(PAPERS_START, 1)[1].split(PAPERS_END, 1)[0].strip()
    assert table == paper_models_markdown().strip(), "README paper-models table is stale: run `make readme`"
    for model in PAPER_MODELS:
        assert f"| {model.title} |" in table


def test_list_prints_every_module(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in chanattn.list_modules():
        assert name in out
    assert "se_var3 (ese)" in out and "8,464" in out  # SE at C=256: 2 * 256 * 16 + 16 + 256


def test_list_markdown_and_channels(capsys):
    assert main(["list", "--format", "markdown", "--channels", "64"]) == 0
    assert "params at C=64" in capsys.readouterr().out


def test_bad_option_is_one_line_and_nonzero(capsys):
    assert main(["list", "--channels", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["chanattn list: error: argument --channels: expected a positive int, got '0' "
                   "(see chanattn list --help)"]
    assert main(["demo", "--shape", "8x64"]) == 2
    assert "BxCxHxW" in capsys.readouterr().err


def test_demo_checks_every_module(capsys):
    assert main(["demo", "--shape", "4x32x7x7"]) == 0
    out = capsys.readouterr().out
    n = len(chanattn.list_modules())
    assert f"{n}/{n} modules passed" in out


@pytest.mark.parametrize("args", [["-m", "chanattn", "list"]])
def test_module_entry_point_runs(args):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "se_var1" in r.stdout
