"""Export of every module and every architecture: torch.export, ONNX (run in onnxruntime) and
TorchScript, checked against eager mode; the committed results file (tests/export_support.json) is
what these tests prove, and the README's export tables are generated from it.

After a change that alters an outcome: ``chanattn export --record tests/export_support.json``
then ``make readme``. ``CHANATTN_EXPORT_ALL=1`` also checks the deeper architectures (about 3 min of
CPU) that ``make test`` leaves to the record.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import chanattn
from chanattn.catalog import EXPORT_END, EXPORT_RESULTS, EXPORT_START, export_markdown
from chanattn.cli import main
from chanattn.export import (
    FORMATS,
    KNOWN_LIMITATIONS,
    SUFFIXES,
    ExportError,
    export,
    export_model,
    export_module,
    load_support,
    model_support,
    module_support,
    randomise_norms,
)
from conftest import ALL_MODULES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = load_support(ROOT / EXPORT_RESULTS)
ALL_MODELS = chanattn.list_models()
FULL = os.environ.get("CHANATTN_EXPORT_ALL", "") not in ("", "0")
RECORD_HINT = "the results file is stale: run `chanattn export --record tests/export_support.json`"
#: the architectures and paths `make test` checks (the rest: CHANATTN_EXPORT_ALL=1)
QUICK = RESULTS["make_test_models"]["paths"]


def test_results_file_covers_every_module_model_and_path():
    assert list(RESULTS["modules"]) == ALL_MODULES
    assert list(RESULTS["models"]) == ALL_MODELS
    for table in (RESULTS["modules"], RESULTS["models"]):
        for name, entries in table.items():
            assert list(entries) == list(FORMATS), name


def test_readme_export_tables_are_up_to_date():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert EXPORT_START in text and EXPORT_END in text
    section = text.split(EXPORT_START, 1)[1].split(EXPORT_END, 1)[0].strip()
    assert section == export_markdown(RESULTS).strip(), "README export tables are stale: run `make readme`"


def _written(tmp_path: Path, name: str, fmt: str, outcome: dict) -> None:
    """An export that succeeded left its file (the check ran the file read back)."""
    files = list(tmp_path.iterdir())
    if outcome["ok"]:
        assert [f.name for f in files] == [f"{name}{SUFFIXES[fmt]}"] and files[0].stat().st_size > 0
    else:
        assert files == [], "a failed export leaves no file"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ALL_MODULES)
def test_module_export_outcome_is_the_recorded_one(name, fmt, tmp_path):
    outcome = module_support(name, fmt, tmp_path)  # written to a file and checked as loaded back
    assert outcome == RESULTS["modules"][name][fmt], RECORD_HINT
    _written(tmp_path, name, fmt, outcome)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ALL_MODELS)
def test_model_export_outcome_is_the_recorded_one(arch, fmt, tmp_path):
    if fmt not in QUICK.get(arch, ()) and not FULL:
        pytest.skip("left to the full run (CHANATTN_EXPORT_ALL=1): code checked on another architecture")
    outcome = model_support(arch, fmt, tmp_path)
    assert outcome == RESULTS["models"][arch][fmt], RECORD_HINT
    _written(tmp_path, arch, fmt, outcome)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_resnet8_with_each_module_exports(name):
    """Every module in its placement (per block, after stages, in place of the 3x3 convolution,
    shared per stage, last block) through torch.export, dynamic batch, equal to eager mode."""
    torch.manual_seed(0)
    model = chanattn.create_model("resnet8", attn=name)
    randomise_norms(model)
    # a fixed batch here: each module's dynamic batch is checked on its own, and this halves the cost
    result = export(model, torch.randn(2, 3, 32, 32), fmt="torch.export", dynamic_batch=False)
    assert model.training, "export must restore the training mode"
    assert not result.dynamic_batch and result.checked_batches == (2,)


@pytest.mark.parametrize("fmt", ["torch.export", "torchscript"])  # ONNX translates the same capture
def test_resnet20_with_dia_stages_exports(fmt):
    """DIA's state handed from block to block (three blocks per stage) is captured by every path,
    and nothing of the export is left in the stage state."""
    torch.manual_seed(0)
    model = chanattn.create_model("resnet20", attn="dia")
    randomise_norms(model)
    result = export(model, torch.randn(2, 3, 32, 32), fmt=fmt)
    assert result.dynamic_batch
    states = {id(m.stage_state): m.stage_state for m in model.modules()
              if isinstance(m, chanattn.module_info("dia").cls)}
    assert len(states) == 3
    assert all(s.h is None and s.c is None and s.next_index == 0 for s in states.values())


def test_export_model_with_attention_by_name():
    x = torch.randn(3, 3, 32, 32)
    result = export_model("resnet8", x, fmt="torchscript", attn="cbam", num_classes=7)
    assert result.target == "resnet8 + cbam" and result.dynamic_batch
    assert result.artifact(x).shape == (3, 7)


def test_files_are_written_and_read_back(tmp_path):
    import onnx

    m = chanattn.create("se", 16)
    x = torch.randn(1, 16, 5, 6)  # a batch of 1 is captured as 2; the artifact takes any batch
    for fmt, suffix in (("torch.export", ".pt2"), ("onnx", ".onnx"), ("torchscript", ".pt")):
        path = tmp_path / f"se{suffix}"
        result = export_module(m, x, path, fmt)
        assert result.path == str(path) and path.stat().st_size > 0
        assert result.dynamic_batch and set(result.checked_batches) == {1, 2}
    onnx.checker.check_model(onnx.load(str(tmp_path / "se.onnx")))
    assert onnx.load(str(tmp_path / "se.onnx")).opset_import[0].version >= 18
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in torch 2.14
        assert isinstance(torch.jit.load(str(tmp_path / "se.pt")), torch.jit.ScriptModule)


def test_export_module_by_name_and_options():
    result = export_module("eca", fmt="torch.export", channels=64, kernel_size=5)
    assert result.target.startswith("eca (") and "channels=64" in result.target
    assert result.artifact.module()(torch.randn(3, 64, 9, 7)).shape == (3, 64, 9, 7)
    with pytest.raises(ValueError, match="registered name"):
        export_module(chanattn.create("se", 16), fmt="onnx", channels=16)
    with pytest.raises(ValueError, match="fmt must be one of"):
        export_module("se", fmt="tflite")


# ---- faults injected: each must give a one-line ExportError (or the module's own error) ----

class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # a Python branch on a tensor value
            return x * 2
        return x - 1


class _FixedBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.reshape(2, -1).mean(1).reshape(2, 1, 1, 1)  # only a batch of 2


class _DiffersWhenExported(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return x * 1.01
        return x


class _NumpyOutput(nn.Module):
    def forward(self, x: torch.Tensor):
        return x.detach().numpy() * 2  # neither scriptable nor traceable


class _ValueFixedByTrace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.detach().numpy().mean())  # not scriptable; a trace keeps the example's mean


@pytest.mark.parametrize("fmt", ["torch.export", "onnx"])
def test_fault_data_dependent_branch(fmt):
    with pytest.raises(ExportError, match=r"_DataDependent: cannot export to .*data-dependent") as info:
        export(_DataDependent(), torch.randn(2, 3, 4, 4), fmt=fmt)
    assert info.value.fmt == fmt and "\n" not in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_fault_fixed_batch_falls_back_to_a_fixed_batch():
    x = torch.randn(2, 3, 4, 4)
    result = export(_FixedBatch(), x, fmt="torch.export")
    assert not result.dynamic_batch and result.checked_batches == (2,)
    assert "fixes the batch size" in result.notes[0]
    result = export(_FixedBatch(), x, fmt="torchscript")
    assert result.via == "script" and not result.dynamic_batch
    assert "module fixes the batch" in result.notes[-1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_export_differs_from_eager(fmt):
    with pytest.raises(ExportError, match=r"differ from eager mode by 0\.0\d+"):
        export(_DiffersWhenExported(), torch.randn(2, 3, 4, 4) + 5, fmt=fmt)


class _NoOnnxOperator(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.linalg.eigvalsh(x @ x.transpose(-1, -2)).sum()


def test_fault_operator_without_onnx_translation():
    with pytest.raises(ExportError, match=r"_NoOnnxOperator: cannot export to onnx: the operator "
                                          r"aten\._linalg_eigh has no ONNX translation at opset 20$"):
        export(_NoOnnxOperator(), torch.randn(2, 3, 4, 4), fmt="onnx")
    assert export(_NoOnnxOperator(), torch.randn(2, 3, 4, 4), fmt="torch.export").dynamic_batch


def test_fault_bfloat16_has_no_onnxruntime_kernel():
    m = chanattn.create("se_var1", 8).to(torch.bfloat16)
    with pytest.raises(ExportError, match=r"se_var1 .*onnx: onnxruntime.* no kernel for the ONNX operator"):
        export(m, torch.randn(2, 8, 4, 4, dtype=torch.bfloat16), fmt="onnx")
    # torch.export has no such limit
    assert export(m, torch.randn(2, 8, 4, 4, dtype=torch.bfloat16), fmt="torch.export").dynamic_batch


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_dia_block_of_a_stage_is_a_known_limitation(fmt):
    from chanattn.modules.dianet import make_dia_stage

    blocks = make_dia_stage(8, 3)
    with pytest.raises(ExportError, match=r"^dia .*cannot export to .*multi-block DIA stage") as info:
        export(blocks[1], torch.randn(2, 8, 4, 4), fmt=fmt)
    assert info.value.reason == KNOWN_LIMITATIONS[0].reason
    assert blocks[0].stage_state.h is None  # nothing ran


def test_fault_untraceable_output():
    with pytest.raises(ExportError, match=r"_NumpyOutput: cannot export to torchscript: neither scripting"):
        export(_NumpyOutput(), torch.randn(2, 3, 4, 4), fmt="torchscript")


def test_fault_value_fixed_by_a_trace_is_caught():
    with pytest.raises(ExportError, match=r"_ValueFixedByTrace: .*torchscript: the exported outputs differ"):
        export(_ValueFixedByTrace(), torch.randn(2, 3, 4, 4), fmt="torchscript")


def test_fault_onnxruntime_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(ExportError, match=r"se .*onnx: needs the packages onnx, onnxscript and onnxruntime"):
        export_module("se", fmt="onnx", channels=8)


def test_fault_unwritable_file_is_an_export_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for fmt in FORMATS:
        with pytest.raises(ExportError, match=r"se .*: cannot write .*file/se") as info:
            export_module("se", path=blocker / f"se{SUFFIXES[fmt]}", fmt=fmt, channels=8)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_any_failure_of_a_path_is_an_export_error(fmt, monkeypatch, tmp_path):
    """A failure that no check names (here torch's writers refusing, as torch.jit.save did for an
    autograd Function recorded by a trace) is an ExportError with its reason, not a RuntimeError."""
    def refuse(*args, **kwargs):
        raise RuntimeError("Could not export Python function call '_Something'")

    monkeypatch.setattr(torch.export, "save", refuse)
    monkeypatch.setattr(torch.jit, "save", refuse)
    from torch.onnx import ONNXProgram

    monkeypatch.setattr(ONNXProgram, "save", refuse)
    with pytest.raises(ExportError, match=r"cannot write .*Could not export Python function call"):
        export_module("se", path=tmp_path / f"se{SUFFIXES[fmt]}", fmt=fmt, channels=8)
    monkeypatch.setattr(torch.export, "export", refuse)
    monkeypatch.setattr(torch.jit, "script", refuse)
    monkeypatch.setattr(torch.jit, "trace", refuse)
    with pytest.raises(ExportError, match=r"Could not export Python function call"):
        export_module("se", fmt=fmt, channels=8)


def test_fault_bad_example_gives_the_modules_own_error():
    m = chanattn.create("se", 16)
    with pytest.raises(ValueError, match=r"SqueezeExcite.*expects 16 input channels, got 8"):
        export(m, torch.randn(2, 8, 4, 4), fmt="torch.export")
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        export(m, [1, 2], fmt="onnx")


# ---- the command line ----

def test_cli_exports_a_module_and_a_model(tmp_path, capsys):
    out = tmp_path / "eca.onnx"
    assert main(["export", "--module", "eca", "--format", "onnx", "--out", str(out),
                 "--shape", "1x32x7x7"]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 0
    assert "eca (EfficientChannelAttention, channels=32)" in text and "dynamic batch" in text
    out = tmp_path / "r8.pt2"
    assert main(["export", "--arch", "resnet8", "--attn", "se", "--format", "torch.export",
                 "--out", str(out), "--num-classes", "5"]) == 0
    assert "resnet8 + se" in capsys.readouterr().out and out.stat().st_size > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_exports_cbam_along_every_path(fmt, tmp_path, capsys):
    """The command of issue 13 (`chanattn export --module cbam --format torchscript --out cbam.pt`
    failed on an autograd Function of the fast path): every module's forward is the formula under
    tracing and export, so each path writes its file and loads it back."""
    out = tmp_path / f"cbam{SUFFIXES[fmt]}"
    assert main(["export", "--module", "cbam", "--format", fmt, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 0 and "cbam (CBAM, channels=64)" in text and "dynamic batch" in text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if fmt == "torchscript":
            loaded = torch.jit.load(str(out))
        elif fmt == "torch.export":
            loaded = torch.export.load(str(out)).module()
        else:
            loaded = None
    if loaded is not None:
        x = torch.randn(3, 64, 14, 14)
        m = chanattn.create("cbam", 64)  # the file's weights are the seeded module's: shapes only
        assert loaded(x).shape == m(x).shape


@pytest.mark.parametrize("argv, message", [
    (["--module", "se", "--format", "onnx"], "--out FILE is required"),
    (["--module", "se", "--arch", "resnet8", "--out", "x"], "--arch NAME or --checkpoint RUN"),
    (["--module", "se", "--format", "tflite", "--out", "x"], "--format: expected one of torch.export"),
    (["--module", "nope", "--out", "x"], "unknown module 'nope'"),
    (["--module", "se", "--shape", "1x8", "--out", "x"], "BxCxHxW"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chanattn export: error: ") and message in err[0]
