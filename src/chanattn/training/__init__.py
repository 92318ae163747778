"""Training, evaluation and ``compare``: the recipes of the references on one machine or many.

>>> from chanattn.training import resolve_config, train
>>> cfg = resolve_config("digits", overrides={"attn": "se", "epochs": 2, "out": "runs/se"})  # doctest: +SKIP
>>> summary = train(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from .checkpoint import load_checkpoint, save_checkpoint
from .compare import run_compare
from .config import RECIPES, TrainConfig, resolve_config
from .trainer import TrainingDiverged, build_model, evaluate, evaluate_checkpoint, lr_at, param_groups, train

__all__ = [
    "RECIPES",
    "TrainConfig",
    "TrainingDiverged",
    "build_model",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "lr_at",
    "param_groups",
    "resolve_config",
    "run_compare",
    "save_checkpoint",
    "train",
]
