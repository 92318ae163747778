"""The trainer with the usual tools (issue 15, item 5): metrics.csv and TensorBoard scalars beside
metrics.jsonl, user callbacks (every epoch seen, early stop), tqdm's bar on a terminal, timm's
RandAugment and Mixup/CutMix on image folders; checkpoints that carry the model's config, which
chanattn.load_model builds from."""

from __future__ import annotations

import csv
import io
import json
import random
import sys

import numpy as np
import pytest
import torch

import chanattn
from chanattn.cli import main
from chanattn.errors import ConfigError, MissingDependency
from chanattn.training import Callback, resolve_config, train
from chanattn.training import threads as threads_mod

TINY = {"model_kwargs": {"widths": [8, 8, 16]}, "batch_size": 128, "threads": 1, "progress": "none"}
TINY_ARGV = ["--model-kwargs", '{"widths": [8, 8, 16]}', "--batch-size", "128", "--threads", "1",
             "--progress", "none"]


@pytest.fixture(autouse=True)
def _idle_machine(monkeypatch):
    """No busy-machine line in the output these tests read."""
    monkeypatch.setattr(threads_mod, "load_average", lambda: 0.0)


def digits_config(out, **kw):
    return resolve_config("digits", overrides={**TINY, "epochs": 3, "out": str(out), **kw})


def jsonl(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def csv_rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: (int(v) if k in ("epoch", "steps") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


# ------------------------------------------------------------------------------------ CSV, TensorBoard
def test_csv_rows_equal_metrics_jsonl_and_a_resumed_run_continues_them(tmp_path, capsys):
    out = tmp_path / "run"
    train(digits_config(out, stop_after=2, log=["csv"]), quiet=True)
    assert csv_rows(out) == jsonl(out) and len(jsonl(out)) == 2
    # continued from the command line: the csv continues with epoch 3, the same numbers as the jsonl
    assert main(["train", "--resume", str(out), "--threads", "1", "--progress", "none"]) == 0
    rows = csv_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows == jsonl(out)
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss,")
    # --log without csv writes none (metrics.jsonl is always written)
    capsys.readouterr()
    nocsv = tmp_path / "nocsv"
    assert main(["train", "--out", str(nocsv), *TINY_ARGV, "--epochs", "1", "--log", "jsonl"]) == 0
    assert not (nocsv / "metrics.csv").exists() and (nocsv / "metrics.jsonl").exists()
    assert main(["train", "--out", str(tmp_path / "x"), "--log", "wandb"]) == 2
    assert "expected some of jsonl, csv, tensorboard" in capsys.readouterr().err


def test_tensorboard_event_file_holds_the_scalars_of_every_epoch(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    # --log given twice (repeatable)
    assert main(["train", "--out", str(out), *TINY_ARGV, "--epochs", "3", "--stop-after", "2",
                 "--log", "csv", "--log", "tensorboard"]) == 0
    assert main(["train", "--resume", str(out), "--threads", "1", "--progress", "none"]) == 0
    records = jsonl(out)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/top1", "test/loss", "test/top1", "test/top5", "lr"} <= tags
    for tag, key in (("train/loss", "train_loss"), ("test/top1", "test_top1"), ("lr", "lr")):
        points = [(e.step, e.value) for e in acc.Scalars(tag)]
        # each epoch once across the two event files (the run and its continuation)
        assert [s for s, _ in points] == [1, 2, 3], tag
        assert [v for _, v in points] == pytest.approx([r[key] for r in records], rel=1e-6), tag
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    # --overwrite deletes the old run's event files with its other files
    assert main(["train", "--out", str(out), *TINY_ARGV, "--epochs", "1", "--overwrite"]) == 0
    assert not list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not (out / "previous.pt").exists()


def test_tensorboard_missing_is_one_line_before_any_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    with pytest.raises(MissingDependency, match="--log tensorboard needs tensorboard"):
        train(digits_config(tmp_path / "a", log=["tensorboard"]), quiet=True)
    assert not (tmp_path / "a").exists()
    assert main(["train", "--out", str(tmp_path / "b"), "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "pip install 'chanattn[tensorboard]'" in err


# ------------------------------------------------------------------------------------------ callbacks
class Recorder(Callback):
    """Every hook, in the order it fired; stops the run after ``stop_at``."""

    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_train_start(self, cfg, state):
        self.events.append(("start", state.epoch, cfg.epochs))

    def on_epoch_start(self, epoch):
        self.events.append(("epoch_start", epoch))

    def on_loss(self, epoch, step, loss):
        if step == 0:
            self.events.append(("loss", epoch, float(loss.detach()) > 0))
        return loss

    def on_epoch_end(self, epoch, record):
        self.events.append(("epoch_end", epoch, record["epoch"], "test_top1" in record))
        return epoch == self.stop_at

    def on_train_end(self, summary):
        self.events.append(("end", summary["epochs_done"], summary["stopped_by"]))


def test_a_user_callback_sees_every_epoch_and_can_stop_the_run(tmp_path):
    full = Recorder()
    summary = train(digits_config(tmp_path / "full"), callbacks=[full], quiet=True)
    assert summary["finished"] and summary["stopped_by"] is None
    assert full.events[0] == ("start", 0, 3) and full.events[-1] == ("end", 3, None)
    assert [e[1] for e in full.events if e[0] == "epoch_start"] == [1, 2, 3]
    assert [e[1:3] for e in full.events if e[0] == "epoch_end"] == [(1, 1), (2, 2), (3, 3)]
    assert full.events[1:4] == [("epoch_start", 1), ("loss", 1, True), ("epoch_end", 1, 1, True)]

    early = Recorder(stop_at=2)
    out = tmp_path / "early"
    summary = train(digits_config(out), callbacks=[early], quiet=True)
    assert (summary["epochs_done"], summary["finished"], summary["stopped_by"]) == (2, False, "Recorder")
    assert [e[1] for e in early.events if e[0] == "epoch_end"] == [1, 2] and len(jsonl(out)) == 2
    assert json.loads((out / "summary.json").read_text())["stopped_by"] == "Recorder"
    # the stopped run continues, and ends with the weights of the run that was not stopped
    later = Recorder()
    summary = train(digits_config(out), resume=str(out), callbacks=[later], quiet=True)
    assert later.events[0] == ("start", 2, 3) and summary["finished"] and len(jsonl(out)) == 3
    digest = json.loads((tmp_path / "full" / "summary.json").read_text())["weight_digests"]
    assert summary["weight_digests"] == digest


# ------------------------------------------------------------------------------------------- progress
class Terminal(io.StringIO):
    def isatty(self):
        return True


RECORD = {"epoch": 1, "train_loss": 0.5, "train_top1": 80.0, "test_loss": 0.4, "test_top1": 85.0,
          "test_top5": 99.0, "images_per_s": 1000.0, "epoch_time_s": 3.0}


def test_progress_bar_is_tqdm_on_a_terminal_and_falls_back(monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm is not installed")
    from chanattn.training import progress as progress_mod

    term = Terminal()
    p = progress_mod.Progress("bar", 1, 3, 10, stream=term)
    assert p._tqdm is not None
    p.update(5, 0.5, 80.0, 1000.0, 0.1)
    p.close(RECORD)
    text = term.getvalue()
    assert "epoch 1/3" in text and "5/10" in text and "loss 0.5000" in text  # tqdm's bar with our stats
    assert text.rstrip("\n").endswith("top-1 85.00% top-5 99.00% | 1,000 img/s, 0:03")  # the summary line
    # not a terminal: no tqdm, the bar of its own; auto picks log lines
    assert progress_mod.Progress("bar", 1, 3, 10, stream=io.StringIO())._tqdm is None
    assert progress_mod.Progress("auto", 1, 3, 10, stream=io.StringIO()).mode == "lines"
    log = io.StringIO()
    p = progress_mod.Progress("log", 1, 3, 10, interval=5, stream=log)
    assert p.wants_update(5) and not p.wants_update(4)
    p.update(5, 0.5, 80.0, 1000.0, 0.1)
    assert log.getvalue().startswith("epoch 1/3 step 5/10 loss 0.5000")
    # tqdm not installed: the bar of its own on the terminal
    monkeypatch.setattr(progress_mod, "_tqdm_class", lambda: None)
    term = Terminal()
    p = progress_mod.Progress("bar", 2, 3, 10, stream=term)
    p.update(5, 0.5, 80.0, 1000.0, 0.1)
    assert term.getvalue().startswith("\repoch 2/3 [############............] 5/10")


# ------------------------------------------------------------------------------ timm's augmentations
@pytest.fixture
def image_folder(tmp_path):
    """3 classes x 4 training images (16 x 20 noise around a class colour), 2 validation images each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for split, n in (("train", 4), ("val", 2)):
        for c, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(-40, 40, (16, 20, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return root


def folder_config(root, out, **kw):
    return resolve_config(None, overrides={
        "dataset": "imagefolder", "data_root": str(root), "image_size": 16, "arch": "resnet8",
        "model_kwargs": {"widths": [8, 8, 16]}, "epochs": 2, "batch_size": 4, "eval_batch_size": 8,
        "lr": 0.05, "milestones": [], "threads": 1, "progress": "none", "out": str(out), **kw})


def test_randaugment_mixup_cutmix_train_an_image_folder_and_resume_exactly(image_folder, tmp_path):
    pytest.importorskip("timm", reason="timm is not installed")
    kw = {"augment": "randaugment", "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1}
    py_state, np_state = random.getstate(), np.random.get_state()
    full = train(folder_config(image_folder, tmp_path / "full", **kw), quiet=True)
    records = jsonl(tmp_path / "full")
    assert full["finished"] and len(records) == 2
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["test_loss"]) for r in records)
    # soft targets with label smoothing: the loss cannot reach 0; plain CE would on 12 images
    assert records[-1]["train_loss"] > 0.1
    # the global generators that timm's transforms draw from are left as they were
    assert random.getstate() == py_state and np.all(np.random.get_state()[1] == np_state[1])
    # stopped after epoch 1 and continued: the weights of the uninterrupted run
    part = tmp_path / "part"
    train(folder_config(image_folder, part, stop_after=1, **kw), quiet=True)
    resumed = train(folder_config(image_folder, part, **kw), resume=str(part), quiet=True)
    assert resumed["weight_digests"] == full["weight_digests"]
    # without the timm transforms the same run trains other weights (they were in force)
    plain = train(folder_config(image_folder, tmp_path / "plain", label_smoothing=0.1), quiet=True)
    assert plain["weight_digests"] != full["weight_digests"]


def test_randaugment_changes_images_reproducibly(image_folder):
    pytest.importorskip("timm", reason="timm is not installed")
    from chanattn.data import load_data
    from chanattn.data.timm_augment import BatchMixup, RandAugment

    data = load_data("imagefolder", image_folder, image_size=16)
    images = data.train.images
    rand = RandAugment("rand-m9-mstd0.5", 16, data.spec.mean)
    a = rand(images, torch.Generator().manual_seed(1))
    b = rand(images, torch.Generator().manual_seed(1))
    c = rand(images, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, images)
    mix = BatchMixup(0.8, 0.0, 0.1, 3)
    x = torch.randn(4, 3, 16, 16)
    mixed, target = mix(x.clone(), torch.tensor([0, 1, 2, 0]), torch.Generator().manual_seed(0))
    assert target.shape == (4, 3) and torch.allclose(target.sum(1), torch.ones(4))
    assert target.min() >= 0.1 / 3 - 1e-6 and not torch.equal(mixed, x)
    with pytest.raises(ConfigError, match="not a timm RandAugment string"):
        RandAugment("rand-q9", 16, data.spec.mean)


def test_timm_transforms_are_refused_where_they_cannot_work(image_folder, tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="augment, mixup .*imagefolder data sets only, not 'digits'"):
        resolve_config("digits", overrides={"augment": "randaugment", "mixup": 0.2})
    with pytest.raises(ConfigError, match="augment must be randaugment or a timm RandAugment string"):
        resolve_config(None, overrides={"dataset": "imagefolder", "augment": "autoaugment"})
    assert resolve_config(None, overrides={"dataset": "imagefolder", "augment": "none"}).augment is None
    assert main(["train", "--out", str(tmp_path / "d"), "--cutmix", "1.0"]) == 2
    err = capsys.readouterr().err
    assert "cutmix (timm's transforms) work on imagefolder data sets only" in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match="batch per rank must be even, got 3"):
        train(folder_config(image_folder, tmp_path / "odd", mixup=0.5, batch_size=3), quiet=True)
    monkeypatch.setitem(sys.modules, "timm.data", None)  # timm absent
    with pytest.raises(ConfigError, match=r"timm is not installed \(pip install 'chanattn\[timm\]'\)"):
        train(folder_config(image_folder, tmp_path / "notimm", augment="randaugment"), quiet=True)


# ---------------------------------------------------------------------- the model's config in checkpoints
def test_checkpoints_carry_the_model_config_and_load_model_builds_from_it(image_folder, tmp_path):
    out = tmp_path / "run"
    train(folder_config(image_folder, out, epochs=1, attn="eca"), quiet=True)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    cfg = ckpt["model_config"]
    assert (cfg["arch"], cfg["attn"], cfg["num_classes"]) == ("resnet8", "eca", 3)
    assert cfg["input_size"] == [3, 16, 16] and cfg["classes"] == ["class0", "class1", "class2"]
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and cfg["model_kwargs"]["widths"] == [8, 8, 16]
    # load_model builds from model_config alone: the training config is not consulted
    ckpt["config"] = {"dataset": "imagefolder"}
    torch.save(ckpt, tmp_path / "only-model-config.pt")
    model = chanattn.load_model(tmp_path / "only-model-config.pt")
    assert model.chanattn_config["classes"] == ["class0", "class1", "class2"]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), chanattn.load_model(out)(x), rtol=0, atol=0)


def test_a_model_config_with_objects_is_not_recorded():
    from chanattn.training.trainer import run_model_config

    model = chanattn.create_model("resnet8", attn="se", in_chans=1, num_classes=10)
    assert run_model_config(model)["attn"] == "se"
    model.chanattn_config["attn_kwargs"] = {"act_layer": torch.nn.ReLU}  # a class: no JSON for it
    assert run_model_config(model) is None and run_model_config(torch.nn.Linear(2, 2)) is None
