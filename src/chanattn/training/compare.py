"""``chanattn compare``: train the baseline and each module with the same recipe and seeds, then
write the table and the plots the papers print (accuracy against parameters and against latency).

Layout of ``DIR``::

    DIR/compare.json              the settings (a re-run with other settings is refused)
    DIR/runs/<module>/seed<k>/    one training run each (config.yaml, metrics.jsonl, last.pt, summary.json)
    DIR/results.json              every figure, per module and per seed
    DIR/table.csv, DIR/table.md   module,params,macs,top1_mean,top1_std,seeds,latency_ms
    DIR/top1_vs_params.png, DIR/top1_vs_latency.png

A run that is interrupted is continued by the same command: finished (module, seed) pairs are
skipped, a pair with a checkpoint resumes from it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch

from ..errors import ConfigError
from ..io import atomic_path, write_json, write_text
from .config import RUNTIME_FIELDS, TrainConfig

__all__ = ["BASELINE", "measure_latency", "parse_modules", "run_compare", "write_plots"]

BASELINE = "none"
TABLE_COLUMNS = ("module", "params", "macs", "top1_mean", "top1_std", "seeds", "latency_ms")

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


@torch.no_grad()
def measure_latency(
    models: dict[str, torch.nn.Module],
    shape: tuple[int, ...],
    *,
    repeats: int = 20,
    warmup: int = 3,
    min_time: float = 0.005,
) -> dict[str, float]:
    """Median forward time in ms of each model (eval, no grad) on a random batch of ``shape``.

    The models are timed in turns (model 1, model 2, ..., then again) so that whatever else the
    machine does slows all of them alike; each timed repeat loops until it lasts ``min_time`` s.
    """
    x = torch.randn(shape)
    inner: dict[str, int] = {}
    for name, model in models.items():
        model.eval()
        for _ in range(warmup):
            model(x)
        t0 = time.perf_counter()
        model(x)
        inner[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                model(x)
            times[name].append((time.perf_counter() - t0) / inner[name])
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def _check_settings(out: str, base: TrainConfig, seeds: list[int], arch: str) -> None:
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
    os.makedirs(out, exist_ok=True)
    write_json(path, {"settings": settings, "seeds": seeds, "arch": arch})


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
) -> dict[str, Any]:
    """Train ``[none] + modules`` x ``seeds`` with ``base``'s recipe, then write the table and plots.

    Returns the results dict (also in ``DIR/results.json``).
    """
    from ..data import load_data
    from ..models import count_macs, count_params, model_info
    from ..registry import module_info
    from .trainer import build_model

    model_info(base.arch)  # unknown arch: the registry's one-line error before anything runs
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    names = ([BASELINE] if include_baseline else []) + list(modules)
    _check_settings(out, base, seeds, base.arch)
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
                base, attn=None if name == BASELINE else name, seed=seed, out=run_dir, progress="none"
            )
            todo.append((cfg.to_dict(), run_dir, base.threads or (1 if jobs > 1 else None)))
    unbuildable = [n for n in names if "error" in static[n]]
    finished = len(summaries)
    log(
        f"compare {base.arch} on {base.dataset}: {len(names)} models x {len(seeds)} seeds, "
        f"{base.epochs} epochs each; {finished} runs already finished, {len(todo)} to train "
        f"({jobs} at a time)"
        + (f", {len(unbuildable)} models cannot be built ({', '.join(unbuildable)})" if unbuildable else "")
        + f" -> {out}"
    )
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

    log(f"compare: timing {len(built)} models at batch 1 and at batch {base.batch_size}")
    lat1 = measure_latency(built, shape1, repeats=latency_repeats)
    lat_b = measure_latency(
        built, (base.batch_size, spec.in_chans, *spec.image_size), repeats=max(latency_repeats // 4, 3)
    )
    del built
    rows = []
    for name in names:
        info = static[name]
        runs = [summaries[(name, s)] for s in seeds if (name, s) in summaries]
        top1 = [r["final_top1"] for r in runs]
        row: dict[str, Any] = {
            "module": name,
            "kind": info.get("kind"),
            "params": info.get("params"),
            "macs": info.get("macs"),
            "seeds": len(top1),
            "top1": top1,
            "best_top1": [r["best_top1"] for r in runs],
            "top1_mean": statistics.fmean(top1) if top1 else None,
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else (0.0 if top1 else None),
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
        row["latency_ms"] = lat1.get(name)
        row["latency_ms_train_batch"] = lat_b.get(name)
        rows.append(row)

    results = {
        "dataset": base.dataset,
        "arch": base.arch,
        "seeds": seeds,
        "epochs": base.epochs,
        "input_shape": list(shape1),
        "train_batch": base.batch_size,
        "config": base.to_dict(),
        "latency": {
            "batch1": "median forward ms at batch 1 (eval, no grad)",
            "train_batch": f"median forward ms at batch {base.batch_size}",
            "threads": torch.get_num_threads(),
        },
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


def _map(todo: list, jobs: int):
    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            yield _train_one(job)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(jobs, len(todo))) as pool:
        yield from pool.imap_unordered(_train_one, todo)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE_COLUMNS)
    for r in rows:
        w.writerow(
            [
                r["module"],
                _fmt(r["params"]),
                _fmt(r["macs"]),
                _fmt(r["top1_mean"], 3),
                _fmt(r["top1_std"], 3),
                r["seeds"],
                _fmt(r["latency_ms"], 4),
            ]
        )
    return buf.getvalue()


def title(results: dict) -> str:
    return f"{results['arch']} on {results['dataset']}: {results['epochs']} epochs, seeds {results['seeds']}"


def table_markdown(results: dict) -> str:
    rows = results["rows"]
    base = next((r for r in rows if r["module"] == BASELINE), None)
    lines = [
        f"# {title(results)}",
        "",
        "top-1: final-epoch test accuracy, mean ± std over seeds; latency: median forward at batch 1 "
        f"(input {'x'.join(map(str, results['input_shape'][1:]))}, {results['latency']['threads']} threads); "
        "MACs: multiply-adds of convolutions and linear layers (torch.utils.flop_counter).",
        "",
        "| module | kind | params | Δ params | MACs | top-1 (%) | Δ top-1 | latency (ms) | seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["params"] is None:
            lines.append(f"| {r['module']} | | | | | failed: {'; '.join(r['errors'])} | | | 0 |")
            continue
        dp = f"{r['params'] - base['params']:+,}" if base and base["params"] is not None else ""
        dt = (
            f"{r['top1_mean'] - base['top1_mean']:+.2f}"
            if base and base["top1_mean"] is not None and r["top1_mean"] is not None
            else ""
        )
        top = f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}" if r["top1_mean"] is not None else "failed"
        lines.append(
            f"| {r['module']} | {r['kind']} | {r['params']:,} | {dp} | {r['macs']:,} | {top} | {dt} | "
            f"{r['latency_ms']:.3f} | {r['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def text_table(results: dict) -> str:
    rows = results["rows"]
    head = f"{'module':<16} {'params':>9} {'MACs':>11} {'top-1 %':>15} {'latency ms':>10} {'seeds':>5}"
    out = [head, "-" * len(head)]
    for r in rows:
        if r["top1_mean"] is None:
            out.append(f"{r['module']:<16} {_fmt(r['params']):>9} {'':>11} {'failed':>15}")
            continue
        top = f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}"
        out.append(
            f"{r['module']:<16} {r['params']:>9,} {r['macs']:>11,} {top:>15} {r['latency_ms']:>10.3f} "
            f"{r['seeds']:>5}"
        )
    return "\n".join(out) + "\n"


_KIND_COLORS = {
    "baseline": "black",
    "channel": "tab:blue",
    "spatial": "tab:orange",
    "hybrid": "tab:green",
    "communication": "tab:red",
    "second-order": "tab:purple",
}


def _place_labels(ax, points: list[tuple[float, float, str, str, float]], fontsize: float = 8.5) -> None:
    """Label each (x, y) point without labels printing over each other or over the points: try
    offsets around the point, nearest first, and keep the first whose box is free; a label moved
    away from its point gets a thin leader line."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    scale = fig.dpi / 72.0  # points -> pixels
    taken: list[tuple[float, float, float, float]] = []
    for x, y, _, _, err in points:  # the markers and their error bars
        px, py = to_px((x, y))
        _, top = to_px((x, y + err))
        _, bottom = to_px((x, y - err))
        taken.append((px - 5, py - 5, px + 5, py + 5))
        taken.append((px - 4, bottom - 1, px + 4, top + 1))
    offsets = [(6, -4)]
    for r in range(1, 16):
        d = 9 * r
        offsets += [(6, d - 4), (6, -d - 4), (-6, d - 4), (-6, -d - 4), (d, -4), (-d, -4)]

    def free(box) -> bool:
        x0, y0, x1, y1 = box
        return all(x1 <= a0 or x0 >= a1 or y1 <= b0 or y0 >= b1 for a0, b0, a1, b1 in taken)

    for x, y, text, color, _ in sorted(points, key=lambda p: (p[0], p[1])):
        t = ax.text(0, 0, text, fontsize=fontsize)
        ext = t.get_window_extent(renderer=renderer)
        t.remove()
        w, h = ext.width, ext.height
        px, py = to_px((x, y))
        for dx, dy in offsets:
            left = px + dx * scale if dx >= 0 else px + dx * scale - w
            bottom = py + dy * scale
            box = (left - 1, bottom - 1, left + w + 1, bottom + h + 1)
            if free(box):
                break
        taken.append(box)
        far = abs(dx) > 12 or abs(dy) > 12
        ax.annotate(
            text,
            (x, y),
            textcoords="offset points",
            xytext=(dx, dy),
            fontsize=fontsize,
            color=color,
            ha="left" if dx >= 0 else "right",
            va="bottom",
            arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5, "alpha": 0.6} if far else None,
        )


def write_plots(results: dict, out: str) -> list[str]:
    """top-1 against the parameters added to the baseline (symmetric log scale: ECA's +9 and
    GSoP's +270k on one axis) and against latency; error bars = std over seeds; one labelled
    point per module, coloured by kind; the baseline's accuracy as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["top1_mean"] is not None and r["params"] is not None]
    base = next((r for r in rows if r["module"] == BASELINE), None)
    base_params = base["params"] if base is not None else 0
    paths = []
    plots = (
        ("params", "parameters added to the baseline (symmetric log scale)", "top1_vs_params.png"),
        ("latency_ms", "latency at batch 1 (ms, median forward, eval)", "top1_vs_latency.png"),
    )
    for key, label, fname in plots:
        fig, ax = plt.subplots(figsize=(12, 8), dpi=110)
        kinds_seen: dict = {}
        points = []
        for r in rows:
            if r[key] is None:
                continue
            x = r[key] - base_params if key == "params" else r[key]
            color = _KIND_COLORS.get(r["kind"], "tab:gray")
            h = ax.errorbar(
                x,
                r["top1_mean"],
                yerr=r["top1_std"],
                fmt="o" if r["module"] != BASELINE else "D",
                color=color,
                ecolor=color,
                elinewidth=1,
                capsize=3,
                alpha=0.9,
                markersize=6 if r["module"] != BASELINE else 8,
            )
            kinds_seen.setdefault(r["kind"], h)
            points.append((x, r["top1_mean"], r["module"], color, r["top1_std"] or 0.0))
        if base is not None:
            ax.axhline(base["top1_mean"], color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        if key == "params":
            ax.set_xscale("symlog", linthresh=10)
            ax.axvline(0, color="black", linewidth=0.5, alpha=0.4)
        ax.margins(x=0.08, y=0.08)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 test accuracy (%), mean ± std over seeds")
        ax.set_title(
            f"{results['arch']} on {results['dataset']}: {results['epochs']} epochs, "
            f"{len(results['seeds'])} seed(s) per module; dashed: no attention"
        )
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
