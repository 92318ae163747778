"""Small building blocks shared by the modules: the base class with its input checks, layer
factories (activations and gates given as names or callables) and channel arithmetic."""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from .errors import InputError, InputTypeError
from .fast.registry import dispatching

__all__ = [
    "TIMM_SLOT_KWARGS",
    "AttentionModule",
    "LayerSpec",
    "check_positive_int",
    "create_act",
    "largest_divisor_at_most",
    "make_divisible",
    "no_weight_decay_names",
    "reduced_channels",
]

#: A layer given by name (``"relu"``), by class or factory (``nn.ReLU``), or as a module instance
#: (copied for each use).
LayerSpec = str | Callable[[], nn.Module] | nn.Module | None


_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "hard_swish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,  # relu6(x + 3) / 6, eSE and MobileNetV3
    "tanh": nn.Tanh,
    "identity": nn.Identity,
    "none": nn.Identity,
}


def create_act(layer: LayerSpec, *, owner: str = "chanattn") -> nn.Module:
    """An activation (or gate) module from a name, a class/factory, or an instance.

    Args:
        layer: ``"relu"``, ``"sigmoid"``, ``"hard_sigmoid"``, ... (see ``_ACTS``), a class or a
            zero-argument callable returning a module, an ``nn.Module`` (deep-copied), or ``None``
            for the identity.
        owner: the module asking, named in errors.
    """
    if layer is None:
        return nn.Identity()
    if isinstance(layer, str):
        key = layer.strip().lower().replace("-", "_")
        if key not in _ACTS:
            raise InputError(
                f"{owner}: unknown activation {layer!r}; expected one of {', '.join(sorted(_ACTS))} "
                "or a callable returning an nn.Module"
            )
        return _ACTS[key]()
    if isinstance(layer, nn.Module):
        return copy.deepcopy(layer)
    if callable(layer):
        module = layer()
        if not isinstance(module, nn.Module):
            raise InputTypeError(
                f"{owner}: the activation factory {layer!r} returned {type(module).__name__}, "
                "expected an nn.Module"
            )
        return module
    raise InputTypeError(f"{owner}: an activation must be a name, a callable or an nn.Module, got {layer!r}")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``), and up by
    one ``divisor`` where rounding lost more than ``1 - round_limit`` of it (timm's rule)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def reduced_channels(channels: int, rd_ratio: float, rd_channels: int | None = None,
                     rd_divisor: int | None = None, *, owner: str = "chanattn") -> int:
    """The hidden width of a reduction MLP.

    ``rd_channels`` wins when given. Otherwise ``floor(channels * rd_ratio)``, at least 1 (the
    papers' ``C // r``), or, with ``rd_divisor``, ``channels * rd_ratio`` rounded to a multiple of
    ``rd_divisor`` as timm does (``make_divisible(..., round_limit=0)``).
    """
    if rd_channels is not None:
        return check_positive_int(rd_channels, "rd_channels", owner)
    if not (isinstance(rd_ratio, (int, float)) and rd_ratio > 0):
        raise InputError(f"{owner}: rd_ratio must be a positive number, got {rd_ratio!r}")
    if rd_divisor is not None:
        check_positive_int(rd_divisor, "rd_divisor", owner)
        return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
    return max(1, math.floor(channels * rd_ratio + 1e-6))


def check_positive_int(value, what: str, owner: str) -> int:
    """``value`` as an int, or a ValueError naming ``owner`` and ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{owner}: {what} must be a positive int, got {value!r}")
    return value


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is <= ``limit``."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


#: Keyword arguments that timm's attention slots pass (``create_attn(attn_layer, C, device=...,
#: dtype=...)`` in its ResNet blocks; ``se_layer(C, act_layer=..., rd_ratio=..., device=..., dtype=...)``
#: in its EfficientNet blocks). Every module accepts them; one without such a layer ignores them.
TIMM_SLOT_KWARGS = ("act_layer", "rd_ratio")


def _with_factory_kwargs(init: Callable) -> Callable:
    """Wrap a module's ``__init__`` so that it takes ``device=`` and ``dtype=`` (parameters and
    buffers created on that device, the meta device included, then cast to that floating dtype)
    and the keyword arguments of :data:`TIMM_SLOT_KWARGS` it does not have itself (ignored)."""
    sig = inspect.signature(init)
    ignored = tuple(k for k in TIMM_SLOT_KWARGS if k not in sig.parameters)

    @functools.wraps(init)
    def __init__(self, *args, device=None, dtype=None, **kwargs):
        for key in ignored:
            kwargs.pop(key, None)
        if device is None:
            init(self, *args, **kwargs)
        else:
            with torch.device(device):  # factory functions default to it: created there
                init(self, *args, **kwargs)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)  # floating tensors only take the dtype

    params = list(sig.parameters.values())
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None)
             for k in ("device", "dtype") if k not in sig.parameters]
    if extra:
        var = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD] + extra + var
    __init__.__signature__ = sig.replace(parameters=params)
    return __init__


class AttentionModule(nn.Module):
    """Base class of every registered module: keeps ``channels``, checks inputs, and sends each
    call to a fast implementation where one is registered and applies.

    Subclasses write ``forward`` as the paper's formula and call ``self._check_input(x)`` first; it
    raises a ValueError or TypeError that names the module, what it expected and what came,
    instead of a failure deep inside torch. Each subclass's ``forward`` is wrapped when the class
    is defined (:func:`chanattn.fast.registry.dispatching`): a call runs the first fast
    implementation registered for the class in :mod:`chanattn.fast` that applies to it, else the
    formula (:func:`chanattn.explain` says which and why; ``chanattn.fast_paths(False)`` runs the
    formula everywhere).

    Every subclass's constructor also takes ``device=None, dtype=None`` (as torch's layers do; the
    meta device included) and the keyword arguments timm's attention slots pass
    (:data:`TIMM_SLOT_KWARGS`), so the classes drop into ``timm.create_model(...,
    block_args=dict(attn_layer=cls))`` and EfficientNet's ``se_layer`` as they are.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _with_factory_kwargs(cls.__dict__["__init__"])
        formula = cls.__dict__.get("forward")
        if formula is not None and not hasattr(formula, "_formula_owner"):
            cls.forward = dispatching(cls, formula)

    registry_name: str = ""
    kind: str = ""
    #: the smallest H and W the module accepts.
    min_size: int = 1
    #: ``channels`` must be a multiple of this.
    channel_multiple: int = 1
    #: True where a BatchNorm normalises pooled (B, C', 1, 1) features: training needs B >= 2.
    batchnorm_on_pooled: bool = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels", type(self).__name__)
        if channels % self.channel_multiple:
            raise InputError(
                f"{type(self).__name__}: channels must be a multiple of {self.channel_multiple}, "
                f"got {channels}"
            )

    def _label(self) -> str:
        name = f" {self.registry_name!r}" if self.registry_name else ""
        return f"{type(self).__name__}{name} (channels={self.channels})"

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{self._label()} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise InputError(
                f"{self._label()} expects a 4-D input (B, C, H, W), got a {x.dim()}-D tensor "
                f"of shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise InputTypeError(
                f"{self._label()} expects a floating-point input, got dtype {x.dtype}"
            )
        if x.shape[1] != self.channels:
            raise InputError(
                f"{self._label()} expects {self.channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        if x.shape[2] < self.min_size or x.shape[3] < self.min_size:
            raise InputError(
                f"{self._label()} needs H, W >= {self.min_size}, got H={x.shape[2]}, W={x.shape[3]}"
            )
        if self.batchnorm_on_pooled:
            self._require_batch_stats(x.shape[0])

    def _require_batch_stats(self, values_per_channel: int) -> None:
        """In training, a BatchNorm needs more than one value per channel: raise a clear error
        where the batch (times the normalised map's H x W) gives only one."""
        if self.training and values_per_channel < 2:
            raise InputError(
                f"{self._label()} normalises a pooled or 1x1 map with BatchNorm: training needs "
                f"more than one value per channel (a batch of at least 2 here), got "
                f"{values_per_channel} (use eval() for single samples)"
            )

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters the reference trains without weight
        decay. Empty unless a module's paper says otherwise."""
        return set()

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names (as in ``model.named_parameters()``) of the parameters that the attention
    modules inside ``model`` ask to train without weight decay (their ``no_weight_decay()``).

    Norm layers and biases are the trainer's own choice and are not listed here.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, AttentionModule):
            for name in module.no_weight_decay():
                names.add(f"{prefix}.{name}" if prefix else name)
    return names
