"""Training, evaluation and ``compare``: the recipes of the references on one machine or many.

>>> from chanattn.training import resolve_config, train
>>> cfg = resolve_config("digits", overrides={"attn": "se", "epochs": 2, "out": "runs/se"})  # doctest: +SKIP
>>> summary = train(cfg)  # doctest: +SKIP

The names are imported on first use: :mod:`.config` (the configuration and recipes) needs no
torch, so the command line can build its parser from it without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Callback": ".callbacks",
    "RECIPES": ".config",
    "TrainConfig": ".config",
    "resolve_config": ".config",
    "load_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "run_compare": ".compare",
    "TrainingDiverged": "..errors",
    "build_model": ".trainer",
    "evaluate": ".trainer",
    "evaluate_checkpoint": ".trainer",
    "lr_at": ".trainer",
    "param_groups": ".trainer",
    "train": ".trainer",
    "train_one_epoch": ".trainer",
}

__all__ = [
    "RECIPES", "Callback", "TrainConfig", "TrainingDiverged", "build_model", "evaluate",
    "evaluate_checkpoint", "load_checkpoint", "lr_at", "param_groups", "resolve_config", "run_compare",
    "save_checkpoint", "train", "train_one_epoch",
]  # the names of _EXPORTS (a test checks)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from ..errors import TrainingDiverged
    from .callbacks import Callback
    from .checkpoint import load_checkpoint, save_checkpoint
    from .compare import run_compare
    from .config import RECIPES, TrainConfig, resolve_config
    from .trainer import (
        build_model,
        evaluate,
        evaluate_checkpoint,
        lr_at,
        param_groups,
        train,
        train_one_epoch,
    )
