"""Backbones that take any attention module, and :func:`attach` for the models users already have.

>>> import chanattn
>>> model = chanattn.create_model("resnet56", attn="eca", num_classes=100)
>>> "resnet56" in chanattn.list_models()
True
"""

from __future__ import annotations

import importlib
import pkgutil

from .attachment import Insertion, attach, attached_parameters, find_blocks, param_groups
from .profile import count_macs, count_params
from .registry import FAMILIES, ModelInfo, create_model, list_models, model_info, register_model

# Every file of this package is imported, so the architectures they register are known (as the
# modules of chanattn.modules): a new architecture needs no other edit.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "FAMILIES",
    "Insertion",
    "ModelInfo",
    "attach",
    "attached_parameters",
    "count_macs",
    "count_params",
    "create_model",
    "find_blocks",
    "list_models",
    "model_info",
    "param_groups",
    "register_model",
]
