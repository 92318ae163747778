"""Optional dependencies: ``pip install chanattn`` gives the modules, models, attach and safetensors;
the trainer, the exports and the Hub need extras. :func:`require` imports one or says which extra
to install, in one line."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependency

__all__ = ["EXTRAS", "require"]

#: The pip extra that brings each optional top-level package.
EXTRAS = {
    "sklearn": "train", "matplotlib": "train", "yaml": "train",
    "onnx": "export", "onnxruntime": "export", "onnxscript": "export",
    "huggingface_hub": "hub", "timm": "timm", "torchvision": "timm", "tensorboard": "tensorboard",
}


def require(module: str, purpose: str) -> ModuleType:
    """``import module`` (a dotted name), or a :class:`MissingDependency` naming ``purpose`` and the
    extra to install (``pip install 'chanattn[train]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        how = f"pip install 'chanattn[{extra}]'" if extra else f"pip install {top}"
        raise MissingDependency(f"{purpose} needs {top} ({how}): {exc}") from None
