"""``chanattn train``, ``chanattn eval`` and ``chanattn compare``.

Every field of :class:`~chanattn.training.config.TrainConfig` is a flag (``batch_size`` ->
``--batch-size``); the value comes from, in order, the field's default, ``--recipe``, ``--config FILE``
(YAML or JSON) and the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from typing import Any

from ..errors import CLIError
from .config import RECIPES, RUNTIME_FIELDS, TrainConfig, resolve_config

__all__ = ["add_config_flags", "add_parsers", "config_from_args"]

_HELP = {
    "dataset": "digits (embedded), cifar10, cifar100 or imagefolder",
    "data_root": "directory of the data set (CIFAR archives, or imagefolder's train/ and val/)",
    "download": "download CIFAR into --data-root when missing",
    "arch": "architecture (chanattn models)",
    "attn": "attention module (chanattn list), or none",
    "attn_kwargs": "module options as JSON or k=v,k=v (e.g. rd_ratio=0.125)",
    "model_kwargs": "architecture options as JSON or k=v,k=v (e.g. shortcut=pad)",
    "batch_size": "global batch (split over the ranks)",
    "milestones": "comma-separated epochs of the multistep schedule",
    "amp": "mixed precision: none, bf16 or fp16 (fp16 needs CUDA)",
    "device": "auto, cpu, cuda or cuda:N",
    "stop_after": "stop after this epoch (the schedule still spans --epochs; continue with --resume)",
    "progress": "auto (bar on a terminal), bar, lines or none",
}


def _parse_mapping(text: str) -> dict:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return value
    out: dict[str, Any] = {}
    for item in text.split(","):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected k=v pairs separated by commas, got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _parse_int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field; unset flags stay out of the namespace (``SUPPRESS``)."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training configuration (defaults: the recipe, then TrainConfig)")
    group.add_argument(
        "--recipe", choices=sorted(RECIPES), default=argparse.SUPPRESS, help="start from a reference recipe"
    )
    group.add_argument(
        "--config",
        dest="config_file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="YAML or JSON file of fields (overrides the recipe; flags override it)",
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or f.name == "recipe":
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = (
            next((a for a in args if a is not type(None)), hint)
            if isinstance(hint, types.UnionType)
            else hint
        )
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _HELP.get(f.name)}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:
            kw["type"], kw["metavar"] = _parse_int_list, "N,N"
        elif base is dict or typing.get_origin(base) is dict:
            kw["type"], kw["metavar"] = _parse_mapping, "K=V,..."
        else:
            kw["type"] = base if base in (int, float) else str
        group.add_argument(flag, **kw)


_NOT_CONFIG = {
    "command",
    "func",
    "debug",
    "recipe",
    "config_file",
    "resume",
    "modules",
    "seeds",
    "jobs",
    "no_baseline",
    "no_plots",
    "latency_repeats",
    "checkpoint",
    "split",
}


def config_from_args(args: argparse.Namespace, default_recipe: str | None = None) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    if overrides.get("attn") in ("none", "None"):
        overrides["attn"] = None
    recipe = getattr(args, "recipe", None) or default_recipe
    return resolve_config(recipe, getattr(args, "config_file", None), overrides)


def _default_recipe(args: argparse.Namespace) -> str | None:
    if getattr(args, "recipe", None) or getattr(args, "config_file", None):
        return None
    dataset = getattr(args, "dataset", "digits")
    return "digits" if dataset == "digits" else ("cifar100" if dataset == "cifar100" else "cifar")


def _cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    resume = getattr(args, "resume", None)
    if resume is not None:
        given = {k for k in vars(args) if k not in _NOT_CONFIG}
        allowed = set(RUNTIME_FIELDS)
        changed = sorted(given - allowed)
        if changed:
            raise CLIError(
                f"--resume continues a run with its saved config; these flags would change it: "
                f"{', '.join('--' + c.replace('_', '-') for c in changed)}"
            )
        cfg = resolve_config(None, None, {k: getattr(args, k) for k in given & allowed})
        if not (os.path.isdir(resume) or os.path.isfile(resume)):
            raise CLIError(f"--resume {resume!r}: no such run directory or checkpoint")
    else:
        cfg = config_from_args(args, _default_recipe(args))
        if cfg.out is None:
            raise CLIError("--out DIR is required (the run directory for checkpoints and metrics)")
    try:
        summary = train(cfg, resume=resume)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary["world_size"] > 1 and not summary["ranks_in_sync"]:
        raise CLIError(
            f"the {summary['world_size']} ranks ended with different weights: {summary['weight_digests']}"
        )
    out = cfg.out if resume is None else (resume if os.path.isdir(resume) else os.path.dirname(resume))
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if summary["finished"] else f"stopped after epoch {summary['epochs_done']}"
        print(
            f"{state}: test top-1 {summary['final_top1']:.2f}% (best {summary['best_top1']:.2f}% at epoch "
            f"{summary['best_epoch']}), top-5 {summary['final_top5']:.2f}%; run directory {out}"
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .trainer import evaluate_checkpoint

    r = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        data_root=args.data_root,
        download=args.download,
        split=args.split,
        device=args.device,
        batch_size=args.batch_size,
    )
    print(
        f"{r['arch']}{'+' + r['attn'] if r['attn'] else ''} (epoch {r['epoch']}) "
        f"on {r['dataset']} {r['split']} "
        f"({r['examples']} images): top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}"
    )
    if args.json:
        print(json.dumps(r))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import parse_modules, run_compare, seeds_from, text_table, title

    if getattr(args, "out", None) is None:
        raise CLIError("--out DIR is required (the directory for runs, table and plots)")
    modules = parse_modules(args.modules)
    seeds = seeds_from(args.seeds, getattr(args, "seed", 0))
    cfg = config_from_args(args, _default_recipe(args))
    results = run_compare(
        cfg,
        modules,
        seeds,
        cfg.out,
        jobs=args.jobs,
        include_baseline=not args.no_baseline,
        latency_repeats=args.latency_repeats,
        plots=not args.no_plots,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print()
    print(title(results))
    print(text_table(results))
    files = ["table.csv", "table.md", "results.json"] + (
        [] if args.no_plots else ["top1_vs_params.png", "top1_vs_latency.png"]
    )
    print("written: " + ", ".join(os.path.join(cfg.out, f) for f in files))
    failed = [r for r in results["rows"] if r["errors"]]
    return 1 if failed else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (one machine, or many under torchrun)",
        description="Train --arch with --attn on --dataset; torchrun --nproc_per_node N -m chanattn "
        "train ... trains with DistributedDataParallel.",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue the run in DIR (its last.pt) with its saved configuration",
    )
    add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, or a run directory (best.pt)")
    p.add_argument("--dataset", default=None, help="default: the data set it was trained on")
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "compare",
        help="train the baseline and each module; write the table and plots",
        description="Train the baseline and every module of --modules with the same recipe and "
        "seeds; write DIR/table.csv, table.md, results.json and two plots.",
    )
    p.add_argument("--modules", default="all", help="comma-separated names, or all (default)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per module (default 3: --seed, --seed+1, ...)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes (1 thread each)")
    p.add_argument("--no-baseline", action="store_true", help="skip the model without attention")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--latency-repeats", type=int, default=20)
    add_config_flags(p, skip=("attn",))
    p.set_defaults(func=_cmd_compare)
