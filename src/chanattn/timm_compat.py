"""chanattn inside timm: :func:`timm_layer` gives what timm's attention slots take.

timm builds attention with ``create_attn(attn_layer, channels, device=..., dtype=...)`` in its
ResNet family (``block_args=dict(attn_layer=...)``) and ``se_layer(channels, act_layer=...,
rd_ratio=..., device=..., dtype=...)`` in its EfficientNet/MobileNetV3 blocks. Every chanattn
module class takes those keywords (:class:`chanattn.AttentionModule`), so a class works as it is;
:func:`timm_layer` adds a registered name and default options:

>>> import timm, chanattn
>>> model = timm.create_model("resnet18", block_args=dict(attn_layer=chanattn.timm_layer("eca")))
>>> se = chanattn.timm_layer("se", gate_layer="hard_sigmoid")
>>> model = timm.create_model("efficientnet_b0", se_layer=se)
"""

from __future__ import annotations

import functools
import inspect

from .errors import InputError
from .registry import module_info

__all__ = ["timm_layer"]


def timm_layer(name: str, **defaults) -> functools.partial:
    """The module registered as ``name`` as timm's ``attn_layer`` / ``se_layer`` take it: a callable
    ``f(channels, **kwargs)`` (the class with ``defaults`` bound; keywords timm passes override
    them, ``act_layer``/``rd_ratio`` are ignored by a module without such a layer).

    Raises:
        InputError: an unknown name, or a default the module's constructor does not take.
    """
    cls = module_info(name).cls
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(defaults) - set(params))
        if unknown:
            options = ", ".join(p for p in params if p not in ("self", "channels"))
            raise InputError(f"timm_layer({name!r}): {cls.__name__} takes no option(s) {', '.join(unknown)} "
                             f"(its options: {options})")
    return functools.partial(cls, **defaults)
