"""``chanattn train``: train a model on one machine, or on many under torchrun.

A run directory is never overwritten silently: ``--out DIR`` that holds a run is refused unless
``--overwrite`` (start over) or ``--resume`` (``auto``: continue when DIR has a checkpoint, start
otherwise; ``DIR``: continue that run). Without ``--threads`` the torch threads follow
:func:`chanattn.training.threads.choose_threads` (the usable cores, the load, the ranks on this
machine); a busy machine is reported in one line at the start of the run.
"""

from __future__ import annotations

import argparse
import os

from ..errors import TrainingDiverged
from ..training.config import RUNTIME_FIELDS
from ._args import UsageError
from ._config import add_config_flags, config_from_args, given_fields, recipe_choice


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(
        name, parents=parents, help="train a model (one machine, or many under torchrun)",
        description="Train --arch with --attn on --dataset into --out DIR; torchrun --nproc_per_node N "
                    "-m chanattn train ... --resume auto trains with DistributedDataParallel and "
                    "resumes by itself when torchrun restarts its workers.")
    p.add_argument("--resume", metavar="DIR|auto", default=None,
                   help="DIR: continue the run in DIR (its last.pt) with its saved configuration (only "
                        "runtime flags and --epochs may be given); auto: continue the run in --out when "
                        "it has a checkpoint, else start it (give the run's full flags: the form for "
                        "torchrun, whose restarts repeat the command)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds a run (its config.yaml, metrics.jsonl, "
                        "metrics.csv, summary.json, TensorBoard events and checkpoints are deleted first)")
    add_config_flags(p, single_run=True)
    p.set_defaults(run=run)


def set_threads(given: dict) -> None:
    """Without ``--threads``, torch threads by :func:`~chanattn.training.threads.pick_threads` (the
    one rule of train, compare and bench: ``OMP_NUM_THREADS`` when set, else from the usable cores,
    the 1-minute load and the ranks on this machine); the trainer's start lines warn when the
    machine is busy."""
    if given.get("threads"):
        return
    import torch

    from ..training import threads

    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(threads.pick_threads(None, ranks)[0])


def run(args: argparse.Namespace) -> int:
    from ..training.config import resolve_config
    from ..training.trainer import train

    resume = args.resume
    given = given_fields(args)
    if resume is not None and args.overwrite:
        raise UsageError("--overwrite starts the run over and --resume continues it: give one of them")
    epochs, note = None, None
    if resume not in (None, "auto"):
        changed = sorted(set(given) - set(RUNTIME_FIELDS) - {"epochs"})
        if changed:
            raise UsageError(
                f"--resume continues a run with its saved config; these flags would change it: "
                f"{', '.join('--' + c.replace('_', '-') for c in changed)} (only --epochs, to extend or "
                "shorten its schedule, and the runtime flags may be given)")
        if not (os.path.isdir(resume) or os.path.isfile(resume)):
            raise UsageError(f"--resume {resume!r}: no such run directory or checkpoint")
        cfg = resolve_config(None, None, {k: v for k, v in given.items() if k in RUNTIME_FIELDS})
        epochs = given.get("epochs")
    else:
        cfg = config_from_args(args)
        if cfg.out is None:
            raise UsageError("--out DIR is required (the run directory for checkpoints and metrics)")
        note = recipe_choice(args)[1]
    set_threads(given)
    try:
        summary = train(cfg, resume=resume, overwrite=args.overwrite, epochs=epochs, recipe_note=note)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary["world_size"] > 1 and not summary["ranks_in_sync"]:
        raise TrainingDiverged(
            f"the {summary['world_size']} ranks ended with different weights: {summary['weight_digests']}")
    out = (cfg.out if resume in (None, "auto")
           else (resume if os.path.isdir(resume) else os.path.dirname(resume)))
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if summary["finished"] else f"stopped after epoch {summary['epochs_done']}"
        print(f"{state}: test top-1 {summary['final_top1']:.2f}% (best {summary['best_top1']:.2f}% at epoch "
              f"{summary['best_epoch']}), top-5 {summary['final_top5']:.2f}%; run directory {out}")
    return 0
