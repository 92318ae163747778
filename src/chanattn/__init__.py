"""chanattn: channel attention for PyTorch, every module of the SE family behind one factory.

>>> import torch, chanattn
>>> chanattn.create("eca", 256)(torch.randn(2, 256, 14, 14)).shape
torch.Size([2, 256, 14, 14])
>>> chanattn.create_model("resnet20", attn="eca", num_classes=100)(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 100])

The public names are imported on first use (``import chanattn`` alone does not import torch).
The library never imports the command line (:mod:`chanattn.cli`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "KINDS": ".registry",
    "PLACEMENTS": ".registry",
    "ModuleInfo": ".registry",
    "Stage": ".registry",
    "create": ".registry",
    "list_modules": ".registry",
    "module_info": ".registry",
    "param_groups": ".models",
    "register": ".registry",
    "AttentionModule": ".layers",
    "no_weight_decay_names": ".layers",
    "attach": ".models",
    "count_macs": ".models",
    "create_model": ".models",
    "create_paper_model": ".models.papers",
    "list_models": ".models",
    "ChanattnError": ".errors",
    "from_pretrained": ".hub",
    "load_model": ".hub",
    "load_pretrained": ".pretrained",
    "push_to_hub": ".hub",
    "save_pretrained": ".hub",
    "timm_layer": ".timm_compat",
}

__all__ = [
    "KINDS",
    "PLACEMENTS",
    "AttentionModule",
    "ChanattnError",
    "ModuleInfo",
    "Stage",
    "__version__",
    "attach",
    "count_macs",
    "create",
    "create_model",
    "create_paper_model",
    "from_pretrained",
    "list_models",
    "list_modules",
    "load_model",
    "load_pretrained",
    "module_info",
    "no_weight_decay_names",
    "param_groups",
    "push_to_hub",
    "register",
    "save_pretrained",
    "timm_layer",
]  # the names of _EXPORTS (a test checks)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from .errors import ChanattnError
    from .hub import from_pretrained, load_model, push_to_hub, save_pretrained
    from .layers import AttentionModule, no_weight_decay_names
    from .models import attach, count_macs, create_model, list_models, param_groups
    from .models.papers import create_paper_model
    from .pretrained import load_pretrained
    from .registry import KINDS, PLACEMENTS, ModuleInfo, Stage, create, list_modules, module_info, register
    from .timm_compat import timm_layer
