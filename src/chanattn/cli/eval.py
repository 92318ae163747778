"""``chanattn eval``: top-1, top-5 and loss of a checkpoint."""

from __future__ import annotations

import argparse
import json

from ._args import positive


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(name, parents=parents, help="top-1/top-5 of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, or a run directory (its best.pt)")
    p.add_argument("--dataset", default=None, help="default: the data set it was trained on")
    p.add_argument("--data-root", default=None, help="directory of the data set")
    p.add_argument("--download", action="store_true", help="download CIFAR when it is missing")
    p.add_argument("--split", default="test", choices=("train", "test"), help="the split to evaluate")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=positive, default=512, help="evaluation batch")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import evaluate_checkpoint

    r = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_root=args.data_root,
                            download=args.download, split=args.split, device=args.device,
                            batch_size=args.batch_size)
    print(f"{r['arch']}{'+' + r['attn'] if r['attn'] else ''} (epoch {r['epoch']}) on {r['dataset']} "
          f"{r['split']} ({r['examples']} images): top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  "
          f"loss {r['loss']:.4f}")
    if args.json:
        print(json.dumps(r))
    return 0
