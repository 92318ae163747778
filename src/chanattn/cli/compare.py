"""``chanattn compare``: train the baseline and each module with the same recipe and seeds; write
the table and the plots."""

from __future__ import annotations

import argparse
import os
import sys

from ._args import UsageError, positive
from ._config import add_config_flags, config_from_args, recipe_choice


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(
        name, parents=parents, help="train the baseline and each module; write the table and plots",
        description="Train the baseline and every module of --modules with the same recipe and seeds; "
                    "write DIR/table.csv, table.md, results.json and two plots.")
    p.add_argument("--modules", default="all", help="comma-separated names, or all")
    p.add_argument("--seeds", type=positive, default=3, help="seeds per module: --seed, --seed+1, ...")
    p.add_argument("--jobs", type=positive, default=1,
                   help="runs trained in parallel processes; without --threads each gets the usable "
                        "cores minus the 1-minute load average, divided by the jobs, at least 1")
    p.add_argument("--no-baseline", action="store_true", help="skip the model without attention")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument("--latency-repeats", type=positive, default=20,
                   help="interleaved timed repeats of each model's forward (median and quartiles)")
    add_config_flags(p, skip=("attn",))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.compare import parse_modules, run_compare, seeds_from, text_table, title

    if getattr(args, "out", None) is None:
        raise UsageError("--out DIR is required (the directory for runs, table and plots)")
    modules = parse_modules(args.modules)
    seeds = seeds_from(args.seeds, getattr(args, "seed", 0))
    cfg = config_from_args(args)
    results = run_compare(cfg, modules, seeds, cfg.out, jobs=args.jobs, include_baseline=not args.no_baseline,
                          latency_repeats=args.latency_repeats, plots=not args.no_plots,
                          log=lambda msg: print(msg, file=sys.stderr, flush=True),
                          recipe_note=recipe_choice(args)[1])
    print()
    print(title(results))
    print(text_table(results))
    files = ["table.csv", "table.md", "results.json"] + (
        [] if args.no_plots else ["top1_vs_params.png", "top1_vs_latency.png"])
    print("written: " + ", ".join(os.path.join(cfg.out, f) for f in files))
    failed = [r for r in results["rows"] if r["errors"]]
    return 1 if failed else 0
