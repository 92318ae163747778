"""The layout's promises: the library never imports the command line, every error it raises on
purpose is a ChanattnError of the built-in type it means, the command line answers --help without
importing torch, and --debug/--version work before or after the command."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import chanattn
from chanattn import errors
from chanattn.cli import main


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_library_never_imports_the_command_line():
    code = (
        "import importlib, pkgutil, sys, chanattn\n"
        "def walk(pkg):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name in ('chanattn.cli', 'chanattn.__main__'):\n"
        "            continue\n"
        "        mod = importlib.import_module(m.name)\n"
        "        if m.ispkg:\n"
        "            walk(mod)\n"
        "walk(chanattn)\n"
        "print(sorted(n for n in sys.modules if n.startswith('chanattn.cli')))\n"
    )
    assert _run(code).strip() == "[]"


def test_help_and_version_import_no_torch():
    code = (
        "import sys\n"
        "from chanattn.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['compare', '--help'], ['bench', '--help'],\n"
        "             ['export', '--help'], ['--version']):\n"
        "    assert main(argv) == 0, argv\n"
        "print('torch' in sys.modules)\n"
    )
    assert _run(code).strip().splitlines()[-1] == "False"


def test_debug_and_version_anywhere(capsys):
    assert main(["list", "--version"]) == 0
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.split() == ["chanattn", chanattn.__version__] * 2
    argv = ["demo", "--shape", "8x64"]
    assert main(argv) == 2
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ValueError, match="BxCxHxW"):
            main(debug)


def test_usage_errors_are_one_line_with_a_help_hint(capsys):
    assert main(["train", "--epochs", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err == ("chanattn train: error: argument --epochs: invalid int value: '1.5' "
                   "(see chanattn train --help)\n")


def test_every_training_flag_has_help_with_its_default(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag, shown in (("--epochs", "(default 160; recipe"), ("--lr", "(default 0.1"),
                        ("--optimizer", "{sgd,adamw}"), ("--schedule", "{multistep,step,cosine,constant}"),
                        ("--milestones", "(default 120,140"), ("--attn", "(default: none)")):
        assert flag in out and shown in out, flag
    assert "digits: 10" in out  # the recipe that changes --epochs


@pytest.mark.parametrize("cls, builtin", [
    (errors.InputError, ValueError), (errors.InputTypeError, TypeError), (errors.ConfigError, ValueError),
    (errors.DataError, ValueError), (errors.CheckpointError, ValueError), (errors.ExportError, RuntimeError),
    (errors.TrainingDiverged, RuntimeError),
])
def test_errors_are_chanattn_errors_of_their_builtin_type(cls, builtin):
    assert issubclass(cls, errors.ChanattnError) and issubclass(cls, builtin)


def test_module_errors_are_chanattn_errors():
    import torch

    with pytest.raises(errors.ChanattnError, match=r"SqueezeExcite 'se' \(channels=8\) expects 8 input"):
        chanattn.create("se", 8)(torch.randn(2, 4, 3, 3))
    with pytest.raises(errors.ChanattnError, match="unknown module"):
        chanattn.create("nosuch", 8)


@pytest.mark.parametrize("package", ["chanattn", "chanattn.export", "chanattn.training"])
def test_lazy_packages_export_what_they_list(package):
    mod = importlib.import_module(package)
    assert sorted(n for n in mod.__all__ if n != "__version__") == sorted(mod._EXPORTS)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


def test_cli_constants_agree_with_the_library():
    from chanattn.bench.core import MODES
    from chanattn.cli.bench import MODES as CLI_MODES

    assert CLI_MODES == MODES


def test_one_file_per_command():
    import chanattn.cli as cli

    files = {m.name for m in pkgutil.iter_modules(cli.__path__) if not m.name.startswith("_")}
    assert files == {module for _, module in cli.COMMANDS}


def test_the_core_needs_no_extras():
    """`pip install chanattn` alone (torch, numpy, safetensors) gives the modules, the models, attach
    and safetensors; a feature that needs an extra says which one."""
    code = (
        "import sys, tempfile, torch\n"
        "for m in ('sklearn', 'matplotlib', 'yaml', 'huggingface_hub', 'onnx', 'onnxruntime', 'timm',\n"
        "          'torchvision', 'scipy'):\n"
        "    sys.modules[m] = None  # import fails as if not installed\n"
        "import chanattn\n"
        "m = chanattn.create_model('resnet8', attn='cbam', in_chans=1)\n"
        "m(torch.randn(2, 1, 8, 8)).sum().backward()\n"
        "chanattn.attach(chanattn.create_model('resnet8'), 'eca')\n"
        "chanattn.from_pretrained(chanattn.save_pretrained(m, tempfile.mkdtemp()))\n"
        "from chanattn.data import load_data\n"
        "try:\n"
        "    load_data('digits')\n"
        "except chanattn.errors.MissingDependency as exc:\n"
        "    print(exc)\n"
    )
    out = _run(code)
    assert "needs sklearn (pip install 'chanattn[train]')" in out
