"""``chanattn models``: the architectures of ``create_model``."""

from __future__ import annotations

import argparse

FAMILIES = ("cifar", "imagenet", "mobile", "plain")  # chanattn.models.FAMILIES (checked by a test)


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(name, parents=parents, help="print the architectures of create_model")
    p.add_argument("--family", default=None, choices=FAMILIES, help="only this family")
    p.add_argument("--params", action="store_true", help="build each model and count its parameters")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..models import count_params, create_model, list_models, model_info
    from ..table import Column, render

    records = []
    for arch in list_models(args.family):
        info = model_info(arch)
        records.append({"name": arch, "family": info.family, "input": "x".join(map(str, info.input_size)),
                        "classes": info.num_classes, "description": info.description,
                        "params": count_params(create_model(arch)) if args.params else None})
    cols = [Column("name", "name"), Column("family", "family"), Column("input", "input"),
            Column("classes", "classes", "d")]
    cols += [Column("params", "params", ",")] if args.params else []
    cols += [Column("description", "description")]
    print(render(records, cols), end="")
    print(f"\n{len(records)} architectures; chanattn.create_model(name, attn=<module>) puts any module of "
          "`chanattn list` in them")
    return 0
