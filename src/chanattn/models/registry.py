"""The model registry: architecture names -> factories, :func:`create_model` and :func:`list_models`."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..errors import InputError
from ..registry import normalize_name, unknown_name_error
from .placement import AttnKwargs, AttnPlan, AttnSpec

__all__ = ["FAMILIES", "ModelInfo", "create_model", "list_models", "model_info", "register_model"]

#: The families of :func:`list_models`.
FAMILIES = ("cifar", "imagenet", "mobile", "plain")

#: The input normalisation a model's ``pretrained_cfg`` gives by family (timm's data config reads
#: it): ImageNet's for the 224x224 families, CIFAR-10's (as :mod:`chanattn.data.cifar`) for the rest.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about an architecture.

    Attributes:
        name: the name :func:`create_model` takes (``"resnet56"``).
        family: one of :data:`FAMILIES` (``"cifar"``: 32x32 inputs, ``"imagenet"``: 224x224 by
            default, with a ``stem`` argument for small inputs).
        description: one line.
        input_size: the (C, H, W) the architecture is made for.
        num_classes: the default number of classes.
        factory: the function that builds it.
        first_conv, classifier: the names of the first convolution and of the classifier in the
            model (as timm's ``pretrained_cfg``).
    """

    name: str
    family: str
    description: str
    input_size: tuple[int, int, int]
    num_classes: int
    factory: Callable[..., nn.Module] = field(repr=False, compare=False)
    first_conv: str = "conv1"
    classifier: str = "fc"

    def default_cfg(self, **overrides) -> dict:
        """The model's ``pretrained_cfg`` as timm's (``timm.models.PretrainedCfg`` fields): input size,
        interpolation, crop, mean, std, classes, ``first_conv``, ``classifier``; no weights
        (chanattn publishes none). ``overrides`` replace fields."""
        imagenet = self.family in ("imagenet", "mobile")
        cfg = {"url": "", "architecture": self.name, "input_size": self.input_size,
               "interpolation": "bilinear", "crop_pct": 0.875 if imagenet else 1.0, "crop_mode": "center",
               "mean": IMAGENET_MEAN if imagenet else CIFAR10_MEAN,
               "std": IMAGENET_STD if imagenet else CIFAR10_STD,
               "num_classes": self.num_classes, "first_conv": self.first_conv, "classifier": self.classifier,
               "license": "mit", "description": self.description}
        cfg.update(overrides)
        return cfg


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, description: str,
                   input_size: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                   first_conv: str = "conv1", classifier: str = "fc"):
    """Decorator that registers a factory ``f(*, attn, attn_kwargs, num_classes, **options)``
    (``first_conv``, ``classifier``: the names of those layers in its models)."""
    if family not in FAMILIES:
        raise InputError(f"register_model({name!r}): family must be one of {FAMILIES}, got {family!r}")

    def decorator(factory):
        if name in _MODELS:
            raise InputError(f"register_model({name!r}): the name is already registered")
        _MODELS[name] = ModelInfo(name, family, description, tuple(input_size), num_classes, factory,
                                  first_conv, classifier)
        return factory

    return decorator


def _ensure_loaded() -> None:
    # The model files register themselves on import; the package imports every one of them.
    from .. import models  # noqa: F401


def model_info(arch: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``arch``.

    Raises:
        ValueError: unknown name; the message lists the close matches.
    """
    _ensure_loaded()
    key = normalize_name(arch, "architecture")
    if key in _MODELS:
        return _MODELS[key]
    raise unknown_name_error("architecture", arch, _MODELS)


def _natural(name: str) -> list:
    # "resnet8" < "resnet18" < "resnet110"
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(family: str | None = None) -> list[str]:
    """Architecture names in natural order (``resnet8`` before ``resnet18``), optionally only those
    of one ``family`` (:data:`FAMILIES`)."""
    _ensure_loaded()
    if family is not None and family not in FAMILIES:
        raise InputError(f"list_models: family must be one of {FAMILIES}, got {family!r}")
    return sorted((n for n, info in _MODELS.items() if family is None or info.family == family), key=_natural)


def create_model(arch: str, attn: AttnSpec = None, num_classes: int | None = None,
                 attn_kwargs: AttnKwargs = None, *, placement: str | None = None, input_size=None,
                 **kwargs) -> nn.Module:
    """Build the architecture ``arch`` with the attention module ``attn`` where its paper puts it.

    The module's registration says where (``chanattn.module_info(name).placement``, MODULES.md
    "Placement in ResNets"): per block on the residual branch after the last BN and before the
    addition (most modules; ``gsop`` in the last block of each stage; ``dia`` with one cell shared
    per stage); ``c3`` before each stage; ``gct`` before every convolution; ``bam`` after the stages
    followed by a downsampling; ``soca`` after every stage; ``encnet`` once after the last stage;
    ``sk`` in place of the 3x3 convolutions. Its per-stage settings follow its paper's models at
    this input size (``fca``'s DCT grid, ``ge_theta``/``ge_theta_plus``'s global extent, ``c3``'s
    working grid, ``eca``'s released kernels, ``gsop``'s reduction stride), and so do the backbone
    options its paper's models use where the architecture takes them (``gsop``: the ImageNet
    ResNets' last stage at stride 1). See :mod:`chanattn.models.placement`.

    Args:
        arch: a name of :func:`list_models` (``"resnet20"``, ``"resnet50"``, ``"mobilenet_v2"``).
        attn: a registered module name (:func:`chanattn.list_modules`), a callable
            ``f(channels, **kwargs)`` returning a module (placed per block unless ``placement``
            says otherwise), or None.
        num_classes: default: the architecture's (10 for the CIFAR family, 1000 for ImageNet); 0:
            no classifier, the model returns its pooled features (timm's convention).
        attn_kwargs: options for the attention module's constructor, over its per-stage settings:
            a dict, or a callable ``f(stage) -> dict | None`` of the
            :class:`~chanattn.registry.Stage` (index, channels, size ...; None: no module there).
        placement: another placement than the module's paper's (one of
            :data:`chanattn.registry.PLACEMENTS`: ``"block"``, ``"stage_start"``, ...); the paper's
            backbone options then do not apply.
        input_size: the input (H, W) (or an int) the model is built for, which fixes its stages'
            feature sizes; default: the architecture's (224 for ImageNet models, 32 with
            ``stem="cifar"`` and for the CIFAR family).
        **kwargs: the architecture's options (``in_chans``, ``stem``, ``shortcut``, ``head``,
            ``stride_in_1x1`` ...).

    Example:
        >>> import torch, chanattn
        >>> m = chanattn.create_model("resnet20", attn="se", num_classes=100)
        >>> m(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    info = model_info(arch)
    owner = f"create_model({arch!r})"
    if num_classes is None:
        num_classes = info.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise InputError(f"{owner}: num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
    signature = inspect.signature(info.factory)
    options = sorted(p for p in signature.parameters if p not in ("attn", "attn_kwargs", "num_classes"))
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise InputError(f"{owner}: unknown option(s) {', '.join(unknown)} "
                         f"(the options of {arch}: {', '.join(options)})")
    plan = AttnPlan(attn, attn_kwargs, placement=placement, arch=info.name, input_size=input_size,
                    owner=owner)
    if plan.info is not None and placement in (None, plan.info.placement):
        for key, value in plan.info.backbone.items():
            if key in options:
                kwargs.setdefault(key, value)
    model = info.factory(attn=plan, attn_kwargs=None, num_classes=num_classes, **kwargs)
    # how to build it again (chanattn.save_pretrained, load_model, export --checkpoint), as timm's
    # pretrained_cfg: a callable attn (or attn_kwargs) cannot be written down; placement and
    # input_size go with the architecture's options, which create_model takes back
    named = (attn is None or isinstance(attn, str)) and not plan.kwargs_fn
    built = dict(kwargs)
    if placement is not None:
        built["placement"] = placement
    if input_size is not None:
        built["input_size"] = list(plan.input_size) if plan.input_size else input_size
    model.chanattn_config = {"arch": info.name, "attn": attn if named else None, "attn_callable": not named,
                             "attn_kwargs": dict(plan.kwargs), "num_classes": num_classes,
                             "model_kwargs": built}
    # timm's description of the model's input and layers (timm.create_model replaces it with the
    # registered one of chanattn.timm, the same fields)
    size = getattr(model, "default_input_size", None) or info.input_size[1:]
    small = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD, "crop_pct": 1.0} if kwargs.get("stem") == "cifar" \
        else {}
    model.pretrained_cfg = model.default_cfg = info.default_cfg(
        input_size=(kwargs.get("in_chans", info.input_size[0]), *size), num_classes=num_classes, **small)
    return model
