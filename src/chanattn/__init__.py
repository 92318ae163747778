"""chanattn: channel attention for PyTorch, every module of the SE family behind one factory.

>>> import torch, chanattn
>>> chanattn.create("eca", 256)(torch.randn(2, 256, 14, 14)).shape
torch.Size([2, 256, 14, 14])
>>> chanattn.create_model("resnet20", attn="eca", num_classes=100)(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 100])
"""

from __future__ import annotations

from .layers import AttentionModule, no_weight_decay_names
from .models import attach, count_macs, create_model, list_models
from .registry import KINDS, ModuleInfo, create, list_modules, module_info, register

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "AttentionModule",
    "ModuleInfo",
    "__version__",
    "attach",
    "count_macs",
    "create",
    "create_model",
    "list_models",
    "list_modules",
    "module_info",
    "no_weight_decay_names",
    "register",
]
