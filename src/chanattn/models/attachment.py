"""``attach``: put an attention module into a model that already exists (and may have weights).

It finds the residual blocks it knows, groups them into stages, and inserts the module where
:func:`chanattn.create_model` puts it: the placement and per-stage settings of the module's
registration (:data:`chanattn.registry.PLACEMENTS`), read by the same
:class:`~chanattn.models.placement.AttnPlan`. How it inserts, so that every existing parameter
keeps its state-dict key (a checkpoint of the model without attention still loads, and only the
new modules are new):

- torchvision's ``BasicBlock``, ``Bottleneck`` (ResNet, ResNeXt, Wide-ResNet) and MobileNetV2's
  ``InvertedResidual``: the block's class becomes a subclass of its own class (defined here, one
  per block type) whose ``forward`` applies ``self.attn`` after the branch's last BN and before
  the addition, and ``self.pre_attn`` (a ``"stage_start"`` module) on the block's input; the module
  is registered as the block's ``attn`` or ``pre_attn``. The result has the same parameters, in the
  same order and under the same names, as ``create_model`` gives.
- timm's ``BasicBlock`` and ``Bottleneck`` (ResNet, ResNeXt, SE/ECA-ResNet families): timm's own
  attention slot ``se``, which timm applies after the last BN; a block whose slot is taken (an
  SE-ResNet) is an error, not a second module. timm's blocks have no slot before the block.
- chanattn's own blocks: their ``attn`` and ``pre_attn`` slots.

Mobile and newer families, inside the residual branch as their papers put channel attention:

- torchvision's EfficientNet ``MBConv`` and MobileNetV3 ``InvertedResidual``: the SE's place, after
  the depthwise convolution and before the 1x1 projection, with the expanded channels. Where the
  block has an SE (every MBConv, the MobileNetV3 blocks that have one) the module replaces it, as
  the papers that test a module in these networks compare it with the SE in the SE's place
  (Coordinate Attention, Hou et al., CVPR 2021, its EfficientNet-b0 experiment); in the blocks
  without one it goes where the SE would be, so every block gets one module, as in the ResNets.
  The module is the child of the block's ``block`` Sequential at the SE's key
  (``features.1.0.block.1``), or a new child ``attn`` before the projection (the other children
  keep their keys and order).
- torchvision's ``FusedMBConv`` (EfficientNetV2): after the fused 3x3 expansion, before the
  projection (where timm's EdgeResidual, the same block, has its SE slot); after the single
  convolution of a block without expansion: ``block.attn``.
- torchvision's RegNet ``ResBottleneckBlock``: RegNetY's SE (``f.se``, after the 3x3 group
  convolution; RegNetY is RegNetX with SE, Radosavovic et al., CVPR 2020) is replaced; RegNetX
  gets ``f.attn`` there.
- torchvision's ConvNeXt ``CNBlock`` (which has no SE): at the end of the residual branch, after
  the second pointwise layer (back in (B, C, H, W)) and before the layer scale: ``block.attn``.
- timm's EfficientNet/MobileNetV3 blocks (``DepthwiseSeparableConv``, ``InvertedResidual``,
  ``CondConvResidual``, ``EdgeResidual``): their ``se`` slot, whose SE is replaced.
  (timm's plain ``ConvBnAct`` stem blocks get none.)
- timm's ResNetV2 ``PreActBasic``, ``PreActBottleneck`` and ``Bottleneck``: a subclass as for
  torchvision's ResNet blocks, with ``attn`` after the branch's last convolution (its last BN
  for ``Bottleneck``), before DropPath and the addition (``pre_attn`` on the block's input).
- timm's CSPNet ``BottleneckBlock``: its ``attn3`` slot (after the last conv + BN, before the
  addition: timm's ``attn_last``, the SE-ResNet place); ``DarkBlock`` and ``EdgeBlock``: their
  only slot ``attn``, after the first convolution (where timm's cs3se_edgenet puts its SE, which
  is replaced).

A module that cannot take a block's channels (FcaNet's multiple of 16, SA's groups) is an
``InputError`` naming the module, the blocks and the module's reason. An SE in timm's ResNet
family (SE-ResNet) is not replaced but an error, as before (the ResNet papers add a module to a
plain ResNet).

``init="identity"``: every inserted module is wrapped in
:class:`~chanattn.models.placement.IdentityInit`, y = b(x) + alpha (attn(x) - b(x)) with a learnable
scalar alpha = 0, b the identity or the SE it replaces: the network computes exactly what it did
before attach (a pretrained network starts fine-tuning undamaged), and the gradient on alpha moves
it away from the first step. :func:`param_groups` gives the parameters attach added (marked on the
modules at insertion) their own learning rate.

State-dict keys after attach: every existing key is kept (a replaced SE's keys are gone, or with
``init="identity"`` move under ``<slot>.base.``); the new module's keys are ``<block>.attn.*`` (or
the slot named above: ``<block>.se.*``, ``<block>.attn3.*``, ``<block>.block.<i>.*``,
``<block>.f.se.*``), ``<first block>.pre_attn.*``, ``<conv>.attn.*`` or ``<stage>.<n>.*``; with
``init="identity"`` they move under ``<slot>.module.*`` beside ``<slot>.alpha``. A state dict of
the same model attached without ``init`` loads into an identity-attached one (alpha = 1).
- a module after a stage (``bam``, ``soca``, ``encnet``): appended to the stage's
  ``nn.Sequential`` (``layer1`` ...), or, where the stage has no container of its own
  (MobileNetV2's flat ``features``), its last block is wrapped in
  :class:`~chanattn.models.placement.AttnAfter`.
- a module before every convolution (``gct``): each plain ``nn.Conv2d`` (outside attention
  modules) becomes a :class:`~chanattn.models.placement.PreAttnConv2d` with the module as its
  ``attn``.

Per-stage settings that depend on the feature sizes (``fca``, ``ge_theta``, ``c3``) are taken at
``input_size`` (default: the size a chanattn model was built for, else 224 x 224) from one
forward pass of a zero image through the model (eval mode, no gradients). ECA's released kernels
apply where the model is a torchvision/timm/chanattn ResNet-18/34/50/101/152 (recognised by its
blocks). What attach cannot do: change the backbone (``gsop``'s stride-1 last stage is
``create_model``'s), or replace convolutions (``sk``).

The model is changed in place (the new modules on the device and dtype of the model's
parameters, in its train/eval mode) and returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..layers import AttentionModule
from ..registry import Stage
from .placement import (
    BLOCK_PLACEMENTS,
    STAGE_END_PLACEMENTS,
    AttnAfter,
    AttnKwargs,
    AttnPlan,
    AttnSpec,
    put_before_conv,
    stage_end_flags,
)

__all__ = ["ATTACHED", "Insertion", "attach", "attached_parameters", "find_blocks", "param_groups"]


@dataclass(frozen=True)
class Insertion:
    """One module that :func:`attach` inserted.

    Attributes:
        path: the new module's name in the model (``"layer1.0.attn"``).
        target: the block (or stage, or module) it acts in or after (``"layer1.0"``).
        channels: its channel count.
        module: its class name.
        where: ``"block"`` (on the residual branch of ``target``), ``"before"`` (on the input of
            ``target``, a stage's first block), ``"after"`` (on the output of ``target``),
            ``"conv"`` (on the input of the convolution ``target``).
    """

    path: str
    target: str
    channels: int
    module: str
    where: str

    def __str__(self) -> str:
        return f"{self.path}: {self.module}({self.channels}) {self.where} {self.target}"


# --- the blocks attach knows -------------------------------------------------------------------


def _tv_basic_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pre_attn is not None:
        x = self.pre_attn(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.attn is not None:
        out = self.attn(out)
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(out + shortcut)


def _tv_bottleneck_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pre_attn is not None:
        x = self.pre_attn(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.attn is not None:
        out = self.attn(out)
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(out + shortcut)


def _tv_inverted_residual_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pre_attn is not None:
        x = self.pre_attn(x)
    out = self.conv(x)
    if self.attn is not None:
        out = self.attn(out)
    return x + out if self.use_res_connect else out


def _timm_preact_basic_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pre_attn is not None:
        x = self.pre_attn(x)
    x_preact = self.norm1(x)
    shortcut = x if self.downsample is None else self.downsample(x_preact)
    out = self.conv2(self.norm2(self.conv1(x_preact)))
    if self.attn is not None:
        out = self.attn(out)
    return self.drop_path(out) + shortcut


def _timm_preact_bottleneck_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pre_attn is not None:
        x = self.pre_attn(x)
    x_preact = self.norm1(x)
    shortcut = x if self.downsample is None else self.downsample(x_preact)
    out = self.conv1(x_preact)
    out = self.conv2(self.norm2(out))
    out = self.conv3(self.norm3(out))
    if self.attn is not None:
        out = self.attn(out)
    return self.drop_path(out) + shortcut


def _timm_v2_bottleneck_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pre_attn is not None:
        x = self.pre_attn(x)
    shortcut = x if self.downsample is None else self.downsample(x)
    out = self.norm1(self.conv1(x))
    out = self.norm2(self.conv2(out))
    out = self.norm3(self.conv3(out))
    if self.attn is not None:
        out = self.attn(out)
    return self.act3(self.drop_path(out) + shortcut)


#: name of the subclass -> (module and name of the block, the forward with attention)
_SUBCLASSES: dict[str, tuple[str, str, Callable]] = {
    "TorchvisionBasicBlockWithAttn": ("torchvision.models.resnet", "BasicBlock", _tv_basic_forward),
    "TorchvisionBottleneckWithAttn": ("torchvision.models.resnet", "Bottleneck", _tv_bottleneck_forward),
    "TorchvisionInvertedResidualWithAttn": ("torchvision.models.mobilenetv2", "InvertedResidual",
                                            _tv_inverted_residual_forward),
    "TimmPreActBasicWithAttn": ("timm.models.resnetv2", "PreActBasic", _timm_preact_basic_forward),
    "TimmPreActBottleneckWithAttn": ("timm.models.resnetv2", "PreActBottleneck",
                                     _timm_preact_bottleneck_forward),
    "TimmResNetV2BottleneckWithAttn": ("timm.models.resnetv2", "Bottleneck", _timm_v2_bottleneck_forward),
}
_BUILT: dict[str, type] = {}


def _subclass(name: str) -> type:
    """The block subclass ``name``, built on first use (torchvision is imported only then)."""
    if name not in _BUILT:
        module, base_name, forward = _SUBCLASSES[name]
        base = getattr(importlib.import_module(module), base_name)
        owner = module.split(".")[0]
        doc = (f"{owner}'s {base_name} with an attention module ``attn`` at the end of the residual "
               "branch, or ``pre_attn`` on its input (set by chanattn.attach).")
        _BUILT[name] = type(name, (base,), {"forward": forward, "__module__": __name__,
                                            "__qualname__": name, "__doc__": doc})
    return _BUILT[name]


def __getattr__(name: str):
    # The subclasses are module attributes (so that pickle finds them) built on first access.
    if name in _SUBCLASSES:
        return _subclass(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class _BlockType:
    channels: Callable[[nn.Module], int] | None  # None: those of the layer before the place in ``branch``
    slot: str  # the attribute that holds the attention module (or the name of a new Sequential child)
    subclass: str | None = None  # the class the block becomes (torchvision), else None
    pre_slot: str | None = "pre_attn"  # the attribute of a module on the block's input, if any
    #: the Sequential of the residual branch the module goes in, and where in it (see _seq_slot);
    #: None: the module is the block's attribute ``slot``
    branch: Callable[[nn.Module], nn.Sequential] | None = None
    at_end: bool = False  # in ``branch``: at its end (else before its last layer, or in place of its SE)
    replaces: bool = False  # an existing module in the slot (the architecture's SE) is replaced


def _last_bn(attr: str) -> Callable[[nn.Module], int]:
    return lambda block: getattr(block, attr).num_features


def _out(*path: str) -> Callable[[nn.Module], int]:
    """The ``out_channels`` of the submodule at ``path`` (the first that exists)."""
    def channels(block: nn.Module) -> int:
        for p in path:
            try:
                return int(block.get_submodule(p).out_channels)
            except AttributeError:
                continue
        raise InputError(f"attach: cannot tell the channels of {type(block).__name__}")
    return channels


def _is_se(module: nn.Module) -> bool:
    """An architecture's own squeeze-and-excitation (torchvision's SqueezeExcitation), or a module
    attach inserted in its place."""
    from .placement import IdentityInit

    return type(module).__name__ == "SqueezeExcitation" or isinstance(module, (AttentionModule, IdentityInit))


def _seq_slot(kind: _BlockType, block: nn.Module) -> tuple[nn.Sequential, str, str | None]:
    """(the branch, the key of the module in it, the key to insert it after or None where the key
    exists): the branch's SE where it has one (replaced), else a new child ``attn`` before the
    branch's last layer (the projection; the SE's place) or, with ``at_end``, after it."""
    seq = kind.branch(block)
    keys = list(seq._modules)
    if kind.slot in keys:
        return seq, kind.slot, None
    if not kind.at_end:
        for key in keys:
            if _is_se(seq._modules[key]):
                return seq, key, None
    after = keys[-1] if kind.at_end or len(keys) < 2 else keys[-2]
    return seq, kind.slot, after


def _before_slot(block: nn.Module, kind: _BlockType) -> int:
    """The channels at the module's place in a branch: those of the layer before it."""
    seq, key, after = _seq_slot(kind, block)
    keys = list(seq._modules)
    prev = after if after is not None else keys[keys.index(key) - 1]
    return int(seq._modules[prev].out_channels)


def _branch_type(branch: Callable[[nn.Module], nn.Sequential], at_end: bool = False,
                 channels: Callable[[nn.Module], int] | None = None) -> _BlockType:
    return _BlockType(channels, "attn", pre_slot=None, branch=branch, at_end=at_end, replaces=True)


def _channels(kind: _BlockType, block: nn.Module) -> int:
    return kind.channels(block) if kind.channels is not None else _before_slot(block, kind)


_KNOWN: dict[tuple[str, str], _BlockType] = {
    ("torchvision.models.resnet", "BasicBlock"): _BlockType(_last_bn("bn2"), "attn",
                                                            "TorchvisionBasicBlockWithAttn"),
    ("torchvision.models.resnet", "Bottleneck"): _BlockType(_last_bn("bn3"), "attn",
                                                            "TorchvisionBottleneckWithAttn"),
    ("torchvision.models.mobilenetv2", "InvertedResidual"): _BlockType(
        lambda block: block.conv[-1].num_features, "attn", "TorchvisionInvertedResidualWithAttn"),
    ("timm.models.resnet", "BasicBlock"): _BlockType(_last_bn("bn2"), "se", pre_slot=None),
    ("timm.models.resnet", "Bottleneck"): _BlockType(_last_bn("bn3"), "se", pre_slot=None),
    # torchvision: the SE's place in the block's Sequential (see the module docstring)
    ("torchvision.models.efficientnet", "MBConv"): _branch_type(lambda b: b.block),
    ("torchvision.models.efficientnet", "FusedMBConv"): _branch_type(lambda b: b.block),
    ("torchvision.models.mobilenetv3", "InvertedResidual"): _branch_type(lambda b: b.block),
    ("torchvision.models.regnet", "ResBottleneckBlock"): _branch_type(lambda b: b.f),
    ("torchvision.models.convnext", "CNBlock"): _branch_type(lambda b: b.block, at_end=True,
                                                             channels=lambda b: b.block[0].out_channels),
    # timm: the blocks' own attention slots, and the pre-activation blocks' branch end
    ("timm.models._efficientnet_blocks", "DepthwiseSeparableConv"): _BlockType(
        _out("conv_dw"), "se", pre_slot=None, replaces=True),
    ("timm.models._efficientnet_blocks", "InvertedResidual"): _BlockType(
        _out("conv_dw"), "se", pre_slot=None, replaces=True),
    ("timm.models._efficientnet_blocks", "CondConvResidual"): _BlockType(
        _out("conv_dw"), "se", pre_slot=None, replaces=True),
    ("timm.models._efficientnet_blocks", "EdgeResidual"): _BlockType(
        _out("conv_exp"), "se", pre_slot=None, replaces=True),
    ("timm.models.resnetv2", "PreActBasic"): _BlockType(_out("conv2"), "attn", "TimmPreActBasicWithAttn"),
    ("timm.models.resnetv2", "PreActBottleneck"): _BlockType(_out("conv3"), "attn",
                                                             "TimmPreActBottleneckWithAttn"),
    ("timm.models.resnetv2", "Bottleneck"): _BlockType(_out("conv3"), "attn",
                                                       "TimmResNetV2BottleneckWithAttn"),
    ("timm.models.cspnet", "BottleneckBlock"): _BlockType(_out("conv3.conv"), "attn3", pre_slot=None,
                                                          replaces=True),
    ("timm.models.cspnet", "DarkBlock"): _BlockType(_out("conv1.conv"), "attn", pre_slot=None, replaces=True),
    ("timm.models.cspnet", "EdgeBlock"): _BlockType(_out("conv1.conv"), "attn", pre_slot=None, replaces=True),
}
_OWN = (("chanattn.models.resnet", "BasicBlock"), ("chanattn.models.resnet", "Bottleneck"),
        ("chanattn.models.cifar_resnet", "PreActBottleneck"),
        ("chanattn.models.wide_resnet", "WideBasicBlock"), ("chanattn.models.plain_cnn", "ConvLayer"),
        ("chanattn.models.mobilenet", "InvertedResidual"))
for _key in _OWN:
    _KNOWN[_key] = _BlockType(lambda block: block.out_channels, "attn")
for _kind in list(_KNOWN.values()):  # a block after attach is still that block
    if _kind.subclass is not None:
        _KNOWN[(__name__, _kind.subclass)] = _kind

_KNOWN_NAMES = ("torchvision BasicBlock, Bottleneck (ResNet, ResNeXt, Wide-ResNet), InvertedResidual "
                "(MobileNetV2, MobileNetV3), MBConv, FusedMBConv (EfficientNet, EfficientNetV2), "
                "ResBottleneckBlock (RegNet), CNBlock (ConvNeXt); timm BasicBlock, Bottleneck (ResNet "
                "family), DepthwiseSeparableConv, InvertedResidual, EdgeResidual (EfficientNet, "
                "MobileNetV3), PreActBasic, PreActBottleneck, Bottleneck (ResNetV2), BottleneckBlock, "
                "DarkBlock, EdgeBlock (CSPNet); chanattn's blocks")


def _block_type(module: nn.Module) -> _BlockType | None:
    cls = type(module)
    return _KNOWN.get((cls.__module__, cls.__name__))


@dataclass
class _Block:
    name: str
    module: nn.Module
    kind: _BlockType
    channels: int
    parent: str
    stride: int


def _stride(block: nn.Module) -> int:
    s = getattr(block, "stride", None)
    if s is None:  # blocks that keep no stride (torchvision's MBConv, RegNet, timm's CSP blocks)
        s = max((m.stride for m in block.modules() if isinstance(m, nn.Conv2d)), default=1,
                key=lambda t: t[0])
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def _out_channels(block: _Block) -> int:
    """The channels a block puts out (a stage-end module's): those of its last layer outside
    attention modules (its slot's channels may be the expanded ones inside the branch)."""
    value = getattr(block.module, "out_channels", None)
    if isinstance(value, int):
        return value
    skip = (AttentionModule, _identity_init_cls())
    inside: list[str] = []
    last = block.channels
    for name, m in block.module.named_modules():
        if any(name.startswith(p) for p in inside):
            continue
        if isinstance(m, skip) or (name and _is_se(m)):
            inside.append(name + ".")
            continue
        for attr in ("num_features", "out_channels"):
            v = getattr(m, attr, None)
            if isinstance(v, int) and v > 0 and m is not block.module:
                last = v
                break
    return last


def _identity_init_cls() -> type:
    from .placement import IdentityInit

    return IdentityInit


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def find_blocks(model: nn.Module) -> list[tuple[str, int]]:
    """The residual blocks of ``model`` that :func:`attach` knows, as (name, channels) in order."""
    return [(b.name, b.channels) for b in _blocks(model)]


def _blocks(model: nn.Module) -> list[_Block]:
    found = []
    for name, module in model.named_modules():
        kind = _block_type(module)
        if kind is not None:
            found.append(_Block(name, module, kind, _channels(kind, module), _split(name)[0],
                                _stride(module)))
    return found


def _stages(blocks: list[_Block]) -> list[list[_Block]]:
    """Runs of consecutive blocks with the same parent and the same channel count."""
    stages: list[list[_Block]] = []
    for b in blocks:
        if stages and stages[-1][-1].parent == b.parent and stages[-1][-1].channels == b.channels:
            stages[-1].append(b)
        else:
            stages.append([b])
    return stages


# --- inserting ----------------------------------------------------------------------------------


def _place(model: nn.Module, ref: nn.Module, module: nn.Module) -> nn.Module:
    """``module`` on the device and dtype of ``ref``'s parameters, in ``model``'s mode."""
    p = next(ref.parameters(), None)
    if p is None:
        p = next(model.parameters(), None)
    if p is not None:
        module = module.to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)
    return module.train(model.training)


#: The attribute that marks a module (and its parameters) as added by attach, for param_groups.
ATTACHED = "_chanattn_attached"


def _new(module: nn.Module, init: str, base: nn.Module | None = None) -> nn.Module:
    """The module to insert: marked as attach's (for :func:`param_groups`), wrapped in
    :class:`~chanattn.models.placement.IdentityInit` for ``init="identity"``."""
    setattr(module, ATTACHED, True)
    if init == "identity":
        module = _identity_init_cls()(module, base)
    return module


def _is_empty(module: nn.Module | None) -> bool:
    return module is None or type(module) is nn.Identity


def _into_block(model: nn.Module, block: _Block, module: nn.Module, *, before: bool = False,
                init: str = "default") -> Insertion:
    """``module`` into ``block``'s attention slot (``before``: its slot on the block's input)."""
    kind = block.kind
    what = type(module).__name__
    if before:
        if kind.pre_slot is None:
            raise InputError(f"attach: block {block.name} ({type(block.module).__name__}) has no place for "
                             "a module on its input (a module before a stage); pass placement='block' or "
                             "targets=")
        parent, key, after, rel = block.module, kind.pre_slot, None, kind.pre_slot
    elif kind.branch is not None:
        parent, key, after = _seq_slot(kind, block.module)
        rel = f"{_relative(block.module, parent)}{key}"
    else:
        parent, key, after, rel = block.module, kind.slot, None, kind.slot
    current = parent._modules.get(key) if after is None else None
    base = None
    if not _is_empty(current):
        have = type(current).__name__
        if isinstance(current, (AttentionModule, _identity_init_cls())) or getattr(current, ATTACHED, False):
            raise InputError(f"attach: block {block.name} ({type(block.module).__name__}) already has an "
                             f"attention module in its {rel!r} slot ({have}); attach does not add a second")
        if not kind.replaces or before:
            raise InputError(f"attach: block {block.name} ({type(block.module).__name__}) already has an "
                             f"attention module in its {key!r} slot ({have}); attach does not add a second")
        base = current  # the architecture's SE: replaced (kept as the base of init="identity")
    if kind.subclass is not None:
        block.module.__class__ = _subclass(kind.subclass)
        for name in ("attn", "pre_attn"):  # the subclass's forward reads both
            if not hasattr(block.module, name):
                setattr(block.module, name, None)
    module = _place(model, block.module, _new(module, init, base))
    if after is None:
        setattr(parent, key, module)
    else:  # a new child of the branch after ``after``: the other children keep their keys and order
        items = list(parent._modules.items())
        at = [k for k, _ in items].index(after) + 1
        items.insert(at, (key, module))
        parent._modules.clear()
        parent._modules.update(items)
    return Insertion(f"{block.name}.{rel}", block.name, block.channels, what, "before" if before else "block")


def _relative(root: nn.Module, sub: nn.Module) -> str:
    """The name of ``sub`` inside ``root`` with a trailing dot ("" for root itself)."""
    if sub is root:
        return ""
    for name, m in root.named_modules():
        if m is sub:
            return f"{name}."
    raise RuntimeError("attach: the branch is not inside its block")


def _after(model: nn.Module, name: str, target: nn.Module, module: nn.Module, channels: int,
           init: str = "default") -> Insertion:
    what = type(module).__name__
    module = _place(model, target, _new(module, init))
    if isinstance(target, nn.Sequential):
        path = f"{name}.{len(target)}" if name else str(len(target))
        target.append(module)
    else:
        if not name:
            raise InputError("attach: the model itself cannot be a target; name one of its modules")
        parent_name, child = _split(name)
        parent = model.get_submodule(parent_name)
        setattr(parent, child, AttnAfter(target, module))
        path = f"{name}.attn"
    return Insertion(path, name, channels, what, "after")


def _stage_container(model: nn.Module, stage: list[_Block]) -> tuple[str, nn.Module]:
    """Where a stage's module goes after it: the Sequential that holds this stage and no other
    block, ending with the stage's last block (ResNet's ``layer<i>``), else the last block."""
    parent_name = stage[0].parent
    parent = model.get_submodule(parent_name)
    if parent_name and isinstance(parent, nn.Sequential):
        children = list(parent.children())
        blocks = [m for m in children if _block_type(m) is not None]
        if children[-1] is stage[-1].module and {id(m) for m in blocks} == {id(b.module) for b in stage}:
            return parent_name, parent
    return stage[-1].name, stage[-1].module


def _infer_channels(name: str, module: nn.Module) -> int:
    """The output channels of a target module."""
    kind = _block_type(module)
    if kind is not None:
        return _channels(kind, module)
    for m in reversed(list(module.modules())):  # the last registered layer first
        for attr in ("num_features", "num_channels", "out_channels"):
            value = getattr(m, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    raise InputError(f"attach: cannot tell the output channels of target {name!r} "
                     f"({type(module).__name__}); target a norm, convolution or block")


def _resolve_targets(model: nn.Module, targets) -> list[tuple[str, nn.Module]]:
    modules = dict(model.named_modules())
    if callable(targets) and not isinstance(targets, nn.Module):
        chosen = [(n, m) for n, m in modules.items() if n and targets(n, m)]
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        for n in names:
            if not isinstance(n, str) or n not in modules or not n:
                close = difflib.get_close_matches(str(n), [k for k in modules if k], n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise InputError(f"attach: the model has no module named {n!r}{hint}")
        wanted = set(names)
        chosen = [(n, m) for n, m in modules.items() if n in wanted]
    if not chosen:
        raise InputError(f"attach: targets={targets!r} chose no module of the model")
    return chosen


def _module_types(model: nn.Module) -> str:
    types = sorted({f"{type(m).__name__}" for m in model.modules() if m is not model
                    and not type(m).__module__.startswith("torch.nn")})
    if not types:
        types = sorted({type(m).__name__ for m in model.modules() if m is not model})
    return ", ".join(types[:20]) + (" ..." if len(types) > 20 else "") if types else "none"


def _existing_attention(model: nn.Module) -> list[str]:
    """Names of the chanattn attention already in ``model`` (outermost ones only)."""
    subclasses = tuple(_BUILT.values())
    found: list[str] = []
    for n, m in model.named_modules():
        if any(n.startswith(f"{f}.") for f in found):
            continue
        if isinstance(m, (AttentionModule, AttnAfter, _identity_init_cls())) or getattr(m, ATTACHED, False):
            found.append(n or type(m).__name__)
        elif subclasses and isinstance(m, subclasses):
            found += [f"{n}.{slot}" for slot in ("attn", "pre_attn") if getattr(m, slot, None) is not None]
    return found


def _in_channels(block: nn.Module) -> int:
    """The input channels of a block: those of its first convolution or norm."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            return getattr(m, "num_features", None) or m.num_channels
    raise InputError(f"attach: cannot tell the input channels of {type(block).__name__}")


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _probe_sizes(model: nn.Module, blocks: list[_Block], input_size: tuple[int, int]
                 ) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Each block's input and output (H, W) for a zero image of ``input_size``: one forward in eval
    mode without gradients (the model's mode is restored; BN statistics are not touched)."""
    conv = _first_conv(model)
    if conv is None:
        raise InputError(f"attach: {type(model).__name__} has no convolution to tell its input channels")
    ref = conv.weight
    x = torch.zeros(1, conv.in_channels, *input_size, device=ref.device, dtype=ref.dtype)
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def hook(name):
        def record(module, args, output):
            sizes[name] = (tuple(args[0].shape[-2:]), tuple(output.shape[-2:]))
        return record

    handles = [b.module.register_forward_hook(hook(b.name)) for b in blocks]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise InputError(f"attach: the module's per-stage settings need the feature sizes, and a "
                         f"{input_size[0]} x {input_size[1]} input failed in {type(model).__name__} "
                         f"({type(exc).__name__}: {exc}); pass input_size=") from exc
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sizes


#: (block kind, blocks per stage) -> the ResNet it is, for the modules' per-arch settings.
_RESNETS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
            ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
            ("bottleneck", (3, 8, 36, 3)): "resnet152"}


def _guess_arch(stages: list[list[_Block]]) -> str | None:
    """The ResNet-18/34/50/101/152 whose blocks these are (torchvision's, timm's or chanattn's),
    else None."""
    names = {type(b.module).__name__.replace("TorchvisionBasicBlockWithAttn", "BasicBlock")
             .replace("TorchvisionBottleneckWithAttn", "Bottleneck") for s in stages for b in s}
    if names == {"BasicBlock"}:
        kind, widths = "basic", (64, 128, 256, 512)
    elif names == {"Bottleneck"}:
        kind, widths = "bottleneck", (256, 512, 1024, 2048)
        for s in stages:  # plain ResNet widths: not ResNeXt (groups) nor Wide-ResNet (twice as wide)
            conv2 = getattr(s[0].module, "conv2", None)
            plain = isinstance(conv2, nn.Conv2d) and conv2.groups == 1
            if not plain or 4 * conv2.out_channels != s[0].channels:
                return None
    else:
        return None
    if tuple(s[0].channels for s in stages) != widths:
        return None
    return _RESNETS.get((kind, tuple(len(s) for s in stages)))


def _guess_head(model: nn.Module) -> str:
    from ..modules.gsop import GSoPHead

    pool = getattr(model, "avgpool", None) or getattr(model, "pool", None)
    return "gsop" if isinstance(pool, GSoPHead) else "avg"


def _input_size(model: nn.Module, input_size) -> tuple[int, int]:
    if input_size is None:
        input_size = getattr(model, "default_input_size", None) or (224, 224)
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if len(input_size) == 3:
        input_size = input_size[1:]
    return (int(input_size[0]), int(input_size[1]))


@contextlib.contextmanager
def _building(plan: AttnPlan, where: str, target: nn.Module, channels: int):
    """Turn a module's refusal of a place (its channels, its options) into one line naming the
    module, the place and why."""
    try:
        yield
    except Exception as exc:
        what = plan.name or getattr(plan.factory, "__name__", "the attn callable")
        raise InputError(f"attach: {what!r} cannot go in {where} ({type(target).__name__}, {channels} "
                         f"channels): {type(exc).__name__}: {exc}") from exc


def _names(stage: list[_Block]) -> str:
    return stage[0].name if len(stage) == 1 else f"{stage[0].name} ... {stage[-1].name}"


_INITS = ("default", "identity")


def attach(model: nn.Module, name: AttnSpec, targets: Iterable[str] | str | Callable | None = None, *,
           placement: str | None = None, input_size=None, attn_kwargs: AttnKwargs = None,
           init: str = "default", return_report: bool = False, **kwargs):
    """Insert the attention module ``name`` into ``model`` where its paper puts it, in place.

    The placement and per-stage settings are the module's registration's, as
    :func:`chanattn.create_model` reads them (MODULES.md, "Placement in ResNets"): per block on
    the residual branch after the last BN and before the addition, with the block's channel count
    (``gsop`` in the last block of each stage; ``dia`` one shared cell per stage); ``c3`` on the
    input of each stage's first block; ``gct`` before every convolution; ``bam`` after each stage
    followed by a downsampling (where each stage has its own ``nn.Sequential``, as ``layer1`` ...
    ``layer4``: after every stage but the last; else before each stride-2 block); ``soca`` after
    every stage; ``encnet`` after the last. A stage: consecutive blocks with the same parent and
    the same channels. ``sk`` replaces convolutions, whose weights attach would drop: it is an
    error (use ``create_model(arch, attn="sk")``). Existing parameters keep their names and
    values; see the module docstring for how each block type is changed.

    Known blocks: torchvision ResNet/ResNeXt/Wide-ResNet (``BasicBlock``, ``Bottleneck``),
    MobileNetV2/V3 (``InvertedResidual``), EfficientNet/V2 (``MBConv``, ``FusedMBConv``), RegNet
    (``ResBottleneckBlock``), ConvNeXt (``CNBlock``); timm's ResNet family, EfficientNet and
    MobileNetV3 blocks, ResNetV2 (``PreActBasic``, ``PreActBottleneck``, ``Bottleneck``), CSPNet
    (``BottleneckBlock``, ``DarkBlock``, ``EdgeBlock``); the blocks of :mod:`chanattn.models`.
    Where each family gets the module (an existing SE is replaced): the module docstring.

    Args:
        model: the model (changed in place).
        name: a registered module name, or a callable ``f(channels, **kwargs)`` returning a module.
        targets: choose the places instead: module names, or a predicate ``f(name, module) ->
            bool``. A known block gets the module on its residual branch (as above); any other
            module gets it on its output (appended to an ``nn.Sequential``, else the module is
            wrapped in :class:`~chanattn.models.placement.AttnAfter`, whose state dict still
            loads checkpoints saved without it). With targets, every place gets its own module
            (``dia``: a one-block stage each) with the options given (no per-stage settings).
        placement: another placement than the module's (:data:`chanattn.registry.PLACEMENTS`).
        input_size: the input (H, W) at which per-stage settings take the feature sizes
            (default: a chanattn model's own, else 224 x 224).
        attn_kwargs: the module's options as a callable ``f(stage) -> dict | None`` per
            :class:`~chanattn.registry.Stage` (or a dict, as ``**kwargs``).
        init: ``"default"``: each module as its paper initialises it (the network's output
            changes). ``"identity"``: each module wrapped in
            :class:`~chanattn.models.placement.IdentityInit` (y = b(x) + alpha (attn(x) - b(x)),
            alpha = 0), so the output is unchanged at insertion and training moves away from it.
        return_report: also return the list of :class:`Insertion` (where, which channels).
        **kwargs: options for the module's constructor.

    Returns:
        ``model``, or ``(model, report)`` with ``return_report=True``.

    Raises:
        ValueError: the model has chanattn attention already (attach twice), a block's slot is
            taken (timm's SE-ResNet), the model has no block attach knows (the message lists its
            module types), an unknown target, ``sk`` or ``splat``, a module that cannot take a
            block's channels (naming both and why), an unknown ``init``.

    Example:
        >>> import torchvision, chanattn
        >>> model, report = chanattn.attach(torchvision.models.resnet18(), "se", return_report=True)
        >>> str(report[0])
        'layer1.0.attn: SqueezeExcite(64) block layer1.0'
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"attach: model must be an nn.Module, got {type(model).__name__}")
    if init not in _INITS:
        raise InputError(f"attach: init must be one of {', '.join(map(repr, _INITS))}, got {init!r}")
    if attn_kwargs is not None and kwargs:
        raise InputError(f"attach: give the module's options either as attn_kwargs or as keywords, not both "
                         f"(got attn_kwargs and {sorted(kwargs)})")
    plan = AttnPlan(name, attn_kwargs if attn_kwargs is not None else kwargs, placement=placement,
                    owner="attach")
    if plan.replaces_conv:
        raise InputError(f"attach: {plan.name!r} replaces the blocks' 3x3 convolutions, so attaching it "
                         f"would drop their weights; build the model with create_model(arch, "
                         f"attn={plan.name!r}) instead")
    existing = _existing_attention(model)
    if existing:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise InputError(f"attach: the model already has chanattn attention modules ({shown}); attach "
                         "inserts once, not a second module per block")
    report: list[Insertion] = []
    if targets is not None:
        # the deepest first, so that wrapping a module never renames a target inside it
        for tname, target in reversed(_resolve_targets(model, targets)):
            channels = _infer_channels(tname, target)
            with _building(plan, tname, target, channels):
                module = plan.new(channels)  # dia: a one-block stage of its own
            if module is None:
                continue
            kind = _block_type(target)
            if kind is not None:
                block = _Block(tname, target, kind, channels, _split(tname)[0], _stride(target))
                report.append(_into_block(model, block, module, init=init))
            else:
                report.append(_after(model, tname, target, module, channels, init))
        report.reverse()
        return (model, report) if return_report else model

    blocks = _blocks(model)
    if not blocks:
        raise InputError(f"attach: {type(model).__name__} has no residual block that attach knows "
                         f"(it knows {_KNOWN_NAMES}); module types found: {_module_types(model)}; "
                         "pass targets= (module names or a predicate) to choose the places")
    stages = _stages(blocks)
    plan.arch = _guess_arch(stages)
    plan.bind(num_stages=len(stages), default_input_size=_input_size(model, input_size),
              head=_guess_head(model))
    sizes = _probe_sizes(model, blocks, plan.input_size) if plan.uses_sizes else {}

    def stage_info(i: int, stage: list[_Block], at_input: bool = False) -> Stage:
        first, last = stage[0], stage[-1]
        if at_input:
            size = sizes.get(first.name, (None, None))[0]
            return plan.stage(i, _in_channels(first.module), size, len(stage))
        return plan.stage(i, first.channels, sizes.get(last.name, (None, None))[1], len(stage))

    if plan.placement in BLOCK_PLACEMENTS:
        for i, stage in enumerate(stages):
            with _building(plan, _names(stage), stage[0].module, stage[0].channels):
                modules = plan.block_modules(stage_info(i, stage))
            for block, module in zip(stage, modules):
                if module is not None:
                    report.append(_into_block(model, block, module, init=init))
    elif plan.placement == "stage_start":
        for i, stage in enumerate(stages):
            info = stage_info(i, stage, at_input=True)
            with _building(plan, stage[0].name, stage[0].module, info.channels):
                module = plan.stage_start(info)
            if module is not None:
                report.append(_into_block(model, stage[0], module, before=True, init=init))
    elif plan.placement in STAGE_END_PLACEMENTS:
        places = [_stage_container(model, stage) for stage in stages]
        if all(isinstance(target, nn.Sequential) for _, target in places):
            # every stage in a container of its own (ResNet's layer1 ... layerN): the stages are
            # separated by downsampling (a strided block or a pooling between the containers)
            after = [i + 1 < len(stages) for i in range(len(stages))]
        else:
            after = stage_end_flags([stage[0].stride for stage in stages])
        for i, (stage, (where, target), flag) in enumerate(zip(stages, places, after)):
            channels = _out_channels(stage[-1])
            info = dataclasses.replace(stage_info(i, stage), channels=channels)
            with _building(plan, where, target, channels):
                module = plan.stage_end(info, flag)
            if module is not None:
                report.append(_after(model, where, target, module, channels, init))
    elif plan.placement == "every_conv":
        owner = {b.name: (i, len(stage)) for i, stage in enumerate(stages) for b in stage}
        slots = [f"{b.name}.{slot}." for b in blocks for slot in (b.kind.slot, b.kind.pre_slot) if slot]
        slots += [f"{n}." for n, m in model.named_modules() if n and _is_se(m)]  # the architecture's SE

        def stage_of(conv_name: str) -> tuple[int, int]:
            for block_name, where in owner.items():
                if conv_name.startswith(f"{block_name}."):
                    return where
            return -1, 0

        convs = [(n, m) for n, m in model.named_modules()
                 if type(m) is nn.Conv2d and not any(n.startswith(s) for s in slots)]
        for cname, conv in convs:
            index, num_blocks = stage_of(cname)
            with _building(plan, cname, conv, conv.in_channels):
                module = plan.new(plan.stage(index, conv.in_channels, None, num_blocks))
            if module is not None:
                what = type(module).__name__
                put_before_conv(conv, _place(model, conv, _new(module, init)))
                report.append(Insertion(f"{cname}.attn", cname, conv.in_channels, what, "conv"))
    return (model, report) if return_report else model


def attached_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters that :func:`attach` added to ``model`` (the inserted modules' and the alphas
    of ``init="identity"``; not the replaced modules'), as (name, parameter)."""
    new: set[int] = set()
    identity = _identity_init_cls()
    for m in model.modules():
        if getattr(m, ATTACHED, False):
            new.update(id(p) for p in m.parameters())
        if isinstance(m, identity):
            new.add(id(m.alpha))
    return [(n, p) for n, p in model.named_parameters() if id(p) in new]


def param_groups(model: nn.Module, lr: float, new_lr: float | None = None, weight_decay: float = 0.0,
                 new_weight_decay: float | None = None, decay_norm_and_bias: bool = True) -> list[dict]:
    """Optimizer parameter groups that train what :func:`attach` added at its own learning rate.

    Up to four groups, each with ``params``, ``lr``, ``weight_decay`` and a ``name``:
    ``"pretrained"`` / ``"pretrained_no_decay"`` (the model's own parameters) and ``"attached"`` /
    ``"attached_no_decay"`` (those of the modules attach inserted, :func:`attached_parameters`).
    Without weight decay: each attention module's ``no_weight_decay()`` (as the trainer), the
    alphas of ``init="identity"`` (a decay would pull the network back to the one without
    attention), and with ``decay_norm_and_bias=False`` every parameter with fewer than two
    dimensions. Frozen parameters (``requires_grad=False``) are left out; empty groups too.

    Args:
        model: a model :func:`attach` changed (attach marks the modules it inserts; the mark
            survives ``copy.deepcopy`` and pickling, not loading a state dict into another model).
        lr: the learning rate of the model's own parameters.
        new_lr: that of the added ones (default ``lr``).
        weight_decay: the weight decay of the model's own parameters.
        new_weight_decay: that of the added ones (default ``weight_decay``).
        decay_norm_and_bias: also decay 1-d parameters (norm weights, biases).

    Raises:
        ValueError: ``model`` has no parameter that attach added.

    Example:
        >>> import torch, torchvision, chanattn
        >>> model = chanattn.attach(torchvision.models.resnet18(), "eca", init="identity")
        >>> opt = torch.optim.SGD(chanattn.param_groups(model, lr=1e-3, new_lr=1e-2), momentum=0.9)
        >>> [(g["name"], len(g["params"]), g["lr"]) for g in opt.param_groups]
        [('pretrained', 62, 0.001), ('attached', 8, 0.01), ('attached_no_decay', 8, 0.01)]
    """
    from ..layers import no_weight_decay_names

    if not isinstance(model, nn.Module):
        raise InputTypeError(f"param_groups: model must be an nn.Module, got {type(model).__name__}")
    new = {id(p) for _, p in attached_parameters(model)}
    if not new:
        raise InputError(f"param_groups: {type(model).__name__} has no parameter that chanattn.attach added "
                         "(attach marks the modules it inserts; a model from create_model has none)")
    alphas = {id(m.alpha) for m in model.modules() if isinstance(m, _identity_init_cls())}
    skip = no_weight_decay_names(model)
    new_lr = lr if new_lr is None else new_lr
    new_weight_decay = weight_decay if new_weight_decay is None else new_weight_decay
    groups = {key: [] for key in ("pretrained", "pretrained_no_decay", "attached", "attached_no_decay")}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = name in skip or id(p) in alphas or (not decay_norm_and_bias and p.ndim <= 1)
        key = ("attached" if id(p) in new else "pretrained") + ("_no_decay" if no_decay else "")
        groups[key].append(p)
    settings = {"pretrained": (lr, weight_decay), "pretrained_no_decay": (lr, 0.0),
                "attached": (new_lr, new_weight_decay), "attached_no_decay": (new_lr, 0.0)}
    return [{"params": params, "lr": settings[key][0], "weight_decay": settings[key][1], "name": key}
            for key, params in groups.items() if params]
