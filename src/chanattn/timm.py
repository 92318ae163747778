"""chanattn's models in timm's registry: ``import chanattn.timm``, then ``timm.create_model`` builds them.

>>> import timm, chanattn.timm
>>> model = timm.create_model("chanattn_resnet50_eca", num_classes=10)
>>> model = timm.create_model("chanattn_resnet50", attn="cbam", attn_kwargs={"rd_ratio": 1 / 8})
>>> backbone = timm.create_model("chanattn_cbam_resnet50", features_only=True, out_indices=(2, 3, 4))

``import chanattn`` alone never imports timm; importing this module (or calling :func:`register`,
which importing does) registers the names below with ``timm.models.register_model``, with a
``pretrained_cfg`` each (``generate_default_cfgs``), and builds them through
``timm.models.build_model_with_cfg``, so timm's options work as for its own models:
``num_classes`` (0: no classifier), ``in_chans``, ``global_pool``, ``drop_rate``, ``device``,
``dtype``, ``features_only`` with ``out_indices`` and ``feature_cls``, ``pretrained_cfg_overlay``
(``file=`` loads weights of your own, e.g. a ``model.safetensors`` of
:func:`chanattn.save_pretrained`). Any other keyword goes to :func:`chanattn.create_model`
(``attn_kwargs``, ``placement``, ``stem``, ``stride_in_1x1`` ...).

The names (:data:`ENTRIES`; ``timm.list_models("chanattn_*")``):

- ``chanattn_<arch>`` for every architecture of :func:`chanattn.list_models`, without attention
  unless ``attn=`` names a module: every architecture x module pair (21 x 41, and every placement)
  through 21 names instead of some 900.
- ``chanattn_<arch>_<attn>`` for the pairs people most often ask for, :data:`COMMON_ARCHS` x
  :data:`COMMON_ATTNS` (those that build: ``fca`` needs channels in multiples of 16, which
  MobileNetV2's 24-channel stage is not), for tools that take a bare name (timm's ``train.py
  --model``).
- ``chanattn_<paper model>`` for every model of :mod:`chanattn.models.papers` (the options its
  paper uses, ``pretrained_cfg`` with the paper's input and classes).

No name has pretrained weights: ``pretrained=True`` raises :class:`~chanattn.errors.NoPretrainedWeights`
before anything is built, unless ``pretrained_cfg_overlay`` gives a weight file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from ._optional import require
from .errors import InputError, NoPretrainedWeights
from .models import create_model, list_models, model_info
from .models.papers import PAPER_MODELS, PaperModel
from .models.registry import CIFAR100_MEAN, CIFAR100_STD
from .registry import module_info

_timm = require("timm", "chanattn.timm (chanattn's models in timm's registry)")
from timm.models import build_model_with_cfg, generate_default_cfgs  # noqa: E402
from timm.models import register_model as _timm_register_model  # noqa: E402
from timm.models._builder import pretrained_cfg_for_features, resolve_pretrained_cfg  # noqa: E402
from timm.models._features import FeatureDictNet, FeatureHookNet, FeatureListNet  # noqa: E402

__all__ = ["COMMON_ARCHS", "COMMON_ATTNS", "ENTRIES", "PREFIX", "TimmEntry", "register"]

#: The prefix of every name chanattn registers in timm (timm's own names stay untouched).
PREFIX = "chanattn_"

#: The architectures with a name per common module: the ImageNet ResNets people fine-tune, the CIFAR
#: ResNets of the papers' tables, MobileNetV2.
COMMON_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "resnet20", "resnet56",
                "mobilenet_v2")
#: The modules with a name per common architecture: the channel-attention modules most used and
#: compared (SE, ECA, CBAM, BAM, SK, FcaNet, GC, SRM, GCT, coordinate attention, SimAM, triplet).
COMMON_ATTNS = ("se", "eca", "cbam", "bam", "sk", "fca", "gc", "srm", "gct", "coord", "simam", "triplet")
#: Pairs of COMMON_ARCHS x COMMON_ATTNS that do not build, and why.
_SKIPPED = {("mobilenet_v2", "fca"): "fca needs channels in multiples of 16; MobileNetV2 has 24-channel ones"}
#: Architectures whose classifier dropout is an option of their own (timm's drop_rate maps to it).
_HEAD_DROPOUT = {"mobilenet_v2": "dropout"}
#: What timm's features_only takes, besides out_indices.
_FEATURE_KEYS = ("out_indices", "feature_cls", "output_fmt", "feature_concat", "flatten_sequential")


@dataclass(frozen=True)
class TimmEntry:
    """A name chanattn registers in timm and what it builds.

    Attributes:
        name: the timm name (``"chanattn_resnet50_eca"``).
        arch: of :func:`chanattn.create_model`.
        attn: the module (None: none, or ``attn=`` at creation where ``fixed`` is False).
        options: the other arguments of :func:`chanattn.create_model` (a paper model's).
        fixed: whether the name fixes the attention (``attn=`` is then refused).
        cfg: the ``pretrained_cfg`` (timm's ``PretrainedCfg`` fields).
    """

    name: str
    arch: str
    attn: str | None
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    fixed: bool = True
    cfg: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


def _paper_entry(paper: PaperModel) -> TimmEntry:
    options = dict(paper.options)
    num_classes = options.get("num_classes", model_info(paper.arch).num_classes)
    overrides: dict[str, object] = {"input_size": paper.input_size, "num_classes": num_classes,
                                    "description": f"{paper.title}: {paper.build}", "paper_name": paper.title,
                                    "notes": tuple(n for n in (paper.source, paper.note) if n)}
    if paper.dataset == "CIFAR-100":
        overrides.update(mean=CIFAR100_MEAN, std=CIFAR100_STD)
    cfg = model_info(paper.arch).default_cfg(**overrides)
    return TimmEntry(PREFIX + paper.name, paper.arch, paper.attn, MappingProxyType(options), True,
                     MappingProxyType(cfg))


def _entries() -> dict[str, TimmEntry]:
    entries: list[TimmEntry] = []
    for arch in list_models():
        info = model_info(arch)
        cfg = info.default_cfg(description=f"{info.description}; any module with attn=<name>")
        entries.append(TimmEntry(PREFIX + arch, arch, None, fixed=False, cfg=MappingProxyType(cfg)))
    for arch in COMMON_ARCHS:
        info = model_info(arch)
        for attn in COMMON_ATTNS:
            if (arch, attn) in _SKIPPED:
                continue
            cfg = info.default_cfg(description=f"{info.description} + {module_info(attn).title} ({attn})")
            entries.append(TimmEntry(f"{PREFIX}{arch}_{attn}", arch, attn, cfg=MappingProxyType(cfg)))
    entries += [_paper_entry(p) for p in PAPER_MODELS]
    out: dict[str, TimmEntry] = {}
    for entry in entries:
        if entry.name in out:
            raise InputError(f"chanattn.timm: two models would be registered as {entry.name!r}")
        out[entry.name] = entry
    return out


#: Every name chanattn registers in timm, in registration order.
ENTRIES: dict[str, TimmEntry] = _entries()


def _build(entry: TimmEntry, *, device=None, dtype=None, drop_rate: float | None = None,
           **kwargs) -> nn.Module:
    """``chanattn.create_model`` of ``entry`` with the keywords timm passes (``build_model_with_cfg``'s
    ``model_cls``)."""
    options = dict(entry.options)
    attn = entry.attn
    if "attn" in kwargs:
        if entry.fixed:
            raise InputError(f"{entry.name}: the name fixes the attention ({entry.attn!r}); for another one "
                             f"use timm.create_model('{PREFIX}{entry.arch}', attn=...)")
        attn = kwargs.pop("attn")
    if isinstance(options.get("attn_kwargs"), Mapping) and isinstance(kwargs.get("attn_kwargs"), Mapping):
        kwargs["attn_kwargs"] = {**options["attn_kwargs"], **kwargs["attn_kwargs"]}  # over the paper's
    options.update(kwargs)
    head_dropout = _HEAD_DROPOUT.get(entry.arch)
    if drop_rate is not None and head_dropout:
        options.setdefault(head_dropout, float(drop_rate))
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = create_model(entry.arch, attn=attn, **options)
    if dtype is not None:
        model.to(dtype=dtype)
    if drop_rate is not None and not head_dropout:
        model.drop_rate = float(drop_rate)
    return model


def _feature_net(model: nn.Module, variant: str, out_indices=None, feature_cls=None, **kwargs) -> nn.Module:
    """``model`` wrapped as timm's ``features_only`` does (``FeatureListNet`` by default), all its
    ``feature_info`` levels unless ``out_indices`` says which."""
    if out_indices is None:
        out_indices = tuple(range(len(model.feature_info)))
    classes = {"list": FeatureListNet, "dict": FeatureDictNet, "hook": FeatureHookNet}
    if feature_cls is None:
        feature_cls = FeatureListNet
    elif isinstance(feature_cls, str):
        key = "hook" if "hook" in feature_cls.lower() else feature_cls.lower()
        if key not in classes:
            raise InputError(f"{variant}: feature_cls must be one of {sorted(classes)} (or a class), "
                             f"got {feature_cls!r}")
        feature_cls = classes[key]
    if isinstance(feature_cls, type) and issubclass(feature_cls, (FeatureDictNet, FeatureHookNet)):
        # MobileNetV2's levels are children of its `features` Sequential
        kwargs.setdefault("flatten_sequential", any("." in f["module"] for f in model.feature_info))
    traits = getattr(model, "_traits", None)
    net = feature_cls(model, out_indices=out_indices, **kwargs)
    if traits is not None:
        net._traits = dict(traits)
    net.pretrained_cfg = net.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return net


def _has_weights(cfg) -> bool:
    sources = (cfg.url, cfg.file, cfg.hf_hub_id, cfg.state_dict)
    return any(sources) or cfg.source in ("hf-hub", "local-dir")


def _create(entry: TimmEntry, pretrained: bool = False, **kwargs) -> nn.Module:
    """The entry point timm calls for ``entry``."""
    if pretrained:
        cfg = resolve_pretrained_cfg(entry.name, kwargs.get("pretrained_cfg"),
                                     kwargs.get("pretrained_cfg_overlay"))
        if not _has_weights(cfg):
            raise NoPretrainedWeights(
                f"{entry.name}: chanattn publishes no pretrained weights (this name registers the "
                f"architecture, randomly initialised); use pretrained=False, or load weights of your own "
                f"with pretrained_cfg_overlay=dict(file='model.safetensors') (chanattn.save_pretrained "
                f"writes one) or checkpoint_path=...")
    features_only = kwargs.pop("features_only", False)
    feature_kwargs = {k: kwargs.pop(k) for k in _FEATURE_KEYS if k in kwargs}
    if feature_kwargs and not features_only:
        raise InputError(f"{entry.name}: {', '.join(sorted(feature_kwargs))} need(s) features_only=True")
    model = build_model_with_cfg(functools.partial(_build, entry), entry.name, pretrained, **kwargs)
    if features_only:
        model = _feature_net(model, entry.name, **feature_kwargs)
    return model


def _entry_point(entry: TimmEntry):
    def create(pretrained: bool = False, **kwargs) -> nn.Module:
        return _create(entry, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = entry.name
    create.__module__ = __name__
    what = f"attn={entry.attn!r}" if entry.fixed else "attn=None or a module name"
    create.__doc__ = (f"{entry.cfg.get('description', entry.arch)}.\n\n"
                      f"chanattn.create_model({entry.arch!r}, {what}) built by timm (:mod:`chanattn.timm`).")
    return create


#: The pretrained cfgs timm's register_model reads from this module (as from its own model files).
default_cfgs = generate_default_cfgs({name: dict(entry.cfg) for name, entry in ENTRIES.items()})
_registered: list[str] = []


def register() -> list[str]:
    """Register :data:`ENTRIES` in timm's registry (done on import; again: nothing happens); returns
    the names."""
    if not _registered:
        for name, entry in ENTRIES.items():
            fn = _entry_point(entry)
            globals()[name] = fn  # timm's register_model lists it in __all__: `from chanattn.timm import *`
            _timm_register_model(fn)
            _registered.append(name)
    return list(_registered)


register()
