"""Training, checkpoints, resume, eval, compare and distributed training on the embedded digits."""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import signal
import subprocess
import sys

import pytest
import torch

from chanattn.cli import main
from chanattn.errors import ChanattnError, CheckpointError
from chanattn.training import (
    RECIPES,
    TrainConfig,
    TrainingDiverged,
    load_checkpoint,
    lr_at,
    param_groups,
    resolve_config,
    run_compare,
    train,
)
from chanattn.training.checkpoint import atomic_save, save_checkpoint

# a small, fast model: resnet8 at widths 8-8-16 on 8x8 digits
TINY = {
    "arch": "resnet8",
    "model_kwargs": {"widths": [8, 8, 16]},
    "batch_size": 128,
    "eval_batch_size": 512,
    "threads": 1,
    "progress": "none",
}


def tiny_config(out, **kw) -> TrainConfig:
    return resolve_config("digits", overrides={**TINY, "epochs": 2, "out": str(out), **kw})


def run_session(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a new session whose every process (torchrun's workers too) is killed
    when it runs past ``timeout``."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def digest(run_dir) -> str:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)["weight_digests"][0]


# ------------------------------------------------------------------------------------------- config
def test_recipes_match_the_references():
    cifar = resolve_config("cifar")
    assert (cifar.epochs, cifar.lr, cifar.momentum, cifar.weight_decay, cifar.batch_size) == (
        160,
        0.1,
        0.9,
        1e-4,
        128,
    )
    assert cifar.schedule == "multistep" and cifar.milestones == [120, 140] and cifar.gamma == 0.1
    assert resolve_config("c3-cifar10").milestones == [100, 140]
    srm = resolve_config("srm-resnet32")
    assert (srm.arch, srm.epochs, srm.milestones) == ("resnet32", 100, [70, 80])
    assert set(RECIPES) >= {"cifar", "cifar100", "c3-cifar10", "srm-resnet32", "digits"}


def test_config_file_and_overrides(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("epochs: 7\nlr: 0.2\nattn: eca\nattn_kwargs: {kernel_size: 5}\n")
    cfg = resolve_config("cifar", yml, {"lr": 0.3})
    assert (cfg.epochs, cfg.lr, cfg.attn, cfg.attn_kwargs, cfg.weight_decay) == (
        7,
        0.3,
        "eca",
        {"kernel_size": 5},
        1e-4,
    )
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"optimizer": "adamw", "schedule": "cosine"}))
    assert resolve_config(None, js).optimizer == "adamw"
    with pytest.raises(ChanattnError, match="unknown field.*lerning_rate"):
        resolve_config(None, None, {"lerning_rate": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ChanattnError, match="not valid YAML"):
        resolve_config(None, bad)
    with pytest.raises(ChanattnError, match="does not exist"):
        resolve_config(None, tmp_path / "missing.yaml")
    with pytest.raises(ChanattnError, match="unknown recipe"):
        resolve_config("imagenet-1k")
    with pytest.raises(ChanattnError, match="nesterov needs"):
        resolve_config(None, None, {"optimizer": "adamw", "nesterov": True})
    with pytest.raises(ChanattnError, match="milestones must increase"):
        resolve_config(None, None, {"milestones": [140, 120]})


def test_lr_schedules():
    cfg = resolve_config("cifar")
    spe = 10
    assert lr_at(cfg, 0, spe) == pytest.approx(0.1)
    assert lr_at(cfg, 119 * spe + 9, spe) == pytest.approx(0.1)
    assert lr_at(cfg, 120 * spe, spe) == pytest.approx(0.01)
    assert lr_at(cfg, 140 * spe, spe) == pytest.approx(0.001)
    cos = resolve_config(
        None, None, {"schedule": "cosine", "epochs": 10, "lr": 1.0, "warmup_epochs": 2, "warmup_factor": 0.0}
    )
    assert lr_at(cos, 0, spe) == pytest.approx(0.0)
    assert lr_at(cos, spe, spe) == pytest.approx(0.5)  # half-way through the warm-up
    assert lr_at(cos, 2 * spe, spe) == pytest.approx(1.0)  # peak after the warm-up
    assert lr_at(cos, 6 * spe, spe) == pytest.approx(0.5)  # cosine half-way
    assert lr_at(cos, 10 * spe, spe) == pytest.approx(0.0, abs=1e-12)
    step = resolve_config(None, None, {"schedule": "step", "step_size": 3, "gamma": 0.5, "lr": 1.0})
    assert [lr_at(step, e * spe, spe) for e in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]


def test_weight_decay_exclusions():
    import chanattn

    model = chanattn.create_model("resnet8", attn="srm", in_chans=1)
    groups = param_groups(model, 1e-4, decay_norm_and_bias=True)
    no_decay = {id(p) for p in groups[1]["params"]}
    srm_params = [p for n, p in model.named_parameters() if ".attn." in n or "srm" in n.lower()]
    names = dict(model.named_parameters())
    skip = set(chanattn.no_weight_decay_names(model))
    assert skip and all(id(names[n]) in no_decay for n in skip)  # SRM's parameters take no decay
    assert srm_params
    conv = next(p for n, p in model.named_parameters() if p.ndim == 4)
    assert id(conv) not in no_decay
    bn_bias = next(p for n, p in model.named_parameters() if p.ndim == 1 and n not in skip)
    assert id(bn_bias) not in no_decay  # the references decay norms and biases
    groups = param_groups(model, 1e-4, decay_norm_and_bias=False)
    assert id(bn_bias) in {id(p) for p in groups[1]["params"]} and groups[1]["weight_decay"] == 0.0
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- training
def test_train_writes_the_run_and_learns(tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(out, attn="se", epochs=3))
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "previous.pt", "best.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert {"train_loss", "test_top1", "test_top5", "test_loss", "lr", "images_per_s"} <= set(lines[0])
    assert summary["finished"] and summary["final_top1"] == lines[-1]["test_top1"]
    assert lines[-1]["test_top1"] > 40.0  # chance is 10 %: it learns
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["config"]["attn"] == "se" and "optimizer" in ckpt and "rng" in ckpt
    assert load_checkpoint(out / "previous.pt")["epoch"] == 2
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["attn"] == "se" and saved["epochs"] == 3 and saved["recipe"] == "digits"


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    full = tmp_path / "full"
    train(tiny_config(full, attn="eca", epochs=3))
    part = tmp_path / "part"
    first = train(tiny_config(part, attn="eca", epochs=3, stop_after=1))
    assert not first["finished"] and first["epochs_done"] == 1
    cfg = resolve_config(None, None, {"threads": 1, "progress": "none"})
    resumed = train(cfg, resume=str(part))
    assert resumed["finished"] and digest(part) == digest(full)
    a = (full / "metrics.jsonl").read_text().splitlines()
    b = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["test_top1"] for x in a] == [json.loads(x)["test_top1"] for x in b]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """Kill the process (SIGKILL) in the middle of epoch 2; resume; compare with a run never killed."""
    full = tmp_path / "full"
    train(tiny_config(full, epochs=3))
    run = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "chanattn",
        "train",
        "--recipe",
        "digits",
        "--epochs",
        "3",
        "--out",
        str(run),
        "--model-kwargs",
        '{"widths": [8, 8, 16]}',
        "--batch-size",
        "128",
        "--threads",
        "1",
        "--progress",
        "none",
    ]
    env = {**os.environ, "CHANATTN_FAULT": "kill@2.5"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert main(["train", "--resume", str(run), "--threads", "1", "--progress", "none"]) == 0
    assert digest(run) == digest(full)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "nan"
    monkeypatch.setenv("CHANATTN_FAULT", "nan@2.3")
    with pytest.raises(TrainingDiverged, match=r"NaN/Inf at epoch 2.*last good checkpoint .*epoch 1"):
        train(tiny_config(out, epochs=3))
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_unwritable_output_is_reported_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["train", "--epochs", "1", "--out", str(blocker / "run"), "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot create the output directory" in err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not apply
            pytest.skip("the test user can write to read-only directories (root)")
        with pytest.raises(ChanattnError, match="not writable"):
            train(tiny_config(ro, epochs=1))
        assert not (ro / "metrics.jsonl").exists()
    finally:
        ro.chmod(0o700)


def test_disk_space_check(tmp_path, monkeypatch):
    import shutil

    from chanattn.training import trainer

    monkeypatch.setattr(trainer.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1024))
    with pytest.raises(ChanattnError, match="MiB free; the checkpoints of this run need"):
        train(tiny_config(tmp_path / "full_disk", epochs=1))


# ------------------------------------------------------------------------------------- checkpoints
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_refuse_pickles_and_report_corruption(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "chanattn-checkpoint", "version": 1, "model": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": "chanattn-checkpoint", "version": 1, "x": Payload()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not (tmp_path / "pwned").exists()

    good = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "model": {"w": torch.ones(1000)}}, good)
    save_checkpoint({"epoch": 2, "model": {"w": torch.ones(1000)}}, good)
    assert load_checkpoint(tmp_path / "previous.pt")["epoch"] == 1
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(good)
    assert load_checkpoint(tmp_path / "previous.pt")["epoch"] == 1  # the one before is intact
    # random bytes: every failure of the parser is reported as a corrupt checkpoint (about 6 % of
    # random files reach an IndexError inside torch's unpickler)
    rng = random.Random(0)
    for _ in range(200):
        (tmp_path / "garbage.pt").write_bytes(rng.randbytes(3000))
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "garbage.pt")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a chanattn checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.zeros(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"a": torch.ones(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


# --------------------------------------------------------------------------------------- commands
def test_eval_command(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(out, epochs=1))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--json"]) == 0
    text = capsys.readouterr().out.splitlines()
    result = json.loads(text[-1])
    assert "top-1" in text[0] and "top-5" in text[0]
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["top1"] == pytest.approx(metrics["test_top1"])
    assert result["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert result["examples"] == 360


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--arch", "resnet9", "--out", "X"], "unknown architecture 'resnet9'"),
        (["train", "--attn", "sqeeze", "--out", "X"], "unknown"),
        (["train", "--epochs", "0", "--out", "X"], "epochs must be"),
        (
            ["train", "--dataset", "cifar10", "--data-root", "{tmp}/nodata", "--out", "X"],
            "cifar-10-python.tar.gz",
        ),
        (["train", "--resume", "{tmp}/nothing"], "no such run directory"),
        (["train", "--resume", "{tmp}", "--lr", "0.5"], "would change it: --lr"),
        (["train", "--amp", "fp16", "--device", "cpu", "--out", "X"], "fp16 needs a CUDA"),
        (["eval", "--checkpoint", "{tmp}/missing.pt"], "does not exist"),
        (["compare", "--modules", "se,nosuch", "--out", "X"], "unknown"),
        (["compare", "--seeds", "0", "--out", "X"], "--seeds: expected a positive int, got '0'"),
    ],
)
def test_command_errors_are_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("X", str(tmp_path / "out")) for a in argv]
    rc = main([*argv, "--progress", "none"] if argv[0] == "train" and "--resume" not in argv else argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_compare_writes_table_plots_and_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    base = tiny_config(out, epochs=1)
    logs: list[str] = []
    results = run_compare(base, ["se", "eca"], [0, 1], str(out), latency_repeats=3, log=logs.append)
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == ["module", "params", "macs", "top1_mean", "top1_std", "seeds", "latency_ms"]
    assert [r["module"] for r in rows] == ["none", "se", "eca"]
    assert all(int(r["seeds"]) == 2 and float(r["latency_ms"]) > 0 and int(r["params"]) > 0 for r in rows)
    none, se = results["rows"][0], results["rows"][1]
    assert se["params"] > none["params"] and se["macs"] >= none["macs"]
    top = [
        json.loads((out / "runs" / "se" / f"seed{s}" / "summary.json").read_text())["final_top1"]
        for s in (0, 1)
    ]
    assert se["top1"] == top and float(rows[1]["top1_mean"]) == pytest.approx(sum(top) / 2, abs=1e-3)
    assert se["latency_train_batch_ms"] > 0
    for name in ("table.md", "results.json", "top1_vs_params.png", "top1_vs_latency.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "top1_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "table.md").read_text()
    assert "| se |" in md and "±" in md
    # run again: nothing is retrained
    logs.clear()
    again = run_compare(
        base, ["se", "eca"], [0, 1], str(out), latency_repeats=3, plots=False, log=logs.append
    )
    assert "6 runs already finished, 0 to train" in logs[0]
    assert [r["top1"] for r in again["rows"]] == [r["top1"] for r in results["rows"]]
    # other settings into the same directory are refused
    with pytest.raises(ChanattnError, match="other settings"):
        run_compare(tiny_config(out, epochs=2), ["se"], [0], str(out), log=logs.append)


def test_compare_resumes_an_interrupted_pair(tmp_path):
    out = tmp_path / "cmp"
    base = tiny_config(out, epochs=2)
    # an interrupted pair: one epoch of two done, as a killed compare leaves it
    train(tiny_config(out / "runs" / "none" / "seed0", epochs=2, stop_after=1))
    logs: list[str] = []
    run_compare(base, [], [0], str(out), latency_repeats=2, plots=False, log=logs.append)
    summary = json.loads((out / "runs" / "none" / "seed0" / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_done"] == 2
    full = tmp_path / "full"
    train(tiny_config(full, epochs=2))
    assert digest(out / "runs" / "none" / "seed0") == digest(full)


def test_compare_cli_prints_the_table(tmp_path, capsys):
    out = tmp_path / "c"
    rc = main(
        [
            "compare",
            "--modules",
            "se",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--threads",
            "1",
            "--model-kwargs",
            '{"widths": [8, 8, 16]}',
            "--latency-repeats",
            "2",
            "--no-plots",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "module" in captured.out and "\nse " in captured.out and "table.csv" in captured.out
    assert (out / "table.csv").is_file() and not (out / "top1_vs_params.png").exists()


# ------------------------------------------------------------------------------------- distributed
def test_torchrun_two_cpu_processes(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): both ranks end with the same weights and metrics; a run
    whose workers are killed (SIGKILL) in epoch 2 and restarted by torchrun (--max-restarts 1, the
    same command with --resume auto) ends with the same weights (SHA-256) and each epoch once."""
    out = tmp_path / "ddp"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    args = [
        *torchrun,
        "-m",
        "chanattn",
        "train",
        "--recipe",
        "digits",
        "--attn",
        "se",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--model-kwargs",
        '{"widths": [8, 8, 16]}',
        "--batch-size",
        "128",
        "--threads",
        "1",
        "--progress",
        "lines",
        "--log-interval",
        "100",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_session(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    assert len(summary["weight_digests"]) == 2 and summary["ranks_in_sync"]
    timing = {"images_per_s", "epoch_time_s"}
    r0, r1 = ({k: v for k, v in m.items() if k not in timing} for m in summary["rank_metrics"])
    assert r0 == r1 and len(r0) == 8  # loss, accuracy, lr, steps: the same numbers on both ranks
    assert r0["test_top1"] > 20.0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes
    # the evaluation covered every test image exactly once across the ranks
    from chanattn.training import evaluate_checkpoint

    result = evaluate_checkpoint(str(out / "last.pt"), device="cpu")
    assert result["top1"] == pytest.approx(json.loads(lines[-1])["test_top1"])
    assert proc.stdout.count("finished:") == 1

    elastic = tmp_path / "elastic"
    restart = [*torchrun, "--max-restarts", "1", *args[len(torchrun):]]
    restart[restart.index(str(out))] = str(elastic)
    env = {**env, "CHANATTN_FAULT": "kill@2.3"}  # fires in the first attempt only
    proc = run_session([*restart, "--resume", "auto"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exitcode: -9" in proc.stderr and "resume " in proc.stderr  # killed, then resumed
    assert digest(elastic) == digest(out) == summary["weight_digests"][0]
    assert [json.loads(x)["epoch"] for x in (elastic / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# ------------------------------------------------------------------------- other data and options
def test_train_on_a_cifar_archive_and_an_image_folder(tmp_path, monkeypatch, capsys):
    """The CIFAR path end to end (a tiny archive in the real format) and a user's image folder."""
    import dataclasses

    from chanattn.data import CIFAR_SOURCES
    from test_data import _md5, make_cifar

    archive, _ = make_cifar(tmp_path, "cifar10", per_file=8)
    monkeypatch.setitem(
        CIFAR_SOURCES, "cifar10", dataclasses.replace(CIFAR_SOURCES["cifar10"], md5=_md5(archive))
    )
    rc = main(
        [
            "train",
            "--recipe",
            "cifar",
            "--dataset",
            "cifar10",
            "--data-root",
            str(tmp_path),
            "--arch",
            "resnet8",
            "--model-kwargs",
            '{"widths": [4, 4, 8]}',
            "--attn",
            "eca",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "c10"),
            "--progress",
            "none",
            "--threads",
            "1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "c10" / "metrics.jsonl").read_text())
    assert record["steps"] == 5 and 0 <= record["test_top1"] <= 100  # 40 train images / 8
    assert load_checkpoint(tmp_path / "c10" / "last.pt")["config"]["milestones"] == [120, 140]

    from PIL import Image

    for split, n in (("train", 6), ("val", 2)):
        for cls, colour in (("red", (250, 10, 10)), ("blue", (10, 10, 250))):
            for i in range(n):
                path = tmp_path / "folder" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20, 14), colour).save(path)
    summary = train(
        resolve_config(
            None,
            None,
            {
                "dataset": "imagefolder",
                "data_root": str(tmp_path / "folder"),
                "image_size": 16,
                "arch": "plain_cnn",
                "epochs": 3,
                "batch_size": 4,
                "lr": 0.05,
                "schedule": "constant",
                "out": str(tmp_path / "if"),
                "progress": "none",
                "threads": 1,
            },
        )
    )
    assert summary["finished"] and summary["final_top1"] is not None
    assert json.loads((tmp_path / "if" / "metrics.jsonl").read_text().splitlines()[0])["steps"] == 3


def test_training_options_are_wired(tmp_path):
    """AdamW, cosine with warm-up, label smoothing, channels_last, bf16 autocast, gradient clipping,
    no decay on norms and biases: a run with all of them learns and records them."""
    summary = train(
        tiny_config(
            tmp_path / "opts",
            epochs=2,
            optimizer="adamw",
            lr=1e-2,
            weight_decay=0.05,
            schedule="cosine",
            warmup_epochs=0.5,
            label_smoothing=0.1,
            channels_last=True,
            amp="bf16",
            grad_clip=1.0,
            decay_norm_and_bias=False,
            attn="cbam",
        )
    )
    assert summary["finished"] and summary["final_top1"] > 15.0
    ckpt = load_checkpoint(tmp_path / "opts" / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and "betas" in groups[0]
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "opts" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] < 1e-4 < lrs[0]  # cosine to zero


def test_progress_bar_and_lines(tmp_path):
    import io

    from chanattn.training.progress import Progress, format_duration

    assert format_duration(59.6) == "1:00" and format_duration(3725) == "1:02:05"
    buf = io.StringIO()
    p = Progress("lines", 1, 3, 10, interval=5, stream=buf)
    assert not p.wants_update(4) and p.wants_update(5)
    p.update(5, 0.5, 80.0, 1000.0, 0.1)
    p.close(
        {
            "epoch": 1,
            "train_loss": 0.5,
            "train_top1": 80.0,
            "test_loss": 0.4,
            "test_top1": 85.0,
            "test_top5": 99.0,
            "images_per_s": 1000.0,
            "epoch_time_s": 3.0,
        }
    )
    lines = buf.getvalue().splitlines()
    assert "epoch 1/3 step 5/10" in lines[0] and "img/s" in lines[0] and "ETA" in lines[0]
    assert "top-1 85.00%" in lines[1]
    bar = io.StringIO()
    p = Progress("bar", 2, 3, 10, stream=bar)
    p.update(5, 0.5, 80.0, 1000.0, 0.1)
    assert bar.getvalue().startswith("\repoch 2/3 [############............] 5/10")


def test_corrupt_last_checkpoint_points_to_previous_and_resumes_from_it(tmp_path, capsys):
    full = tmp_path / "full"
    train(tiny_config(full, epochs=3))
    run = tmp_path / "run"
    train(tiny_config(run, epochs=3, stop_after=2))
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a disk fault after the write
    capsys.readouterr()
    rc = main(["train", "--resume", str(run), "--threads", "1", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "truncated or corrupt" in err and f"--resume {run / 'previous.pt'}" in err and "(epoch 1)" in err
    assert main(["train", "--resume", str(run / "previous.pt"), "--threads", "1", "--progress", "none"]) == 0
    assert (run / "last.pt.corrupt").exists() and load_checkpoint(run / "previous.pt")["epoch"] == 2
    assert digest(run) == digest(full)


def test_debug_flag_internal_errors_and_interrupts(tmp_path, capsys, monkeypatch):
    """Without --debug every error is one line; with it the traceback comes through. An unexpected
    exception is still one line (exit 1) and Ctrl-C says how to continue (exit 130)."""
    argv = ["train", "--arch", "resnet9", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    with pytest.raises(ValueError, match="resnet9"):
        main(["--debug", *argv])
    capsys.readouterr()

    from chanattn.training import trainer

    def boom(*a, **k):
        raise RuntimeError("simulated failure\ndeep inside")

    monkeypatch.setattr(trainer, "train", boom)
    assert main(["train", "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: simulated failure deep inside" in err
    assert "--debug" in err

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    assert main(["train", "--out", str(tmp_path / "z")]) == 130
    # the hint works before the first checkpoint too (tests/test_runs.py runs it)
    hint = "interrupted (to continue, run the same command with --resume auto added)"
    assert hint in capsys.readouterr().err
