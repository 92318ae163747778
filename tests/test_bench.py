"""``chanattn bench``: the records' fields and arithmetic, the memory counters, the timm counterparts,
the compiled columns, the model overhead table, the load warning (the rule itself: test_threads.py),
the command line and benchmarks/gpu.sh. Tiny shapes and few repeats; no timing comparisons."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import chanattn
from chanattn.bench.core import (
    FLOOR_PASSES,
    Timing,
    bench_module,
    formula_forward,
    parse_shapes,
    peak_bytes,
    saved_bytes,
    time_interleaved,
)
from chanattn.bench.models import bench_model, bench_models, default_batch
from chanattn.cli import build_parser, main
from chanattn.errors import ChanattnError
from chanattn.training.threads import busy_warning

FAST = dict(repeats=3, warmup=1, min_time_s=0.0005)
SHAPE = (2, 16, 8, 8)
TIMING_KEYS = ("ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "iters")


def test_timing_quantiles_from_samples():
    t = Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0], iters=7)
    assert (t.median_s, t.q1_s, t.q3_s, t.min_s, t.max_s) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert (t.iters, t.repeats) == (7, 5)
    assert Timing.from_samples([1.0, 2.0], 1).median_s == 1.5
    assert t.fields("x_")["x_ms"] == 3000.0


def test_time_interleaved_calls_and_rotates():
    order: list[str] = []
    fns = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    timings = time_interleaved(fns, repeats=4, warmup=2, min_time_s=0.0)
    # two warm-up calls each, the last timed for calibration (min_time 0 -> 1 call per repeat)
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]
    timed = order[6:]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    for t in timings.values():
        assert t.repeats == 4 and t.iters == 1 and 0 < t.min_s <= t.median_s <= t.max_s
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved(fns, repeats=0)


def test_peak_bytes_counts_live_tensors_created_by_the_call():
    def fn():
        a = torch.ones(256, 256)
        b = a * 2
        del a
        return b + 1  # a is gone when this is made: at most two 256 KiB tensors live at once

    assert peak_bytes(fn) == 2 * 256 * 256 * 4
    x = torch.randn(256, 256)
    assert peak_bytes(lambda: x.add_(1), [x]) == 0  # in place on a tensor that existed before


def test_saved_bytes_counts_tensors_kept_for_backward():
    x = torch.randn(64, 64, requires_grad=True)
    assert saved_bytes(lambda: x.exp().sum().backward(), [x]) == 64 * 64 * 4  # exp saves its result
    assert saved_bytes(lambda: (x * x).sum().backward(), [x]) == 0  # only x itself, excluded


def _check_timing(rec, prefix=""):
    for key in TIMING_KEYS:
        assert f"{prefix}{key}" in rec, key
    assert rec[f"{prefix}min_ms"] <= rec[f"{prefix}q1_ms"] <= rec[f"{prefix}ms"]
    assert rec[f"{prefix}ms"] <= rec[f"{prefix}q3_ms"] <= rec[f"{prefix}max_ms"]


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_module_record_fields_and_ratios(mode):
    pytest.importorskip("timm")
    rec = bench_module("se", SHAPE, mode=mode, vs_timm=True, **FAST)
    assert rec["note"] == ""
    assert (rec["module"], rec["shape"], rec["mode"], rec["device"]) == ("se", "2x16x8x8", mode, "cpu")
    assert rec["params"] == sum(p.numel() for p in chanattn.create("se", 16).parameters())
    assert rec["macs"] == 2 * (16 * 1 + 1 * 16)  # two 1x1 convs on the pooled (2, 16, 1, 1)
    assert rec["timm_params"] == rec["params"] and rec["timm_macs"] == rec["macs"]
    assert "SEModule(16, rd_channels=1)" in rec["timm_impl"]
    _check_timing(rec)
    _check_timing(rec, "timm_")
    assert rec["copy_ms"] > 0
    assert math.isclose(rec["floor_ms"], rec["copy_ms"] * FLOOR_PASSES[mode] / 2)
    assert math.isclose(rec["floor_ratio"], rec["ms"] / rec["floor_ms"])
    assert math.isclose(rec["timm_floor_ratio"], rec["timm_ms"] / rec["floor_ms"])
    assert math.isclose(rec["vs_timm"], rec["ms"] / rec["timm_ms"])  # from the medians
    out_mib = 2 * 16 * 8 * 8 * 4 / 2 ** 20
    assert rec["peak_mib"] >= out_mib  # at least the output
    if mode == "train":
        assert rec["peak_mib"] >= 2 * out_mib and rec["saved_mib"] > 0 and "timm_saved_mib" in rec
    else:
        assert "saved_mib" not in rec


def test_timm_failure_and_missing_counterpart_are_notes():
    pytest.importorskip("timm")
    rec = bench_module("ge_theta", (2, 16, 16, 16), vs_timm=True, **FAST)
    assert rec["note"].startswith("timm fails: TypeError")
    assert "ms" in rec and "vs_timm" not in rec and "timm_ms" not in rec
    rec = bench_module("ge_theta_minus", SHAPE, vs_timm=True, **FAST)  # timm builds this one
    assert rec["note"] == "" and rec["vs_timm"] > 0
    rec = bench_module("gct", SHAPE, vs_timm=True, **FAST)  # timm has no GCT
    assert rec["note"] == "" and rec["timm_impl"] == "" and "vs_timm" not in rec


def test_modules_that_cannot_take_the_shape_are_skipped_rows():
    rec = bench_module("fca", (2, 8, 8, 8), **FAST)
    assert rec["note"] == "skipped: needs C % 16 == 0, got C = 8" and "ms" not in rec
    rec = bench_module("se", SHAPE, max_call_s=1e-9, **FAST)
    assert rec["note"].startswith("skipped: one call takes")


# (name, options): the defaults, or the options under which timm computes the same function
COUNTERPARTS = [("se", {}), ("ese", {}), ("eca", {}), ("cbam", {}), ("cbam_channel", {}),
                ("cbam_spatial", {}), ("sk", {}), ("ge_theta_minus", {}), ("ceca", {}), ("gc", {}),
                ("gca", {}), ("lcbam", {}),
                ("coord", {}), ("scoord", {}), ("ela", dict(shared=False, num_groups=1, act_layer="silu")),
                ("strip", {}), ("splat", {}), ("bat", dict(bias=False, drop_rate=0.0))]


@pytest.mark.parametrize(("name", "options"), COUNTERPARTS, ids=[n for n, _ in COUNTERPARTS])
def test_timm_counterparts_compute_the_same_function(name, options):
    pytest.importorskip("timm")
    from chanattn.bench.timm_refs import timm_counterpart

    shape = (2, 64, 7, 7)
    ours = chanattn.create(name, 64, **options)
    theirs, desc = timm_counterpart(chanattn.module_info(name).name, ours, shape)
    assert desc.startswith("timm.layers.")
    s, d = theirs.state_dict(), ours.state_dict()
    assert [v.shape for v in s.values()] == [v.shape for v in d.values()]
    g = torch.Generator().manual_seed(1)
    ours.load_state_dict({k: torch.randn(v.shape, generator=g).abs() * 0.5 if v.is_floating_point() else v
                          for k, v in d.items()})
    theirs.load_state_dict(dict(zip(s, ours.state_dict().values())))
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-5, atol=1e-5)


def test_parse_shapes():
    assert parse_shapes("32x64x56x56, 2X3X4X5") == [(32, 64, 56, 56), (2, 3, 4, 5)]
    for bad in ("32x64", "32x64x0x7", "axbxcxd", ""):
        with pytest.raises(ChanattnError, match="--shapes expects"):
            parse_shapes(bad)


def _one_error_line(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("chanattn bench: error:"), err
    for needle in needles:
        assert needle in err, err


def test_cli_errors_are_one_line(capsys):
    _one_error_line(capsys, ["bench", "--modules", "se", "--shapes", "32x64"], "--shapes expects", "'32x64'")
    _one_error_line(capsys, ["bench", "--modules", "se,nosuch"], "unknown module 'nosuch'")
    _one_error_line(capsys, ["bench", "--models", "resnet9000"], "unknown", "resnet9000")
    _one_error_line(capsys, ["bench"], "--modules", "--models")
    _one_error_line(capsys, ["bench", "--modules", "se", "--out", "r.txt"], ".json or .csv")
    _one_error_line(capsys, ["bench", "--modules", "se", "--repeats", "0"], "--repeats")


def test_all_means_every_registered_module():
    from chanattn.cli.bench import _module_list

    assert _module_list("all") == chanattn.list_modules()
    assert _module_list("ese,se,ese") == ["ese", "se"]


FAST_ARGS = ["--repeats", "2", "--warmup", "0", "--min-time", "0.0005", "--threads", "1"]


def test_cli_writes_json_and_csv(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["bench", "--modules", "se,fca", "--shapes", "2x16x8x8,1x8x4x4", *FAST_ARGS,
                 "--out", str(path)]) == 0
    table = capsys.readouterr().out
    assert "x floor" in table and "skipped: needs C % 16 == 0" in table and "flop_counter" in table
    data = json.loads(path.read_text())
    assert {"cpu", "cores_usable", "torch", "threads", "device", "date"} <= set(data["machine"])
    assert data["machine"]["threads"] == 1 and data["settings"]["shapes"] == "2x16x8x8,1x8x4x4"
    assert [(r["module"], r["shape"]) for r in data["records"]] == [
        ("se", "2x16x8x8"), ("se", "1x8x4x4"), ("fca", "2x16x8x8"), ("fca", "1x8x4x4")]
    assert data["records"][0]["floor_ratio"] > 0 and data["records"][3]["note"].startswith("skipped")

    path = tmp_path / "sub" / "r.csv"
    assert main(["bench", "--modules", "eca", "--shapes", "2x16x8x8", "--mode", "train", *FAST_ARGS,
                 "--out", str(path)]) == 0
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 1 and rows[0]["module"] == "eca" and rows[0]["mode"] == "train"
    assert float(rows[0]["ms"]) > 0 and float(rows[0]["saved_mib"]) >= 0 and rows[0]["cpu"]


def test_models_bench(tmp_path, capsys):
    rec = bench_model("resnet8", "se", batch=2, repeats=2, warmup=0, min_time_s=0.0005)
    assert rec["note"] == "" and rec["attn"] == "se"
    assert rec["params"] == chanattn.models.count_params(chanattn.create_model("resnet8", attn="se"))
    assert rec["macs_per_image"] > 0
    for key in ("infer", "train"):
        _check_timing(rec, f"{key}_")
        assert math.isclose(rec[f"{key}_img_s"], 2 / (rec[f"{key}_ms"] / 1e3))
    path = tmp_path / "m.json"
    assert main(["bench", "--models", "resnet8", "--attn", "none,eca", "--batch", "2", *FAST_ARGS,
                 "--out", str(path)]) == 0
    assert "train img/s" in capsys.readouterr().out
    records = json.loads(path.read_text())["records"]
    assert [(r["model"], r["attn"]) for r in records] == [("resnet8", "none"), ("resnet8", "eca")]


def test_vs_timm_without_timm_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "timm.layers", None)  # makes the import fail
    _one_error_line(capsys, ["bench", "--modules", "se", "--vs", "timm"], "--vs timm needs timm")
    _one_error_line(capsys, ["bench", "--models", "resnet8", "--vs", "timm"], "--vs timm needs timm")


# ------------------------------------------------------------------------- shared machines, threads
def test_bench_warns_and_takes_one_thread_under_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # a simulated busy machine
    path = tmp_path / "r.json"
    assert main(["bench", "--modules", "eca", "--shapes", "2x16x8x8", "--repeats", "2", "--warmup", "0",
                 "--min-time", "0.0005", "--out", str(path)]) == 0
    cap = capsys.readouterr()
    warnings = [line for line in cap.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("chanattn bench: warning: the 1-minute load average")
    machine = json.loads(path.read_text())["machine"]
    assert machine["load_warning"] == busy_warning(machine["cores_usable"], 9.0)  # the one text
    assert machine["threads"] == 1 and machine["threads_from"].startswith("chosen")
    assert "1 torch thread (chosen from" in cap.out and "warning: the 1-minute" in cap.out


# ---------------------------------------------------------------------------------- torch.compile
def test_formula_forward_runs_the_formula():
    # the bench's formula column is the module under fast_paths(False): bit for bit the formula,
    # and explain() says no fast implementation runs inside the scope
    torch.manual_seed(0)
    cbam = chanattn.create("cbam", 16).eval()
    x = torch.randn(2, 16, 8, 8)
    fn, scope, how = formula_forward(cbam)
    assert fn is cbam and how == "chanattn.fast_paths(False)"
    with scope(), torch.no_grad():
        got = fn(x)
        assert str(chanattn.explain(cbam, x)).splitlines()[0].endswith(": formula")
    with chanattn.fast_paths(False), torch.no_grad():
        want = cbam(x)
    assert torch.equal(got, want)


def test_compile_columns_with_inductor(tmp_path, capsys):
    pytest.importorskip("timm")
    path = tmp_path / "c.json"
    assert main(["bench", "--modules", "se", "--shapes", "2x16x8x8", "--vs", "timm", "--compile",
                 *FAST_ARGS, "--out", str(path)]) == 0
    out = capsys.readouterr().out
    for header in ("formula ms", "compiled ms", "compile s", "ours/comp", "timm comp ms", "timm ms"):
        assert header in out, header
    assert "torch.compile(backend='inductor')" in out
    rec = json.loads(path.read_text())["records"][0]
    assert rec["note"] == "" and rec["formula_impl"] in ("forward_reference", "chanattn.fast_paths(False)")
    for prefix in ("", "formula_", "compiled_", "timm_", "timm_compiled_"):
        _check_timing(rec, prefix)
    assert rec["compile_s"] > 0 and rec["timm_compile_s"] > 0
    assert math.isclose(rec["vs_compiled"], rec["ms"] / rec["compiled_ms"])


def _failing_compile(*args, **kwargs):
    def run(*a, **k):
        raise RuntimeError("inductor: no C++ compiler\nsecond line")

    return run


def test_a_module_that_fails_to_compile_is_a_note(monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setattr(torch, "compile", _failing_compile)
    rec = bench_module("se", SHAPE, vs_timm=True, compile=True, **FAST)
    assert "compile fails: RuntimeError: inductor: no C++ compiler" in rec["note"]
    assert "timm compile fails: RuntimeError" in rec["note"]
    assert "formula_ms" in rec and "ms" in rec and "timm_ms" in rec  # eager parts still measured
    assert "compiled_ms" not in rec and "timm_compiled_ms" not in rec and "vs_compiled" not in rec


# --------------------------------------------------------------------------------- model overhead
def test_model_overhead_records_ours_timm_eager_compiled():
    pytest.importorskip("timm")
    recs = bench_models("resnet8", ["none", "se", "sk"], batch=2, vs_timm=True, compile=True,
                        compile_backend="eager", repeats=2, warmup=0, min_time_s=0.0005)
    key = [(r["attn"], r["impl"], r["exec"]) for r in recs]
    # timm has no ResNet-8 (timm's se is swapped into ours, over our backbone) and no model-level sk
    assert key == [(a, i, e) for e in ("eager", "compiled")
                   for a, i in (("none", "ours"), ("se", "ours"), ("se", "timm"), ("sk", "ours"))]
    by = {k: r for k, r in zip(key, recs)}
    for r in recs:
        assert r["note"] == "" and r["batch"] == 2 and r["backbone"] == "chanattn resnet8"
        for task in ("infer", "train"):
            _check_timing(r, f"{task}_")
            base_ms = by[("none", "ours", r["exec"])][f"{task}_ms"]
            assert math.isclose(r[f"{task}_overhead"], (r[f"{task}_ms"] - base_ms) / base_ms)
        assert ((r.get("compile_s") or 0) > 0) == (r["exec"] == "compiled")
    assert by[("none", "ours", "eager")]["train_overhead"] == 0
    assert by[("se", "timm", "eager")]["params"] == by[("se", "ours", "eager")]["params"]
    assert "swapped for timm's counterpart" in by[("se", "timm", "eager")]["impl_desc"]


def test_timm_resnet_with_our_modules_settings():
    pytest.importorskip("timm")
    from timm.layers import SEModule

    from chanattn.bench.models import _timm_variant

    ours = chanattn.create_model("resnet18", attn="se")
    theirs, desc = _timm_variant("resnet18", "se", ours, (3, 224, 224), 1000)
    assert "block_args" in desc
    count = chanattn.models.count_params
    assert count(theirs) == count(ours)  # same backbone, same SE hidden widths
    ses = [m for m in theirs.modules() if isinstance(m, SEModule)]
    assert len(ses) == 8 and [m.fc1.out_channels for m in ses] == [
        m.rd_channels for m in ours.modules() if isinstance(m, chanattn.module_info("se").cls)]
    assert default_batch("resnet50") == 16 and default_batch("resnet20") == 128


def test_a_model_that_fails_to_compile_is_a_note(monkeypatch):
    monkeypatch.setattr(torch, "compile", _failing_compile)
    recs = bench_models("resnet8", ["none", "eca"], batch=2, compile=True, repeats=2, warmup=0,
                        min_time_s=0.0005)
    eager = [r for r in recs if r["exec"] == "eager"]
    compiled = [r for r in recs if r["exec"] == "compiled"]
    assert all(r["note"] == "" and "train_ms" in r for r in eager)
    assert all(r["note"].startswith("compile fails: RuntimeError") and "train_ms" not in r for r in compiled)
    assert "train_overhead" in eager[1] and "train_overhead" not in compiled[1]


def test_models_cli_overhead_table(tmp_path, capsys):
    path = tmp_path / "m.json"
    assert main(["bench", "--models", "resnet8", "--attn", "none,eca", "--batch", "2", "--compile",
                 "--compile-backend", "eager", *FAST_ARGS, "--out", str(path)]) == 0
    out = capsys.readouterr().out
    for header in ("impl", "exec", "+infer", "+train", "compile s", "train img/s"):
        assert header in out, header
    assert "+0.0%" in out  # the backbone's own row
    records = json.loads(path.read_text())["records"]
    assert [(r["attn"], r["exec"]) for r in records] == [
        ("none", "eager"), ("eca", "eager"), ("none", "compiled"), ("eca", "compiled")]


# ---------------------------------------------------------------------------------- benchmarks/*.sh
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu.sh", "run_all.sh"])
def test_benchmark_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], check=True)


def test_run_all_regenerates_every_results_file():
    """run_all.sh (PRINT_ONLY prints its commands) writes exactly the CPU files of benchmarks/results, with
    valid bench commands, and THREADS=2 (the committed results' setting) reaches every command."""
    results = ROOT / "benchmarks" / "results"
    env = {**os.environ, "PRINT_ONLY": "1", "THREADS": "2", "PYTHON": "python"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_all.sh")], capture_output=True, text=True,
                          env=env, check=True)
    written = set()
    for line in done.stdout.splitlines():
        argv = shlex.split(line)
        if "|" in argv:  # ... | tee OUT/NAME.txt
            argv, tee = argv[:argv.index("|")], argv[argv.index("|") + 1:]
            assert tee[0] == "tee"
            written.add(Path(tee[1]))
        assert argv[argv.index("--threads") + 1] == "2", line
        if argv[1:3] == ["-m", "chanattn"]:
            args = build_parser().parse_args(argv[3:])
            assert args.command == "bench" and args.device == "cpu"
            written.add(Path(args.out))
        elif argv[1].endswith("model_overhead.py"):
            out_dir = Path(argv[argv.index("--out-dir") + 1])
            written |= {out_dir / "model_overhead_cpu.json", out_dir / "model_overhead_cpu.txt"}
        elif argv[1].endswith("fast_paths.py"):
            written.add(Path(argv[argv.index("--out") + 1]))
        else:
            assert argv[1].endswith("cbam_native.py"), line
    assert {p.parent for p in written} == {Path("benchmarks/results")}
    cpu_files = [p.name for p in results.iterdir() if "_cuda." not in p.name]  # gpu.sh writes *_cuda.*
    assert sorted(p.name for p in written) == sorted(cpu_files)


def test_gpu_script_commands_are_valid_bench_commands():
    """gpu.sh's commands (PRINT_ONLY prints them) parse as chanattn commands, on CUDA and at the tiny
    CPU settings of its dry run."""
    for env in ({}, {"DRY_RUN": "1"}):
        done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True,
                              env={**os.environ, "PRINT_ONLY": "1", "PYTHON": "python", **env}, check=True)
        commands = [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]
        assert len(commands) == 5
        outs = []
        device = "cpu" if env else "cuda"
        for argv in commands:
            assert argv[1:3] == ["-m", "chanattn"]
            args = build_parser().parse_args(argv[3:])
            assert args.command == "bench" and args.vs == "timm" and args.out.endswith(".json")
            assert args.device == device
            outs.append(Path(args.out).name)
        assert outs == [f"modules_infer_{device}.json", f"modules_train_{device}.json",
                        f"modules_compile_infer_{device}.json", f"modules_compile_train_{device}.json",
                        f"model_overhead_{device}.json"]


def test_gpu_script_dry_run_runs_its_commands_on_the_cpu(tmp_path):
    """DRY_RUN=1 runs gpu.sh's five steps on the CPU at tiny sizes and checks what they wrote; no GPU
    needed. (~40 s on the idle 2-core machine: five bench start-ups and two small compiles.)"""
    results = ROOT / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "PYTHON": sys.executable},
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gpu.sh: dry run passed: 5 steps" in done.stdout
    names = ["modules_infer", "modules_train", "modules_compile_infer", "modules_compile_train",
             "model_overhead"]
    for name in names:
        data = json.loads((tmp_path / f"{name}_cpu.json").read_text())
        assert data["records"] and data["machine"]["device"] == "cpu" and not data.get("interrupted")
    overhead = json.loads((tmp_path / "model_overhead_cpu.json").read_text())["records"]
    assert {(r["model"], r["attn"]) for r in overhead} == {("resnet8", "none"), ("resnet8", "se")}
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before  # results untouched
