"""The training configuration as flags, shared by ``train`` and ``compare``.

Every field of :class:`~chanattn.training.config.TrainConfig` is a flag (``batch_size`` ->
``--batch-size``) whose help gives its default and the recipes that change it; the value comes
from, in order, the field's default, the recipe (``--recipe``, or the one ``--dataset`` implies),
``--config FILE`` (YAML or JSON) and the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

from ..training.config import LOGGERS, RECIPES, TrainConfig, resolve_config

__all__ = ["CONFIG_DESTS", "SINGLE_RUN_FIELDS", "add_config_flags", "config_from_args", "default_recipe",
           "given_fields", "recipe_choice"]


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


def _parse_loggers(text: str) -> list[str]:
    out = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in out if v not in LOGGERS]
    if not out or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(LOGGERS)}, comma-separated, got "
                                         f"{text!r}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return json.dumps(value) if value else "none"
    return str(value)


def _field_help(f: dataclasses.Field) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    recipes = [f"{name}: {_show(r[f.name])}" for name, r in RECIPES.items()
               if f.name in r and r[f.name] != default]
    text = f.metadata.get("help", "")
    text += f" (default {_show(default)}" if default is not None else " (default: none"
    text += f"; recipe {', '.join(recipes)})" if recipes else ")"
    return text.replace("%", "%%")


#: The namespace attributes that are TrainConfig fields.
CONFIG_DESTS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "recipe")
#: Fields that make sense for one run only (not for compare's many): flags with ``single_run=True``.
SINGLE_RUN_FIELDS = ("init_from",)


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), *,
                     single_run: bool = False) -> None:
    """One flag per TrainConfig field; flags not given stay out of the namespace (``SUPPRESS``).
    ``single_run``: also the fields of one run only (``--init-from``)."""
    if not single_run:
        skip = (*skip, *SINGLE_RUN_FIELDS)
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group(
        "training configuration", "Each value comes from the field's default, then the recipe, then "
        "--config FILE, then the flags given. Without --recipe or --config the recipe follows "
        "--dataset: digits -> digits, cifar100 -> cifar100, others -> cifar.")
    group.add_argument("--recipe", choices=sorted(RECIPES), default=argparse.SUPPRESS,
                       help="start from a reference recipe (default: chosen from --dataset)")
    group.add_argument("--config", dest="config_file", default=argparse.SUPPRESS, metavar="FILE",
                       help="YAML or JSON file of fields (overrides the recipe; flags override it)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or f.name == "recipe":
            continue
        hint = hints[f.name]
        base = (next((a for a in typing.get_args(hint) if a is not type(None)), hint)
                if isinstance(hint, types.UnionType) else hint)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _field_help(f)}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list and typing.get_args(base) == (str,):
            kw["type"], kw["metavar"], kw["action"] = _parse_loggers, "NAME[,NAME]", "extend"
        elif typing.get_origin(base) is list:
            kw["type"], kw["metavar"] = _parse_int_list, "N,N"
        elif base is dict or typing.get_origin(base) is dict:
            kw["type"], kw["metavar"] = _parse_mapping, "K=V,..."
        else:
            kw["type"] = base if base in (int, float) else str
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given as flags."""
    return {k: getattr(args, k) for k in CONFIG_DESTS if hasattr(args, k)}


def recipe_choice(args: argparse.Namespace) -> tuple[str | None, str]:
    """The recipe a run starts from and how it was chosen, in words for the start of a run:
    ``--recipe``; none with ``--config``; else by ``--dataset`` (digits -> digits, cifar100 ->
    cifar100, others -> cifar: imagefolder has no recipe of its own, so that says so)."""
    if getattr(args, "recipe", None):
        return args.recipe, "--recipe"
    if getattr(args, "config_file", None):
        return None, f"--config {args.config_file} over the TrainConfig defaults; --recipe to start from one"
    dataset = getattr(args, "dataset", None)
    if dataset is None:
        return "digits", "for the default --dataset digits; --recipe to choose another"
    if dataset in ("digits", "cifar100"):
        return dataset, f"from --dataset {dataset}; --recipe to choose another"
    if dataset == "cifar10":
        return "cifar", "from --dataset cifar10; --recipe to choose another"
    return "cifar", (f"--dataset {dataset} has no recipe of its own, so the CIFAR one; give --epochs, "
                     "--milestones, --lr or --recipe for your data")


def default_recipe(args: argparse.Namespace) -> str | None:
    """The recipe a run starts from: ``--recipe``, none with ``--config``, else by ``--dataset``."""
    return recipe_choice(args)[0]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration the flags ask for (recipe < config file < flags)."""
    overrides = given_fields(args)
    if overrides.get("attn") in ("none", "None"):
        overrides["attn"] = None
    return resolve_config(default_recipe(args), getattr(args, "config_file", None), overrides)
