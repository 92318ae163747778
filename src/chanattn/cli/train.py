"""``chanattn train``: train a model on one machine, or on many under torchrun."""

from __future__ import annotations

import argparse
import os

from ..errors import TrainingDiverged
from ..training.config import RUNTIME_FIELDS
from ._args import UsageError
from ._config import add_config_flags, config_from_args, given_fields


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(
        name, parents=parents, help="train a model (one machine, or many under torchrun)",
        description="Train --arch with --attn on --dataset; torchrun --nproc_per_node N -m chanattn "
                    "train ... trains with DistributedDataParallel.")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR (its last.pt) with its saved configuration")
    add_config_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.config import resolve_config
    from ..training.trainer import train

    resume = args.resume
    if resume is not None:
        given = given_fields(args)
        changed = sorted(set(given) - set(RUNTIME_FIELDS))
        if changed:
            raise UsageError(
                f"--resume continues a run with its saved config; these flags would change it: "
                f"{', '.join('--' + c.replace('_', '-') for c in changed)}")
        cfg = resolve_config(None, None, given)
        if not (os.path.isdir(resume) or os.path.isfile(resume)):
            raise UsageError(f"--resume {resume!r}: no such run directory or checkpoint")
    else:
        cfg = config_from_args(args)
        if cfg.out is None:
            raise UsageError("--out DIR is required (the run directory for checkpoints and metrics)")
    try:
        summary = train(cfg, resume=resume)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary["world_size"] > 1 and not summary["ranks_in_sync"]:
        raise TrainingDiverged(
            f"the {summary['world_size']} ranks ended with different weights: {summary['weight_digests']}")
    out = cfg.out if resume is None else (resume if os.path.isdir(resume) else os.path.dirname(resume))
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if summary["finished"] else f"stopped after epoch {summary['epochs_done']}"
        print(f"{state}: test top-1 {summary['final_top1']:.2f}% (best {summary['best_top1']:.2f}% at epoch "
              f"{summary['best_epoch']}), top-5 {summary['final_top5']:.2f}%; run directory {out}")
    return 0
