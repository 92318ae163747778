"""``chanattn compare``'s measurement and reporting: the latency spread from the bench's timer, the
interval of each module's difference from the baseline, the wording of tables and plots with one
seed and without a baseline, compare.json after a failure, and the load warning. Run as users run
it, on the embedded digits with a tiny ResNet-8 and one epoch; no timing assertions."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
import torch

from chanattn.bench.core import Timing
from chanattn.cli import main
from chanattn.training import resolve_config, run_compare
from chanattn.training.compare import (
    TABLE_COLUMNS,
    diff_interval,
    measure_latency,
    plot_text,
    t_cdf,
    t_quantile,
)
from chanattn.training.threads import busy_warning, usable_cores

TINY = ["--epochs", "1", "--threads", "1", "--model-kwargs", '{"widths": [8, 8, 16]}',
        "--latency-repeats", "3"]


def compare(tmp_path, capsys, *argv):
    out = tmp_path / "c"
    rc = main(["compare", "--out", str(out), *TINY, *argv])
    cap = capsys.readouterr()
    return rc, out, cap


def test_t_quantiles_match_the_table():
    # upper critical values t(0.975, df) and t(0.95, df) of Student's t: NIST/SEMATECH e-Handbook of
    # Statistical Methods, table 1.3.6.7.2 (three decimals)
    table = {1: (12.706, 6.314), 2: (4.303, 2.920), 4: (2.776, 2.132), 10: (2.228, 1.812),
             30: (2.042, 1.697), 100: (1.984, 1.660)}
    for df, (q975, q95) in table.items():
        assert t_quantile(0.975, df) == pytest.approx(q975, abs=5e-4)
        assert t_quantile(0.95, df) == pytest.approx(q95, abs=5e-4)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.960, abs=5e-4)  # the normal's
    assert t_cdf(0.0, 3.3) == 0.5 and t_cdf(-2.0, 3.3) == pytest.approx(1 - t_cdf(2.0, 3.3))
    q = t_quantile(0.975, 2.5)  # Welch's df are not integers: between the neighbours
    assert t_quantile(0.975, 3) < q < t_quantile(0.975, 2) and t_cdf(q, 2.5) == pytest.approx(0.975)


def test_diff_interval_corrects_for_the_number_of_modules_compared():
    # [1,2,3] vs [4,5,6]: diff -3, se sqrt(2/3), df 4; t(0.975, 4) = 2.776 (NIST table): half 2.27,
    # outside the 95% interval. Corrected for 42 modules (make demo's count): level 1 - 0.05/42,
    # t(1 - 0.000595, 4) > 3.7 (t(0.9995, 4) = 8.610, NIST), half > 3: within the corrected one.
    one = diff_interval([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    many = diff_interval([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], comparisons=42)
    assert one["verdict"] == "beyond noise"
    assert many["verdict"] == "within noise (42 comparisons)"
    assert (many["lo"], many["hi"]) == (one["lo"], one["hi"])  # the table shows the 95% interval
    assert diff_interval([1.0, 2.0, 3.0], [12.0, 13.0, 14.0], comparisons=42)["verdict"] == "beyond noise"
    assert diff_interval([1.0, 2.0, 3.0], [1.5, 2.0, 2.5], comparisons=42)["verdict"] == "within noise"
    with pytest.raises(ValueError, match="comparisons"):
        diff_interval([1.0, 2.0], [1.0, 2.0], comparisons=0)


def test_diff_interval_is_welchs_t_interval():
    # a = 1, 2, 3 and b = 0, 1, 2: difference 1, standard error sqrt(1/3 + 1/3), Welch df = 4;
    # t(0.975, 4) = 2.776 (Student's t table, e.g. NIST/SEMATECH e-Handbook of Statistical
    # Methods, table 1.3.6.7.2), so the interval is 1 ± 2.776 * 0.8165 = [-1.267, 3.267]
    ci = diff_interval([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert ci["diff"] == pytest.approx(1.0) and ci["df"] == pytest.approx(4.0)
    assert (ci["lo"], ci["hi"]) == (pytest.approx(-1.2665, abs=1e-3), pytest.approx(3.2665, abs=1e-3))
    assert ci["verdict"] == "within noise"
    assert diff_interval([10.0, 11.0, 12.0], [0.0, 1.0, 2.0])["verdict"] == "beyond noise"
    assert diff_interval([1.0, 2.0, 3.0], [9.0, 8.0, 7.0])["verdict"] == "beyond noise"  # a loss too
    one = diff_interval([5.0], [1.0, 2.0])
    assert one["verdict"] == "n/a (1 seed)" and one["lo"] is None and one["diff"] == 3.5
    assert diff_interval([2.0, 2.0], [1.0, 1.0])["verdict"] == "n/a (no spread)"


def test_measure_latency_is_the_bench_timer():
    models = {"a": torch.nn.Conv2d(3, 4, 3), "b": torch.nn.Identity()}
    lat = measure_latency(models, (1, 3, 8, 8), repeats=3, warmup=1, min_time=0.0005)
    assert set(lat) == {"a", "b"}
    for t in lat.values():
        assert isinstance(t, Timing) and t.repeats == 3 and t.min_s <= t.q1_s <= t.median_s <= t.q3_s


def test_one_seed_says_na_and_no_plus_minus(tmp_path, capsys):
    rc, out, cap = compare(tmp_path, capsys, "--modules", "se", "--seeds", "1")
    assert rc == 0
    # the recipe line train prints (tests/test_runs.py; here at the digits recipe's batch), word for word
    assert ("\nrecipe digits (for the default --dataset digits; --recipe to choose another): 1 epoch, "
            "batch 64, sgd lr 0.1 (momentum 0.9, weight decay 0.0005), cosine to 0 after 1 warm-up "
            "epoch\n") in cap.err
    assert "2 models x 1 seed, 1 epoch each" in cap.err
    assert "resnet8 on digits: 1 epoch, seed 0" in cap.out and "epochs" not in cap.out.split("\n")[1]
    assert "±" not in cap.out and "n/a (1 seed)" in cap.out and "Δ top-1 [95% CI]" in cap.out
    md = (out / "table.md").read_text()
    assert "# resnet8 on digits: 1 epoch, seed 0" in md and "±" not in md.split("|", 1)[1]  # not in the table
    assert "| n/a (1 seed) |" in md and "with 1 seed there is no estimate of the noise" in md
    results = json.loads((out / "results.json").read_text())
    se = results["rows"][1]
    assert se["top1_std"] is None and se["vs_baseline"]["verdict"] == "n/a (1 seed)"
    title, xlabel, ylabel = plot_text(results, "params")
    assert "1 epoch," in title and "1 seed per module" in title and "untested" in title
    assert "± std" not in ylabel and xlabel.startswith("parameters added to the baseline")
    for png in ("top1_vs_params.png", "top1_vs_latency.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_intervals_latency_spread_and_load_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 6.0, 6.0))  # a simulated busy machine
    out = tmp_path / "c"
    cfg = resolve_config("digits", overrides={"arch": "resnet8", "model_kwargs": {"widths": [8, 8, 16]},
                                              "epochs": 1, "out": str(out), "progress": "none"})
    logs: list[str] = []
    results = run_compare(cfg, ["eca"], [0, 1], str(out), latency_repeats=3, plots=False, log=logs.append)
    warnings = [line for line in logs if "warning" in line]
    busy = busy_warning(usable_cores(), 6.0, 1)
    assert warnings == [f"warning: {busy}"]  # train's line, word for word
    assert "1 thread each" in logs[0]  # the load leaves no core free: one thread
    assert results["train_threads"] == 1 and results["latency"]["threads"] == 1
    assert results["machine"]["load_warning"] == busy and results["threads_from"].startswith("chosen")
    for row in results["rows"]:
        assert row["latency_q1_ms"] <= row["latency_ms"] <= row["latency_q3_ms"]
        assert row["latency_train_batch_q1_ms"] <= row["latency_train_batch_q3_ms"]
    ci = results["rows"][1]["vs_baseline"]
    assert ci["lo"] <= ci["diff"] <= ci["hi"] and ci["verdict"] in ("beyond noise", "within noise")
    md = (out / "table.md").read_text()
    assert "q1-q3 (ms)" in md and f"| {ci['verdict']} |" in md and "95% Welch t interval" in md
    assert f"{ci['diff']:+.2f} [{ci['lo']:+.2f}, {ci['hi']:+.2f}]" in md
    csv_text = (out / "table.csv").read_text()
    assert tuple(csv_text.splitlines()[0].split(",")) == TABLE_COLUMNS
    eca = list(csv.DictReader(io.StringIO(csv_text)))[1]  # plain numbers that read back
    assert eca["module"] == "eca" and int(eca["params"]) == results["rows"][1]["params"]
    assert float(eca["d_top1_lo"]) == pytest.approx(ci["lo"], abs=1e-3) and eca["vs_noise"] == ci["verdict"]
    title = plot_text(results, "latency_ms")[0]
    assert "2 seeds per module" in title and "filled: Δ top-1 beyond seed noise" in title


def test_no_baseline_wording(tmp_path, capsys):
    rc, out, cap = compare(tmp_path, capsys, "--modules", "se,eca", "--seeds", "2", "--no-baseline")
    assert rc == 0
    table = cap.out.split("written:")[0]
    assert "Δ" not in table and "noise" not in table and "baseline" not in table and "se " in table
    md = (out / "table.md").read_text()
    assert "Δ" not in md and "baseline" not in md
    results = json.loads((out / "results.json").read_text())
    title, xlabel, _ = plot_text(results, "params")
    assert "dashed" not in title and "noise" not in title and "added to the baseline" not in xlabel
    assert (out / "top1_vs_params.png").is_file()


def test_a_compare_that_fails_before_training_leaves_no_compare_json(tmp_path, capsys):
    empty = tmp_path / "nodata"
    empty.mkdir()
    rc, out, cap = compare(tmp_path, capsys, "--dataset", "cifar10", "--data-root", str(empty),
                           "--modules", "se", "--seeds", "1")
    assert rc == 2 and cap.err.count("error") == 1
    assert not (out / "compare.json").exists()
    # the next compare into that folder, with other settings, is not refused
    rc, out, cap = compare(tmp_path, capsys, "--modules", "eca", "--seeds", "1", "--no-plots")
    assert rc == 0, cap.err
    assert json.loads((out / "compare.json").read_text())["settings"]["dataset"] == "digits"


def test_plot_title_names_the_corrected_interval():
    """With m > 1 modules against the baseline, a filled marker means the Bonferroni-corrected
    interval excludes 0 (diff_interval's verdict), and the title says so."""
    row = {"module": "none", "top1_mean": 50.0}
    vs = diff_interval([1, 2], [0, 1], comparisons=3)
    rows = [row] + [{"module": f"m{i}", "top1_mean": 50.0, "vs_baseline": vs} for i in range(3)]
    results = {"rows": rows, "seeds": [0, 1], "arch": "resnet8", "dataset": "digits", "epochs": 1}
    title = plot_text(results, "params")[0]
    assert "Bonferroni for 3 modules" in title and "1 - 0.05/3" in title
    rows[1:] = rows[1:2]
    rows[1]["vs_baseline"] = diff_interval([1, 2], [0, 1])
    assert "95% Welch interval, excludes 0" in plot_text(results, "params")[0]


def test_labels_cover_no_label_marker_or_error_bar():
    """compare's plots label every point; crowded points (the demo's 42 modules within a few
    percent) get labels placed apart, none over another label or over a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chanattn.training.compare import _place_labels

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    gen = torch.Generator().manual_seed(0)
    xs = (torch.rand(20, generator=gen) * 3).tolist()
    ys = (50 + torch.rand(20, generator=gen)).tolist()
    points = [(x, y, f"module{i}", "tab:blue", 0.05, x - 0.02, x + 0.02)
              for i, (x, y) in enumerate(zip(xs, ys))]
    ax.plot(xs, ys, "o")
    ax.set_xlim(-0.5, 3.5)
    ax.set_ylim(49.5, 51.5)
    _place_labels(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts]
    assert sorted(t.get_text() for t in labels) == sorted(p[2] for p in points)
    # the text's own box (an Annotation's extent includes its leader line)
    boxes = [matplotlib.text.Text.get_window_extent(t, renderer=renderer) for t in labels]
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1:]), labels[i].get_text()
        for x, y, *_ in points:
            px, py = ax.transData.transform((x, y))
            assert not (a.x0 < px < a.x1 and a.y0 < py < a.y1), (labels[i].get_text(), x, y)
    plt.close(fig)
