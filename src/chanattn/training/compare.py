"""``chanattn compare``: train the baseline and each module with the same recipe and seeds, then
write the table and the plots the papers print (accuracy against parameters and against latency).

Layout of ``DIR``::

    DIR/compare.json              the settings (a re-run with other settings is refused); written
                                  when training starts, so a compare that fails before leaves none
    DIR/runs/<module>/seed<k>/    one training run each (config.yaml, metrics.jsonl, last.pt, summary.json)
    DIR/results.json              every figure, per module and per seed, and the machine
    DIR/table.csv, DIR/table.md   see TABLE_COLUMNS
    DIR/top1_vs_params.png, DIR/top1_vs_latency.png

A run that is interrupted is continued by the same command: finished (module, seed) pairs are
skipped, a pair with a checkpoint resumes from it.

Noise. Each module's difference from the baseline, mean top-1 minus the baseline's, comes with
Welch's t interval over the seeds (95 %, unequal variances; :func:`diff_interval`, with the t
quantile computed here, :func:`t_quantile`, so that compare needs no SciPy): "beyond noise"
when the interval excludes 0, "within noise" otherwise, "n/a (1 seed)" when either side has one
seed (no estimate of the noise, so no claim). With m modules compared, about 5 % of them would
fall outside a 95 % interval by chance alone, so the verdict uses the Bonferroni-corrected interval
(level 1 - 0.05/m) while the table shows the 95 % one: a module outside the 95 % interval but not
the corrected one reads "within noise (m comparisons)". Latency is timed with the bench's timer
(:func:`chanattn.bench.core.time_interleaved`): median and quartiles of interleaved repeats.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch

from ..errors import ConfigError
from ..io import atomic_path, write_json, write_text
from ..table import Column, render, render_csv, render_markdown
from . import threads as _threads
from .config import RUNTIME_FIELDS, TrainConfig, recipe_line

__all__ = ["BASELINE", "diff_interval", "measure_latency", "parse_modules", "run_compare", "write_plots"]

BASELINE = "none"
TABLE_COLUMNS = ("module", "params", "macs", "top1_mean", "top1_std", "seeds", "latency_ms",
                 "latency_q1_ms", "latency_q3_ms", "d_top1", "d_top1_lo", "d_top1_hi", "vs_noise")
#: Confidence level of the interval of each module's difference from the baseline.
CI_LEVEL = 0.95

# fields that may differ between two invocations of the same compare without changing its results
_FREE_FIELDS = {"attn", "seed", "out", *RUNTIME_FIELDS}


def parse_modules(text: str | list[str]) -> list[str]:
    """``"se,eca"`` / ``"all"`` -> registry names (aliases resolved), baseline excluded, order kept."""
    from ..registry import list_modules, resolve_name

    items = text if isinstance(text, list) else [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError("--modules is empty; give names (se,eca,...) or all")
    names: list[str] = []
    for item in items:
        if item.lower() == "all":
            names.extend(list_modules())
        elif item.lower() in (BASELINE, "baseline"):
            continue
        else:
            names.append(resolve_name(item))
    return list(dict.fromkeys(names))


def _run_dir(out: str, module: str, seed: int) -> str:
    return os.path.join(out, "runs", module, f"seed{seed}")


def _finished(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary if summary.get("finished") else None


def _train_one(job: tuple[dict, str, int | None]) -> tuple[str, int, dict | None, str | None]:
    """Worker: train one (module, seed); never raises (the error comes back as text)."""
    from .trainer import train

    cfg_dict, _run_dir, threads = job
    cfg = TrainConfig(**cfg_dict)
    if threads:
        torch.set_num_threads(threads)
    module = cfg.attn or BASELINE
    try:
        summary = train(cfg, resume="auto", quiet=True)  # continues an interrupted pair
        return module, cfg.seed, summary, None
    except Exception as exc:
        return module, cfg.seed, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def measure_latency(
    models: dict[str, torch.nn.Module],
    shape: tuple[int, ...],
    *,
    repeats: int = 20,
    warmup: int = 3,
    min_time: float = 0.005,
):
    """The forward time of each model (eval, no grad) on a random batch of ``shape``: a
    :class:`chanattn.bench.core.Timing` per model (median, quartiles, extremes, seconds per call).

    The bench's timer (:func:`chanattn.bench.core.time_interleaved`): the models are timed in
    turns, the order rotating, so that whatever else the machine does slows all of them alike;
    each timed repeat loops until it lasts ``min_time`` s.
    """
    from ..bench.core import time_interleaved

    x = torch.randn(shape)

    def forward(model: torch.nn.Module):
        def call() -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        return call

    for model in models.values():
        model.eval()
    return time_interleaved({name: forward(m) for name, m in models.items()}, repeats=repeats,
                            warmup=warmup, min_time_s=min_time)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (any real df > 0):
    1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0, by symmetry below."""
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (0.5 <= p < 1), by
    bisection on :func:`t_cdf`."""
    if not 0.5 <= p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: needs 0.5 <= p < 1 and df > 0, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def diff_interval(values: list[float], base: list[float], level: float = CI_LEVEL,
                  comparisons: int = 1) -> dict[str, Any]:
    """mean(values) - mean(base) with Welch's t interval at ``level`` (unequal variances,
    Welch-Satterthwaite degrees of freedom).

    Returns ``{"diff", "lo", "hi", "df", "verdict"}``: verdict ``"beyond noise"`` when the interval
    excludes 0, ``"within noise"`` when it holds it, ``"n/a (1 seed)"`` (lo, hi, df None) when either
    side has fewer than 2 values, ``"n/a (no spread)"`` when both sides are constant. With
    ``comparisons`` = m > 1 (m modules against one baseline), the verdict is that of the
    Bonferroni-corrected interval at level 1 - (1 - level)/m, so that the whole table claims a
    difference by chance with probability at most 1 - level; a difference outside the ``level``
    interval (``lo``, ``hi``) but inside the corrected one reads ``"within noise (m comparisons)"``.
    """
    if comparisons < 1:
        raise ValueError(f"compare: comparisons must be >= 1, got {comparisons}")
    diff = statistics.fmean(values) - statistics.fmean(base)
    out: dict[str, Any] = {"diff": diff, "lo": None, "hi": None, "df": None, "level": level,
                           "comparisons": comparisons}
    if len(values) < 2 or len(base) < 2:
        out["verdict"] = "n/a (1 seed)"
        return out
    va, vb = statistics.variance(values) / len(values), statistics.variance(base) / len(base)
    se = math.sqrt(va + vb)
    if se == 0:
        out["verdict"] = "n/a (no spread)"
        return out
    df = (va + vb) ** 2 / (va ** 2 / (len(values) - 1) + vb ** 2 / (len(base) - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    out.update(lo=diff - half, hi=diff + half, df=df)
    family_level = 1 - (1 - level) / comparisons
    half_fw = t_quantile(0.5 + family_level / 2, df) * se
    if diff - half_fw > 0 or diff + half_fw < 0:
        out["verdict"] = "beyond noise"
    elif diff - half > 0 or diff + half < 0:
        out["verdict"] = f"within noise ({comparisons} comparisons)"
    else:
        out["verdict"] = "within noise"
    return out


def _check_settings(out: str, base: TrainConfig, seeds: list[int], arch: str) -> dict[str, Any]:
    """Refuse a directory that holds a compare with other settings; the record to write when the
    training starts (:func:`_write_settings`)."""
    path = os.path.join(out, "compare.json")
    settings = {k: v for k, v in base.to_dict().items() if k not in _FREE_FIELDS}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f).get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff[:4])
            raise ConfigError(
                f"{out!r} holds a compare with other settings ({shown}); use another --out to "
                "compare with these settings"
            )
    return {"settings": settings, "seeds": seeds, "arch": arch}


def _write_settings(out: str, record: dict[str, Any]) -> None:
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "compare.json"), record)


def run_compare(
    base: TrainConfig,
    modules: list[str],
    seeds: list[int],
    out: str,
    *,
    jobs: int = 1,
    include_baseline: bool = True,
    latency_repeats: int = 20,
    plots: bool = True,
    log=print,
    recipe_note: str | None = None,
) -> dict[str, Any]:
    """Train ``[none] + modules`` x ``seeds`` with ``base``'s recipe, then write the table and plots.

    Threads: ``base.threads``, else :func:`chanattn.training.threads.pick_threads` (the rule of
    ``train`` and ``bench``) for ``jobs`` processes during training and for one during the latency
    measurement. The start is logged as ``train`` prints it: the recipe line (with ``recipe_note``,
    how the recipe was chosen) and, on a busy machine, the same warning.

    Returns the results dict (also in ``DIR/results.json``).
    """
    from ..bench.core import machine_info
    from ..data import load_data
    from ..models import count_macs, count_params, model_info
    from ..registry import module_info
    from .trainer import build_model

    model_info(base.arch)  # unknown arch: the registry's one-line error before anything runs
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    names = ([BASELINE] if include_baseline else []) + list(modules)
    settings_record = _check_settings(out, base, seeds, base.arch)
    load, cores = _threads.load_average(), _threads.usable_cores()
    # threads: --threads, else the cores the load leaves free shared among the jobs (the one rule)
    run_threads, threads_from = _threads.pick_threads(base.threads, jobs, load=load)
    latency_threads = _threads.pick_threads(base.threads, 1, load=load)[0]
    warning = _threads.busy_warning(cores, load, run_threads, per_process=jobs > 1)
    data = load_data(base.dataset, base.data_root, download=base.download, image_size=base.image_size)
    spec = data.spec
    shape1 = (1, spec.in_chans, *spec.image_size)

    # models first: a module that cannot be built in this architecture is reported before training
    static: dict[str, dict] = {}
    built: dict[str, torch.nn.Module] = {}  # kept for the latency measurement after training
    for name in names:
        cfg = dataclasses.replace(base, attn=None if name == BASELINE else name)
        try:
            model = build_model(cfg, spec.num_classes, spec.in_chans, spec.image_size)
            static[name] = {
                "params": count_params(model),
                "macs": count_macs(model, shape1),
                "kind": "baseline" if name == BASELINE else module_info(name).kind,
            }
            built[name] = model
        except Exception as exc:
            static[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            log(f"compare: {name}: cannot build {base.arch} with it: {static[name]['error']}")

    todo, summaries = [], {}
    for name in names:
        if "error" in static[name]:
            continue
        for seed in seeds:
            run_dir = _run_dir(out, name, seed)
            done = _finished(run_dir)
            if done is not None:
                summaries[(name, seed)] = done
                continue
            cfg = dataclasses.replace(
                base, attn=None if name == BASELINE else name, seed=seed, out=run_dir, progress="none",
                threads=run_threads,
            )
            todo.append((cfg.to_dict(), run_dir, run_threads))
    unbuildable = [n for n in names if "error" in static[n]]
    finished = len(summaries)
    log(
        f"compare {base.arch} on {base.dataset}: {_plural(len(names), 'model')} x "
        f"{_plural(len(seeds), 'seed')}, "
        f"{_plural(base.epochs, 'epoch')} each; {finished} runs already finished, {len(todo)} to train "
        f"({jobs} at a time, {_plural(run_threads, 'thread')} each)"
        + (f", {len(unbuildable)} models cannot be built ({', '.join(unbuildable)})" if unbuildable else "")
        + f" -> {out}"
    )
    log(recipe_line(base, recipe_note))
    if warning:
        log(f"warning: {warning}")
    # the data and the models are ready: from here on the directory holds this compare
    _write_settings(out, settings_record)
    errors: dict[tuple[str, int], str] = {}
    t0 = time.perf_counter()
    results_iter = _map(todo, jobs)
    for k, (name, seed, summary, error) in enumerate(results_iter, 1):
        if error is not None:
            errors[(name, seed)] = error
            log(f"  [{k}/{len(todo)}] {name} seed {seed}: FAILED {error}")
            continue
        summaries[(name, seed)] = summary
        log(
            f"  [{k}/{len(todo)}] {name:<16} seed {seed}: top-1 {summary['final_top1']:6.2f}%  "
            f"({summary['train_time_s']:.1f} s, {time.perf_counter() - t0:.0f} s elapsed)"
        )

    log(f"compare: timing {len(built)} models at batch 1 and at batch {base.batch_size} "
        f"({_plural(latency_threads, 'thread')})")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(latency_threads)
    try:
        machine = machine_info("cpu")
        lat1 = measure_latency(built, shape1, repeats=latency_repeats)
        lat_b = measure_latency(
            built, (base.batch_size, spec.in_chans, *spec.image_size), repeats=max(latency_repeats // 4, 3)
        )
    finally:
        torch.set_num_threads(threads_before)
    # the load before training, when nothing of this compare ran yet; the one before the latency
    # measurement includes this compare's own training of the last minute
    machine["load_avg_1min_at_latency"] = machine.pop("load_avg_1min")
    machine["load_avg_1min"] = None if load is None else round(load, 2)
    machine["load_warning"] = warning
    machine["load_note"] = ("load_avg_1min, load_warning: at the start of the compare; "
                            "load_avg_1min_at_latency: before the latency measurement (includes this "
                            "compare's training)")
    del built
    rows = []
    base_top1 = None
    for name in names:
        info = static[name]
        runs = [summaries[(name, s)] for s in seeds if (name, s) in summaries]
        top1 = [r["final_top1"] for r in runs]
        if name == BASELINE:
            base_top1 = top1
        row: dict[str, Any] = {
            "module": name,
            "kind": info.get("kind"),
            "params": info.get("params"),
            "macs": info.get("macs"),
            "seeds": len(top1),
            "top1": top1,
            "best_top1": [r["best_top1"] for r in runs],
            "top1_mean": statistics.fmean(top1) if top1 else None,
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
            "train_images_per_s": statistics.fmean(
                [r["epochs"] * len(data.train) / r["train_time_s"] for r in runs]
            )
            if runs
            else None,
        }
        failed = [f"seed {s}: {errors[(name, s)]}" for s in seeds if (name, s) in errors]
        if "error" in info:
            failed.append(info["error"])
        row["errors"] = failed
        for key, lat in (("latency", lat1), ("latency_train_batch", lat_b)):
            t = lat.get(name)
            for suffix, value in (("ms", t and t.median_s), ("q1_ms", t and t.q1_s), ("q3_ms", t and t.q3_s)):
                row[f"{key}_{suffix}"] = None if value is None else value * 1e3
        rows.append(row)
    # each module's difference from the baseline, with its noise (corrected for the number compared)
    compared = [r for r in rows if base_top1 and r["top1"] and r["module"] != BASELINE]
    for row in rows:
        row["vs_baseline"] = (diff_interval(row["top1"], base_top1, comparisons=len(compared))
                              if row in compared else None)

    results = {
        "dataset": base.dataset,
        "arch": base.arch,
        "seeds": seeds,
        "epochs": base.epochs,
        "baseline": include_baseline,
        "input_shape": list(shape1),
        "train_batch": base.batch_size,
        "config": base.to_dict(),
        "latency": {
            "batch1": "forward ms at batch 1 (eval, no grad): median and quartiles of "
                      f"{latency_repeats} interleaved repeats",
            "train_batch": f"forward ms at batch {base.batch_size}: median and quartiles",
            "threads": latency_threads,
        },
        "vs_baseline": f"top-1 mean minus the baseline's, {CI_LEVEL:.0%} Welch t interval over seeds",
        "train_threads": run_threads,
        "threads_from": threads_from,
        "machine": machine,
        "torch": torch.__version__,
        "rows": rows,
    }
    write_json(os.path.join(out, "results.json"), results)
    write_text(os.path.join(out, "table.csv"), table_csv(rows))
    write_text(os.path.join(out, "table.md"), table_markdown(results))
    if plots:
        write_plots(results, out)
    if errors or unbuildable:
        log(
            f"compare: {len(errors)} run(s) failed, {len(unbuildable)} model(s) not built; "
            "see results.json 'errors' "
            "(re-run the same command to retry)"
        )
    return results


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _map(todo: list, jobs: int):
    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            yield _train_one(job)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(jobs, len(todo))) as pool:
        yield from pool.imap_unordered(_train_one, todo)


def _vs(field: str):
    return lambda r: (r.get("vs_baseline") or {}).get(field)


#: The columns of table.csv (machine-readable: plain numbers; their headers are TABLE_COLUMNS).
CSV_COLUMNS = (
    Column("module", "module"), Column("params", "params", "d"), Column("macs", "macs", "d"),
    Column("top1_mean", "top1_mean", ".3f"), Column("top1_std", "top1_std", ".3f"),
    Column("seeds", "seeds", "d"), Column("latency_ms", "latency_ms", ".4f"),
    Column("latency_q1_ms", "latency_q1_ms", ".4f"), Column("latency_q3_ms", "latency_q3_ms", ".4f"),
    Column("d_top1", spec=".3f", get=_vs("diff")), Column("d_top1_lo", spec=".3f", get=_vs("lo")),
    Column("d_top1_hi", spec=".3f", get=_vs("hi")), Column("vs_noise", get=_vs("verdict")),
)


def table_csv(rows: list[dict]) -> str:
    """table.csv: one line per module (:data:`CSV_COLUMNS`), through :func:`chanattn.table.render_csv`."""
    return render_csv(rows, CSV_COLUMNS)


def title(results: dict) -> str:
    n = len(results["seeds"])
    seeds = f"seed {results['seeds'][0]}" if n == 1 else f"seeds {results['seeds']}"
    return f"{results['arch']} on {results['dataset']}: {_plural(results['epochs'], 'epoch')}, {seeds}"


def _top1_cell(r: dict) -> str | None:
    if r["top1_mean"] is None:
        return "failed" if r["errors"] else None
    if r["top1_std"] is None:  # one seed: no spread to show
        return f"{r['top1_mean']:.2f}"
    return f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}"


def _diff_cell(r: dict) -> str | None:
    vs = r.get("vs_baseline")
    if not vs:
        return None
    if vs["lo"] is None:
        return f"{vs['diff']:+.2f}"
    return f"{vs['diff']:+.2f} [{vs['lo']:+.2f}, {vs['hi']:+.2f}]"


def _noise_cell(r: dict) -> str | None:
    if r["module"] == BASELINE:
        return "baseline"
    vs = r.get("vs_baseline")
    return vs["verdict"] if vs else None


def _latency_quartiles(r: dict) -> str | None:
    if r.get("latency_q1_ms") is None:
        return None
    return f"{r['latency_q1_ms']:.3f}-{r['latency_q3_ms']:.3f}"


def _columns(results: dict, markdown: bool) -> list[Column]:
    """The columns of the printed and the markdown table."""
    rows = results["rows"]
    base = next((r for r in rows if r["module"] == BASELINE and r["params"] is not None), None)
    level = f"{CI_LEVEL:.0%}"
    cols = [Column("module", "module")]
    if markdown:
        cols.append(Column("kind", "kind"))
    cols.append(Column("params", "params", ","))
    if base is not None:
        cols.append(Column("Δ params", spec="+,", get=lambda r: None if r["params"] is None or r is base
                           else r["params"] - base["params"]))
    cols += [Column("MACs", "macs", ","),
             Column("top-1 (%)" if markdown else "top-1 %", align=">", get=_top1_cell)]
    if base is not None:
        cols += [Column(f"Δ top-1 [{level} CI]", align=">", get=_diff_cell),
                 Column("vs seed noise", get=_noise_cell)]
    cols += [Column("latency (ms)" if markdown else "latency ms", "latency_ms", ".3f"),
             Column("q1-q3 (ms)" if markdown else "q1-q3 ms", align=">", get=_latency_quartiles),
             Column("seeds", "seeds", "d")]
    if any(r["errors"] for r in rows):
        cols.append(Column("errors", get=lambda r: "; ".join(r["errors"]) or None))
    return cols


def _explanation(results: dict) -> str:
    n_seeds = len(results["seeds"])
    base = any(r["module"] == BASELINE and r["top1_mean"] is not None for r in results["rows"])
    shape = "x".join(map(str, results["input_shape"][1:]))
    threads = _plural(results["latency"]["threads"], "thread")
    text = ("top-1: final-epoch test accuracy, " + ("mean ± std over seeds" if n_seeds > 1 else "one seed")
            + f"; latency: forward at batch 1 (input {shape}, {threads}), "
            "median and quartiles (q1-q3) of interleaved repeats; MACs: multiply-adds of convolutions "
            "and linear layers (torch.utils.flop_counter).")
    if base:
        text += (f" Δ top-1: mean minus the baseline's (none), with its {CI_LEVEL:.0%} Welch t interval "
                 "over seeds; beyond noise = the interval excludes 0"
                 + (" (with m modules compared, the Bonferroni-corrected interval at 1 - 0.05/m: "
                    "\"within noise (m comparisons)\" = outside the 95% interval, inside the corrected one, "
                    "as about 5% of modules would be by chance), within noise = it holds 0."
                    if n_seeds > 1 else
                    "; with 1 seed there is no estimate of the noise (n/a): a difference may be chance."))
    return text


def table_markdown(results: dict) -> str:
    return (f"# {title(results)}\n\n{_explanation(results)}\n\n"
            + render_markdown(results["rows"], _columns(results, markdown=True)))


def text_table(results: dict) -> str:
    return render(results["rows"], _columns(results, markdown=False))


_KIND_COLORS = {
    "baseline": "black",
    "channel": "tab:blue",
    "spatial": "tab:orange",
    "hybrid": "tab:green",
    "communication": "tab:red",
    "second-order": "tab:purple",
}


def _place_labels(ax, points: list[tuple[float, float, str, str, float, float, float]],
                  fontsize: float = 8.5) -> None:
    """Label each point ``(x, y, text, colour, yerr, xlo, xhi)`` so that no label covers another
    label, a marker or an error bar: the first free offset around the point, nearest first (the
    last one tried where none is free); a label moved away from its point gets a thin leader line."""
    fig = ax.figure
    fig.canvas.draw()
    renderer, to_px, scale = fig.canvas.get_renderer(), ax.transData.transform, fig.dpi / 72.0
    taken: list[tuple[float, float, float, float]] = []  # boxes in pixels: (x0, y0, x1, y1)
    for x, y, _, _, err, xlo, xhi in points:  # the marker, its vertical and its horizontal bar
        (cx, cy), (left, bottom), (right, top) = to_px([(x, y), (xlo, y - err), (xhi, y + err)])
        taken += [(cx - 5, cy - 5, cx + 5, cy + 5), (cx - 4, bottom - 1, cx + 4, top + 1),
                  (left - 1, cy - 4, right + 1, cy + 4)]
    offsets = [(6, -4)] + [o for d in range(9, 144, 9) for o in
                           ((6, d - 4), (6, -d - 4), (-6, d - 4), (-6, -d - 4), (d, -4), (-d, -4))]

    def free(box) -> bool:
        return all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3] for t in taken)

    for x, y, text, color, *_ in sorted(points, key=lambda p: (p[0], p[1])):
        probe = ax.text(0, 0, text, fontsize=fontsize)
        w, h = probe.get_window_extent(renderer=renderer).size
        probe.remove()
        cx, cy = to_px((x, y))
        boxes = [(cx + dx * scale - (w if dx < 0 else 0), cy + dy * scale) for dx, dy in offsets]
        boxes = [(left - 1, bottom - 1, left + w + 1, bottom + h + 1) for left, bottom in boxes]
        i = next((i for i, b in enumerate(boxes) if free(b)), len(offsets) - 1)
        dx, dy = offsets[i]
        taken.append(boxes[i])
        far = abs(dx) > 12 or abs(dy) > 12
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                    color=color, ha="left" if dx >= 0 else "right", va="bottom",
                    arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5, "alpha": 0.6} if far else None)


def plot_text(results: dict, key: str) -> tuple[str, str, str]:
    """The title, x label and y label of the plot of top-1 against ``key`` (``"params"`` or
    ``"latency_ms"``)."""
    base = any(r["module"] == BASELINE and r["top1_mean"] is not None for r in results["rows"])
    n_seeds = len(results["seeds"])
    if key == "params":
        label = ("parameters added to the baseline" if base else "parameters") + " (symmetric log scale)"
    else:
        label = "latency at batch 1 (ms, forward, eval): median, bars from q1 to q3"
    ylabel = "top-1 test accuracy (%), " + ("mean ± std over seeds" if n_seeds > 1 else "one seed")
    head = (f"{results['arch']} on {results['dataset']}: {_plural(results['epochs'], 'epoch')}, "
            f"{_plural(n_seeds, 'seed')} per module")
    if base:
        head += "; dashed: no attention"
        if n_seeds > 1:
            m = max((r["vs_baseline"].get("comparisons", 1) for r in results["rows"] if r.get("vs_baseline")),
                    default=1)
            interval = (f"{CI_LEVEL:.0%} Welch interval" if m == 1 else
                        f"Welch interval at 1 - {1 - CI_LEVEL:.2g}/{m}, Bonferroni for {m} modules")
            head += f"\nfilled: Δ top-1 beyond seed noise ({interval}, excludes 0); hollow: within noise"
        else:
            head += "\n1 seed: no estimate of the noise; differences from the baseline untested (hollow)"
    return head, label, ylabel


def write_plots(results: dict, out: str) -> list[str]:
    """top-1 against the parameters added to the baseline (symmetric log scale: ECA's +9 and
    GSoP's +270k on one axis; without a baseline, the total parameters) and against latency; one
    labelled point per module, coloured by kind, with error bars: top-1 ± std over seeds (none with
    one seed), latency from its first to its third quartile. With a baseline: its accuracy as a
    dashed line, and each module's marker filled when its difference from the baseline is beyond
    the noise of the seeds (:func:`diff_interval`), hollow otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["top1_mean"] is not None and r["params"] is not None]
    base = next((r for r in rows if r["module"] == BASELINE), None)
    paths = []
    plots = (("params", "top1_vs_params.png"), ("latency_ms", "top1_vs_latency.png"))
    for key, fname in plots:
        head, label, ylabel = plot_text(results, key)
        fig, ax = plt.subplots(figsize=(12, 8), dpi=110)
        kinds_seen: dict = {}
        points = []
        for r in rows:
            if r[key] is None:
                continue
            x = r[key] - base["params"] if key == "params" and base is not None else r[key]
            xerr = None
            xlo = xhi = x
            if key == "latency_ms" and r.get("latency_q1_ms") is not None:
                xlo, xhi = r["latency_q1_ms"], r["latency_q3_ms"]
                xerr = [[max(x - xlo, 0.0)], [max(xhi - x, 0.0)]]
            color = _KIND_COLORS.get(r["kind"], "tab:gray")
            vs = r.get("vs_baseline")
            hollow = vs is not None and vs["verdict"] != "beyond noise"
            h = ax.errorbar(
                x,
                r["top1_mean"],
                yerr=r["top1_std"],
                xerr=xerr,
                fmt="o" if r["module"] != BASELINE else "D",
                color=color,
                ecolor=color,
                markerfacecolor="white" if hollow else color,
                elinewidth=1,
                capsize=3,
                alpha=0.9,
                markersize=6 if r["module"] != BASELINE else 8,
            )
            kinds_seen.setdefault(r["kind"], h)
            points.append((x, r["top1_mean"], r["module"], color, r["top1_std"] or 0.0, xlo, xhi))
        if base is not None:
            ax.axhline(base["top1_mean"], color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        if key == "params":
            ax.set_xscale("symlog", linthresh=10)
            if base is not None:
                ax.axvline(0, color="black", linewidth=0.5, alpha=0.4)
        ax.margins(x=0.08, y=0.08)
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.set_title(head)
        ax.grid(True, alpha=0.3, which="major")
        ax.legend(
            list(kinds_seen.values()), list(kinds_seen.keys()), loc="lower left", fontsize=9, framealpha=0.8
        )
        fig.tight_layout()
        _place_labels(ax, points)
        path = os.path.join(out, fname)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def seeds_from(count: int, first: int = 0) -> list[int]:
    if count < 1:
        raise ConfigError(f"--seeds must be >= 1, got {count}")
    return list(range(first, first + count))
