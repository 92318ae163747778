"""Trained models out of chanattn: load_model, save_pretrained/from_pretrained (safetensors, every
module, DIA's shared cell included), push_to_hub (with a stand-in for the Hub), and
`chanattn export --checkpoint` - each run as a user would."""

from __future__ import annotations

import json

import pytest
import torch

import chanattn
from chanattn.cli import main
from chanattn.errors import CheckpointError, InputError
from chanattn.training import resolve_config, train
from conftest import ALL_MODULES, randomise_norms


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished one-epoch digits run with DIA (shared per-stage cell)."""
    out = tmp_path_factory.mktemp("runs") / "dia"
    cfg = resolve_config("digits", overrides={"attn": "dia", "epochs": 1, "out": str(out), "progress": "none",
                                              "batch_size": 128})
    train(cfg, quiet=True)
    return out


@pytest.mark.parametrize("name", ALL_MODULES)
def test_save_and_load_pretrained_every_module(name, tmp_path):
    # built for the 8 x 8 inputs below (ge_theta's global gather takes that size only): the config
    # keeps input_size, so the loaded model is built for it too
    model = chanattn.create_model("resnet8", attn=name, in_chans=1, num_classes=10, input_size=8)
    randomise_norms(model)
    folder = chanattn.save_pretrained(model, tmp_path / name)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["arch"] == "resnet8" and config["attn"] == name and config["library"] == "chanattn"
    loaded = chanattn.from_pretrained(folder)
    assert not loaded.training
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_shared_cell_is_stored_once_and_restored_shared(tmp_path):
    from safetensors import safe_open

    model = chanattn.create_model("resnet20", attn="dia", num_classes=10)
    path = chanattn.hub.save_safetensors(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        stored = set(f.keys())
    cells = [k for k in model.state_dict() if ".cell." in k or "lstm" in k.lower()]
    assert cells and len(stored) < len(model.state_dict())  # the shared names are stored once
    loaded = chanattn.from_pretrained(path)  # a single file: the config is in its metadata
    blocks = [m for m in loaded.modules() if type(m).__name__ == "DenseImplicitAttention"]
    shared = {id(p) for b in blocks for p in b.parameters()}
    assert len(shared) < sum(len(list(b.parameters())) for b in blocks)  # still shared after loading


def test_load_model_of_a_run(run_dir, capsys):
    model = chanattn.load_model(run_dir)
    cfg = model.chanattn_config
    assert not model.training and cfg["arch"] == "resnet8" and cfg["attn"] == "dia" and cfg["epoch"] == 1
    assert cfg["input_size"] == [1, 8, 8] and len(cfg["mean"]) == 1 and cfg["classes"][0] == "0"
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # the same weights as the checkpoint the trainer evaluates
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    for k, v in ckpt["model"].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_load_model_errors(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match="holds no best.pt or last.pt"):
        chanattn.load_model(tmp_path)
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    ckpt["model"]["extra.weight"] = torch.zeros(1)
    del ckpt["model"]["fc.weight"]
    torch.save(ckpt, tmp_path / "bad.pt")
    keys = r"1 missing key \('fc.weight'\); 1 unexpected key \('extra.weight'\)"
    with pytest.raises(CheckpointError, match=r"fit resnet8 \+ dia: " + keys):
        chanattn.load_model(tmp_path / "bad.pt")


def test_export_checkpoint_from_the_command_line(run_dir, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(run_dir), "--format", "safetensors", "--out", str(out)]) == 0
    assert "safetensors" in capsys.readouterr().out
    x = torch.randn(4, 1, 8, 8)
    expected = chanattn.load_model(run_dir)(x)
    torch.testing.assert_close(chanattn.from_pretrained(out)(x), expected, rtol=0, atol=0)
    pt2 = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(run_dir), "--format", "torch.export", "--out", str(pt2)]) == 0
    program = torch.export.load(str(pt2)).module()
    torch.testing.assert_close(program(x), expected, rtol=1e-5, atol=1e-6)
    assert main(["export", "--arch", "resnet8", "--format", "safetensors", "--out", str(out)]) == 2
    assert "use it with --checkpoint" in capsys.readouterr().err


def test_from_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such folder or file"):
        chanattn.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="has no config.json"):
        chanattn.from_pretrained(tmp_path)
    (tmp_path / "x.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="training checkpoint loads with chanattn.load_model"):
        chanattn.from_pretrained(tmp_path / "x.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not in the local cache"):
        chanattn.from_pretrained("someone/no-such-chanattn-model", cache_dir=str(tmp_path / "hub"))


def test_a_callable_attn_cannot_be_saved(tmp_path):
    model = chanattn.create_model("resnet8", attn=lambda c: torch.nn.Identity(), in_chans=1)
    with pytest.raises(InputError, match="callable attn"):
        chanattn.save_pretrained(model, tmp_path)


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:  # stands in for the Hub: records what would be uploaded
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=""):
            from pathlib import Path

            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["config"] = json.loads((Path(folder_path) / "config.json").read_text())
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = chanattn.create_model("resnet8", attn="se", in_chans=1)
    url = chanattn.push_to_hub(model, "me/r8-se", token="t", private=True)
    assert url == "https://hub/me/r8-se/commit/1"
    assert calls["repo"] == ("me/r8-se", True, True) and calls["token"] == "t"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert calls["config"]["attn"] == "se"
