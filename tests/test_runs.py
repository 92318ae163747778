"""Run directories and the messages around them, tried as a user would: by running ``chanattn train``
and ``chanattn eval`` (issue 13). A run is never overwritten silently; ``--resume auto`` resumes or
starts; ``--epochs`` extends a finished run; ``--init-from`` fine-tunes; files that are not chanattn
checkpoints are named; the recipe and a busy machine are said at the start of a run."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from chanattn.cli import main
from chanattn.training import Callback, load_checkpoint, lr_at, resolve_config, train
from chanattn.training import threads as threads_mod
from chanattn.training.callbacks import FaultInjection
from chanattn.training.checkpoint import save_checkpoint, state_dict_mismatch

TINY = ["--model-kwargs", '{"widths": [8, 8, 16]}', "--batch-size", "128", "--threads", "1",
        "--progress", "none"]


def train_argv(out, *extra: str) -> list[str]:
    return ["train", "--out", str(out), *TINY, *extra]


def digest(run_dir) -> str:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)["weight_digests"][0]


def epochs_of(run_dir) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(autouse=True)
def _idle_machine(monkeypatch):
    """Tests count stderr lines: the busy-machine warning is tested on its own."""
    monkeypatch.setattr(threads_mod, "load_average", lambda: 0.0)


# --------------------------------------------------------------------------------- run directories
def test_a_finished_run_is_refused_then_overwritten_on_request(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(out, "--epochs", "2")) == 0
    (out / "notes.txt").write_text("mine")
    best = (out / "best.pt").read_bytes()
    capsys.readouterr()

    assert main(train_argv(out, "--epochs", "1")) == 2
    err = one_line_error(capsys)
    assert "holds a run" in err and "2 epochs done" in err
    assert "--resume auto" in err and "--overwrite" in err
    assert (out / "best.pt").read_bytes() == best and epochs_of(out) == [1, 2]  # nothing touched

    assert main(train_argv(out, "--epochs", "1", "--overwrite")) == 0
    assert epochs_of(out) == [1]  # one run's epochs, not 1, 2, 1
    assert not (out / "previous.pt").exists()  # the old run's files went first
    assert (out / "notes.txt").read_text() == "mine"  # files that are not the run's stay
    assert load_checkpoint(out / "last.pt")["config"]["epochs"] == 1

    capsys.readouterr()
    assert main(train_argv(out, "--resume", "auto", "--overwrite")) == 2
    assert "give one of them" in one_line_error(capsys)


def test_resume_auto_starts_then_continues_to_the_uninterrupted_weights(tmp_path, capsys):
    full = tmp_path / "full"
    assert main(train_argv(full, "--epochs", "3")) == 0
    run = tmp_path / "auto"
    assert main(train_argv(run, "--epochs", "3", "--resume", "auto", "--stop-after", "1")) == 0
    assert epochs_of(run) == [1]  # nothing there: it started
    capsys.readouterr()
    assert main(train_argv(run, "--epochs", "3", "--resume", "auto")) == 0
    assert "resume" in capsys.readouterr().err
    assert epochs_of(run) == [1, 2, 3] and digest(run) == digest(full)
    # a finished run: --resume auto again trains nothing and changes nothing
    last = (run / "last.pt").read_bytes()
    assert main(train_argv(run, "--epochs", "3", "--resume", "auto")) == 0
    assert "nothing to train" in capsys.readouterr().err and (run / "last.pt").read_bytes() == last
    # other settings are not a continuation
    assert main(train_argv(run, "--epochs", "3", "--resume", "auto", "--lr", "0.2")) == 2
    err = one_line_error(capsys)
    assert "other settings" in err and "lr 0.1 there, 0.2 given" in err
    # without last.pt (a disk fault), never a silent start over: the checkpoints left are named
    (run / "last.pt").unlink()
    for argv in (train_argv(run, "--epochs", "3", "--resume", "auto"), ["train", "--resume", str(run)]):
        assert main(argv) == 2
        assert f"previous.pt, best.pt: continue from one with --resume {run / 'previous.pt'}" in \
            one_line_error(capsys)


def test_ctrl_c_in_epoch_1_and_the_hint_that_follows(tmp_path, capsys, monkeypatch):
    """Interrupted before the first checkpoint: the hint printed is a command that works."""

    class CtrlC(Callback):
        def on_step_end(self, epoch, step):
            if (epoch, step) == (1, 2):
                raise KeyboardInterrupt

    monkeypatch.setattr(FaultInjection, "from_env", classmethod(lambda cls, environ=None: CtrlC()))
    run = tmp_path / "run"
    argv = train_argv(run, "--epochs", "2")
    assert main(argv) == 130
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == "chanattn train: interrupted (to continue, run the same command with --resume auto added)"
    assert not (run / "last.pt").exists() and (run / "config.yaml").exists()
    monkeypatch.undo()
    monkeypatch.setattr(threads_mod, "load_average", lambda: 0.0)

    assert main(["train", "--resume", str(run), "--threads", "1"]) == 2  # what the old hint said
    assert "stopped before its first epoch ended" in one_line_error(capsys)
    assert main(argv) == 2  # the same command again is refused, naming --resume auto
    assert "--resume auto" in one_line_error(capsys)
    assert main([*argv, "--resume", "auto"]) == 0  # the hint
    assert epochs_of(run) == [1, 2]
    full = tmp_path / "full"
    assert main(train_argv(full, "--epochs", "2")) == 0
    assert digest(run) == digest(full)


def test_epochs_extends_a_finished_run(tmp_path, capsys):
    # multistep keeps its milestones in epochs: 2 epochs extended to 3 equal 3 epochs straight
    # (the milestone at epoch 2 is first reached in the extension)
    step = ["--schedule", "multistep", "--milestones", "2"]
    run, full = tmp_path / "ms", tmp_path / "ms_full"
    assert main(train_argv(run, "--epochs", "2", *step)) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--threads", "1", "--progress", "none"]) == 0
    assert main(train_argv(full, "--epochs", "3", *step)) == 0
    assert epochs_of(run) == [1, 2, 3] and digest(run) == digest(full)
    assert load_checkpoint(run / "last.pt")["config"]["epochs"] == 3
    lrs = [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[2] == pytest.approx(0.01)  # x0.1 from epoch 3 on

    # cosine is recomputed over the new length: the lr rises again after the first run ended near 0
    cos = tmp_path / "cos"
    assert main(train_argv(cos, "--epochs", "2")) == 0  # digits recipe: cosine, 1 warm-up epoch
    capsys.readouterr()
    assert main(train_argv(cos, "--epochs", "3", "--resume", "auto")) == 0
    # epoch 3 starts at the 3-epoch curve's lr (0.05), not at the 2-epoch curve's end (0)
    assert "the cosine is recomputed over them, lr 0.05 now (0 on the old one)" in capsys.readouterr().err
    lrs = [json.loads(x)["lr"] for x in (cos / "metrics.jsonl").read_text().splitlines()]
    cfg2, cfg3 = (resolve_config("digits", overrides={"epochs": n}) for n in (2, 3))
    assert lrs[:2] == [pytest.approx(lr_at(cfg2, e * 11 - 1, 11)) for e in (1, 2)]  # the first run's
    assert lrs[2] == pytest.approx(lr_at(cfg3, 3 * 11 - 1, 11)) and lr_at(cfg2, 3 * 11 - 1, 11) == 0 < lrs[2]

    assert main(["train", "--resume", str(cos), "--epochs", "2", "--threads", "1"]) == 2
    assert "has done 3 epochs" in one_line_error(capsys)
    assert main(["train", "--resume", str(cos), "--lr", "1", "--threads", "1"]) == 2
    assert "only --epochs" in one_line_error(capsys)


# ------------------------------------------------------------------------------------- init-from
def test_init_from_starts_a_new_run_from_weights(tmp_path, capsys):
    src = tmp_path / "src"
    assert main(train_argv(src, "--epochs", "3", "--attn", "se")) == 0
    ckpt = load_checkpoint(src / "last.pt")
    capsys.readouterr()

    tuned = tmp_path / "tuned"
    assert main(train_argv(tuned, "--epochs", "1", "--attn", "se", "--init-from", str(src))) == 0
    assert "weights from checkpoint" in capsys.readouterr().err
    new = load_checkpoint(tuned / "last.pt")
    assert new["epoch"] == 1 and new["config"]["init_from"] == str(src) and epochs_of(tuned) == [1]
    assert new["scheduler"]["step"] == 11  # a new schedule: its own first epoch
    first_src = json.loads((src / "metrics.jsonl").read_text().splitlines()[0])
    first_tuned = json.loads((tuned / "metrics.jsonl").read_text().splitlines()[0])
    # from scratch, epoch 1 would be the source's epoch 1 (same seed, the same lr in the warm-up)
    assert first_tuned["train_loss"] < first_src["train_loss"] - 0.1

    # exactly the checkpoint's weights, also from a plain state_dict file
    from chanattn.data import load_data
    from chanattn.training.trainer import build_model, init_weights

    plain = tmp_path / "weights.pt"
    torch.save(ckpt["model"], plain)
    spec = load_data("digits").spec
    for source in (str(src), str(plain)):
        cfg = resolve_config("digits", overrides={"attn": "se", "model_kwargs": {"widths": [8, 8, 16]},
                                                  "init_from": source})
        model = build_model(cfg, spec.num_classes, spec.in_chans)
        init_weights(model, cfg)
        assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())

    # weights of another attention or width: the keys that do not fit
    assert main(train_argv(tmp_path / "x", "--epochs", "1", "--attn", "eca", "--init-from", str(src))) == 2
    err = one_line_error(capsys)
    assert "does not fit" in err and "missing key" in err and "unexpected key" in err and "attn" in err
    wide = ["--model-kwargs", '{"widths": [8, 8, 32]}']
    assert main([*train_argv(tmp_path / "y", "--epochs", "1", "--attn", "se", "--init-from", str(src)),
                 *wide]) == 2
    err = one_line_error(capsys)
    assert "mis-shaped key" in err and "file [16" in err and "model [32" in err
    assert not (tmp_path / "y" / "last.pt").exists()


# -------------------------------------------------------------------------------------- messages
def _image_folder(root, classes=3, size=8):
    from PIL import Image

    for split, n in (("train", 4), ("val", 2)):
        for c in range(classes):
            for i in range(n):
                path = root / split / f"c{c}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (size, size), (80 * c, 10 * i, 200 - 60 * c)).save(path)
    return root


def test_checkpoints_that_do_not_fit_list_their_keys(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(run, "--epochs", "1")) == 0
    capsys.readouterr()
    folder = _image_folder(tmp_path / "folder")
    argv = ["eval", "--checkpoint", str(run), "--dataset", "imagefolder", "--data-root", str(folder)]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "does not fit" in err and "mis-shaped key" in err and "evaluate it on 'digits'" in err
    assert "file [8, 1, 3, 3], model [8, 3, 3, 3]" in err  # the stem: 1 channel trained, 3 asked

    # a checkpoint whose model lost a key and gained one: resume says which
    ckpt = load_checkpoint(run / "last.pt")
    model = dict(ckpt["model"])
    key = next(iter(model))
    model["extra.weight"] = model.pop(key)
    ckpt["model"] = model
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, run / "last.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--threads", "1"]) == 2
    err = one_line_error(capsys)
    assert f"1 missing key ('{key}')" in err and "1 unexpected key ('extra.weight')" in err
    missing, unexpected, misshaped = state_dict_mismatch({"a": torch.zeros(2), "b": torch.zeros(3)},
                                                         {"b": torch.zeros(4), "c": torch.zeros(1)})
    assert (missing, unexpected, misshaped) == (["a"], ["c"], ["b: file [4], model [3]"])


def test_files_that_are_not_checkpoints_are_named(tmp_path, capsys):
    """Each kind of file gets one line naming what it is and what to do; never torch's advice to
    unpickle with weights_only=False."""
    import warnings

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
    x = torch.randn(1, 1, 8, 8)
    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files["m.pt2"] = lambda p: torch.export.save(torch.export.export(net, (x,)), p)
        files["m.onnx"] = lambda p: torch.onnx.export(net, (x,), p, dynamo=False)
        files["m.ts"] = lambda p: torch.jit.trace(net, x).save(p)
        files["model.pt"] = lambda p: torch.save(net, p)
        for name, write in files.items():
            write(str(tmp_path / name))
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "other.pt")
    (tmp_path / "random.bin").write_bytes(random.Random(0).randbytes(2000))
    expected = {
        "m.pt2": "is a torch.export archive (.pt2), not a chanattn checkpoint; load the exported model with "
                 "torch.export.load",
        "m.onnx": "is an ONNX model, not a chanattn checkpoint; evaluate it with onnxruntime",
        "m.ts": "is a TorchScript archive, not a chanattn checkpoint; load it with torch.jit.load",
        "model.pt": "holds a pickled torch.nn.modules.container.Sequential object",
        "sd.pt": "is a plain state_dict of 2 tensors ('0.weight', '0.bias'), not a chanattn checkpoint",
        "other.pt": "is a checkpoint of another training program (its 'state_dict' holds 2 tensors)",
        "random.bin": "is not a chanattn checkpoint: not a file torch.save writes",
    }
    from safetensors.torch import save_file

    save_file(net.state_dict(), tmp_path / "m.safetensors")
    expected["m.safetensors"] = "is a safetensors file of 2 tensors (weights only, no config)"
    import chanattn
    from chanattn.hub import save_safetensors

    r8 = chanattn.create_model("resnet8", num_classes=10, in_chans=1)
    save_safetensors(r8, tmp_path / "r8.safetensors")
    expected["r8.safetensors"] = (
        f"is a chanattn safetensors file (the weights and model config of {len(r8.state_dict())} tensors, as "
        "chanattn export --format safetensors writes), not a training checkpoint; load the model with "
        "chanattn.from_pretrained")
    capsys.readouterr()
    for name, text in expected.items():
        assert main(["eval", "--checkpoint", str(tmp_path / name)]) == 2, name
        err = one_line_error(capsys)
        assert text in err and "weights_only=False" not in err and "weights_only` set to" not in err, err
    # what can start a run, does: a plain state_dict and another program's checkpoint
    for name in ("sd.pt", "other.pt"):
        assert main(["eval", "--checkpoint", str(tmp_path / name)]) == 2
        assert f"--init-from {tmp_path / name}" in capsys.readouterr().err


def test_the_recipe_in_force_is_said_at_the_start(tmp_path, capsys):
    assert main(train_argv(tmp_path / "d", "--epochs", "1")) == 0
    err = capsys.readouterr().err
    assert ("recipe digits (for the default --dataset digits; --recipe to choose another): 1 epoch, "
            "batch 128, sgd lr 0.1 (momentum 0.9, weight decay 0.0005), cosine to 0 after 1 warm-up "
            "epoch") in err
    folder = _image_folder(tmp_path / "folder")
    argv = ["train", "--dataset", "imagefolder", "--data-root", str(folder), "--image-size", "8",
            "--arch", "plain_cnn", "--batch-size", "4", "--stop-after", "1", "--out", str(tmp_path / "if"),
            "--threads", "1", "--progress", "none"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert ("recipe cifar (--dataset imagefolder has no recipe of its own, so the CIFAR one; give --epochs, "
            "--milestones, --lr or --recipe for your data): 160 epochs") in err
    assert "x0.1 at epochs 120,140" in err
    assert main([*argv[:-6], "--recipe", "digits", "--out", str(tmp_path / "if2"), "--stop-after", "1",
                 "--threads", "1", "--progress", "none"]) == 0
    assert "recipe digits (--recipe): 10 epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- threads
def test_a_busy_machine_is_said_and_threads_follow_the_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(threads_mod, "load_average", lambda: 5.0)
    monkeypatch.setattr(threads_mod, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        argv = ["train", "--out", str(tmp_path / "r"), "--epochs", "1", "--progress", "none"]
        assert main(argv) == 0
        assert torch.get_num_threads() == 1  # 2 cores, load 5: one thread, not torch's 2
    finally:
        torch.set_num_threads(before)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {threads_mod.busy_warning(2, 5.0)}; using 1 torch thread"]


# ------------------------------------------------------------------------------------- callbacks
def test_callbacks_and_the_fault_that_fires_once(tmp_path):
    class Record(Callback):
        def __init__(self):
            self.losses, self.steps, self.epochs = 0, 0, []

        def on_loss(self, epoch, step, loss):
            self.losses += 1
            return loss

        def on_step_end(self, epoch, step):
            self.steps += 1

        def on_epoch_end(self, epoch, record):
            self.epochs.append((epoch, record["epoch"]))

    rec = Record()
    cfg = resolve_config("digits", overrides={"model_kwargs": {"widths": [8, 8, 16]}, "batch_size": 128,
                                               "epochs": 2, "threads": 1, "progress": "none",
                                               "out": str(tmp_path / "cb")})
    train(cfg, callbacks=[rec])
    assert (rec.losses, rec.steps, rec.epochs) == (22, 22, [(1, 1), (2, 2)])
    env = {"CHANATTN_FAULT": "kill@2.3"}
    fault = FaultInjection.from_env(env)
    assert (fault.kind, fault.epoch, fault.step) == ("kill", 2, 3)
    assert FaultInjection.from_env({**env, "TORCHELASTIC_RESTART_COUNT": "0"}) is not None
    assert FaultInjection.from_env({**env, "TORCHELASTIC_RESTART_COUNT": "1"}) is None  # a restart
    assert FaultInjection.from_env({}) is None
    with pytest.raises(ValueError, match="kill@EPOCH.STEP"):
        FaultInjection.from_env({"CHANATTN_FAULT": "kill"})
