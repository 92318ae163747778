"""Published weights in chanattn's models: :func:`load_pretrained` converts the checkpoints that timm
and the modules' authors publish (renamed keys, permuted tensors) and loads them strictly.

>>> import torch, timm, chanattn
>>> ours = chanattn.create_model("resnet50", attn="se", attn_kwargs={"rd_divisor": 8})
>>> theirs = timm.create_model("seresnet50", pretrained=False)
>>> chanattn.load_pretrained(ours, "timm", theirs.state_dict()) is ours
True

Sources (:data:`SOURCES`; where the key names come from is in each one's ``origin``):

- ``"timm"``: timm's ``seresnet*``, ``seresnext50_32x4d``, ``ecaresnet50d/50t/101d`` and
  ``skresnext50_32x4d`` (:data:`TIMM_MODELS` says which chanattn model each one is; the timm
  models chanattn cannot match exactly are refused with the reason, :data:`TIMM_REFUSED`).
- ``"cbam"``, ``"bam"`` (Jongchan/attention-module), ``"eca"`` (BangguWu/ECANet), ``"srm"``
  (hyunjaelee410/style-based-recalibration-module), ``"gct"`` (z-x-yang/GCT, PyTorch), ``"fca"``
  (cfzd/FcaNet), ``"gsop"`` (ZilinGao/Global-Second-order-Pooling-Convolutional-Networks) and
  ``"dia"`` (gbup-group/DIANet): the official ResNets of each module.

The official ResNets are torchvision's v1.5 (chanattn's default), except GCT's, a v1 ResNet
(build it with ``stride_in_1x1=True``; same shapes, so either loads, but only v1 computes what the
authors trained); GSoP's runs stage 4 at stride 1, which ``attn="gsop"`` sets. The CBAM, BAM and SE
paper models of :mod:`chanattn.models.papers` are v1 for their FLOP counts: load the official
CBAM/BAM weights into the default (v1.5) model to compute what the official code computes.

Every key of the checkpoint must land on a key of the model, and every key of the model must be
filled (a :class:`~chanattn.errors.CheckpointError` names the key, the source and, for a shape
mismatch, both shapes). Two tensors are permuted on the way: CBAM's spatial convolution (the
official ChannelPool stacks [max, mean], chanattn's spatial gate takes [mean, max], the paper's
order) and GSoP-Net2's classifier (the official head vectorises the lower triangle of the matrix
row by row, chanattn's :class:`~chanattn.modules.gsop.GSoPHead` the upper triangle row by row), each
only where the model keeps chanattn's default order (``pool_order="mean_max"``,
``head_kwargs={"triangle": "upper"}``); a model built with the official order takes the tensor as it is.
``nn.Linear`` weights become the 1x1 convolutions chanattn uses for the same maps. No bias needed
folding: every official layer whose bias chanattn keeps has one in chanattn too. BatchNorm's
``num_batches_tracked`` counters, which checkpoints of PyTorch before 0.4.1 lack, are taken from the
model (they only matter for ``momentum=None``).

Files load with ``torch.load(weights_only=True)`` or safetensors, never by unpickling other
objects; a URL is downloaded into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``) only when
``"url"``/``None``/a URL is passed (:data:`PRETRAINED_WEIGHTS` lists the stable URLs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, InputError, InputTypeError

__all__ = [
    "PRETRAINED_WEIGHTS",
    "SOURCES",
    "TIMM_MODELS",
    "TIMM_REFUSED",
    "PretrainedWeights",
    "Source",
    "convert_state_dict",
    "load_pretrained",
    "timm_equivalent",
]

# ----------------------------------------------------------------------------------------- timm
_SE8 = MappingProxyType({"rd_divisor": 8})  # timm's SEModule rounds C/16 to a multiple of 8
_ECA_ADAPTIVE = MappingProxyType({"kernel_size": None})  # timm's EcaModule: the adaptive rule per stage
_RESNET_D = MappingProxyType({"stem": "deep", "avg_down": True})
_RESNET_T = MappingProxyType({"stem": "deep_tiered", "avg_down": True})


def _m(**kwargs) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


#: timm model -> the :func:`chanattn.create_model` arguments that build the same network
#: (checked in tests/test_pretrained.py: outputs equal to 1e-5 after conversion, eval mode).
TIMM_MODELS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "seresnet18": _m(arch="resnet18", attn="se", attn_kwargs=_SE8),
    "seresnet34": _m(arch="resnet34", attn="se", attn_kwargs=_SE8),
    "seresnet50": _m(arch="resnet50", attn="se", attn_kwargs=_SE8),
    "seresnet101": _m(arch="resnet101", attn="se", attn_kwargs=_SE8),
    "seresnet152": _m(arch="resnet152", attn="se", attn_kwargs=_SE8),
    "seresnet50t": _m(arch="resnet50", attn="se", attn_kwargs=_SE8, **_RESNET_T),
    "seresnet152d": _m(arch="resnet152", attn="se", attn_kwargs=_SE8, **_RESNET_D),
    "seresnext50_32x4d": _m(arch="resnext50_32x4d", attn="se", attn_kwargs=_SE8),
    "ecaresnet50d": _m(arch="resnet50", attn="eca", attn_kwargs=_ECA_ADAPTIVE, **_RESNET_D),
    "ecaresnet50t": _m(arch="resnet50", attn="eca", attn_kwargs=_ECA_ADAPTIVE, **_RESNET_T),
    "ecaresnet101d": _m(arch="resnet101", attn="eca", attn_kwargs=_ECA_ADAPTIVE, **_RESNET_D),
    "skresnext50_32x4d": _m(arch="resnext50_32x4d", attn="sk"),
})

_SPLIT = ("timm's SelectiveKernel there splits the input channels between the two branches "
          "(split_input=True; each branch convolves half of them), chanattn's SK gives every branch all "
          "of them (the paper's unit); only skresnext50_32x4d (split_input=False) converts")
_BLUR = "its blocks use anti-aliased downsampling (BlurPool), which chanattn's ResNet lacks"
_DEPTH = "chanattn has no ResNet of this depth ({}); only 18/34/50/101/152 and ResNeXt-50 32x4d"

#: timm models of these families that chanattn cannot build exactly, and why.
TIMM_REFUSED: Mapping[str, str] = MappingProxyType({
    "skresnet18": _SPLIT, "skresnet34": _SPLIT, "skresnet50": _SPLIT, "skresnet50d": _SPLIT,
    "ecaresnet26t": _DEPTH.format("layers 2-2-2-2"),
    "ecaresnetlight": _DEPTH.format("layers 1-1-11-3"),
    "ecaresnet200d": _DEPTH.format("ResNet-200"),
    "ecaresnet269d": _DEPTH.format("ResNet-269"),
    "seresnet200d": _DEPTH.format("ResNet-200"),
    "seresnet269d": _DEPTH.format("ResNet-269"),
    "seresnext26d_32x4d": _DEPTH.format("ResNeXt-26"),
    "seresnext26t_32x4d": _DEPTH.format("ResNeXt-26"),
    "seresnext101_32x4d": _DEPTH.format("ResNeXt-101"),
    "seresnext101_32x8d": _DEPTH.format("ResNeXt-101"),
    "seresnext101d_32x8d": _DEPTH.format("ResNeXt-101"),
    "seresnext101_64x4d": _DEPTH.format("ResNeXt-101"),
    "ecaresnet50d_pruned": "its stages have pruned, irregular widths that no create_model option gives",
    "ecaresnet101d_pruned": "its stages have pruned, irregular widths that no create_model option gives",
    "seresnetaa50d": _BLUR,
    "seresnextaa101d_32x8d": _BLUR,
})


def timm_equivalent(timm_name: str) -> dict[str, Any]:
    """The :func:`chanattn.create_model` keyword arguments (``arch``, ``attn``, ...) of the chanattn
    model that is timm's ``timm_name`` (a pretrained tag such as ``".a1_in1k"`` is ignored).

    Raises:
        CheckpointError: a timm model chanattn cannot build exactly (the message says why), or
            one outside the seresnet/ecaresnet/skresnet families.
    """
    base = timm_name.split(".", 1)[0]
    if base in TIMM_MODELS:
        return dict(TIMM_MODELS[base])
    if base in TIMM_REFUSED:
        raise CheckpointError(f"load_pretrained('timm'): timm's {base} cannot be converted: "
                              f"{TIMM_REFUSED[base]}")
    raise CheckpointError(f"load_pretrained('timm'): timm's {base!r} is not a model chanattn converts; "
                          f"the timm models it converts: {', '.join(TIMM_MODELS)}")


# ------------------------------------------------------------------------------ the URL table
@dataclass(frozen=True)
class PretrainedWeights:
    """Published weights: where to download them and which chanattn model they fit.

    Attributes:
        name: ``"seresnet50.a1_in1k"`` (timm's tag), ``"fca50"`` ...
        source: the :data:`SOURCES` name that converts them.
        url: a stable download URL, or None where the publisher gives none (then ``where`` says
            what there is).
        build: the :func:`chanattn.create_model` arguments of the model they fit.
        where: where the URL (or the link) comes from.
        filename: the name in torch.hub's cache.
    """

    name: str
    source: str
    url: str | None
    build: Mapping[str, Any]
    where: str
    filename: str = ""

    def cache_name(self) -> str:
        return self.filename or os.path.basename(self.url.split("?", 1)[0])


def _timm_row(tag: str) -> PretrainedWeights:
    base = tag.split(".", 1)[0]
    return PretrainedWeights(tag, "timm", f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors",
                             TIMM_MODELS[base], f"timm {base} pretrained_cfg hf_hub_id 'timm/{tag}'",
                             filename=f"timm--{tag}.safetensors")


_FCA_HUB = "cfzd/FcaNet hubconf.py (GitHub release v1.0)"

#: The published weights chanattn knows, with the URL where a stable one exists.
PRETRAINED_WEIGHTS: tuple[PretrainedWeights, ...] = (
    *(_timm_row(t) for t in (
        "seresnet50.a1_in1k", "seresnet50.a2_in1k", "seresnet50.a3_in1k", "seresnet50.ra2_in1k",
        "seresnet152d.ra2_in1k", "seresnext50_32x4d.racm_in1k", "seresnext50_32x4d.gluon_in1k",
        "ecaresnet50d.miil_in1k", "ecaresnet50t.ra2_in1k", "ecaresnet50t.a1_in1k", "ecaresnet50t.a2_in1k",
        "ecaresnet50t.a3_in1k", "ecaresnet101d.miil_in1k", "skresnext50_32x4d.ra_in1k")),
    PretrainedWeights("fca34", "fca", "https://github.com/cfzd/FcaNet/releases/download/v1.0/fca34.pth",
                      _m(arch="resnet34", attn="fca"), _FCA_HUB),
    PretrainedWeights("fca50", "fca", "https://github.com/cfzd/FcaNet/releases/download/v1.0/fca50.pth",
                      _m(arch="resnet50", attn="fca"), _FCA_HUB),
    PretrainedWeights("fca101", "fca", "https://github.com/cfzd/FcaNet/releases/download/v1.0/fca101.pth",
                      _m(arch="resnet101", attn="fca"), _FCA_HUB),
    PretrainedWeights("fca152", "fca", "https://github.com/cfzd/FcaNet/releases/download/v1.0/fca152.pth",
                      _m(arch="resnet152", attn="fca"), _FCA_HUB),
    PretrainedWeights("cbam_resnet50", "cbam",
                      "https://www.dropbox.com/s/bt6zty02h9ibufi/RESNET50_CBAM_new_name_wrap.pth?dl=1",
                      _m(arch="resnet50", attn="cbam"),
                      "Jongchan/attention-module README (Dropbox share link, ?dl=1 for the file itself)"),
    PretrainedWeights("bam_resnet50", "bam",
                      "https://www.dropbox.com/s/esw0m8e3cjg7ex4/RESNET50_IMAGENET_BAM_best.pth.tar?dl=1",
                      _m(arch="resnet50", attn="bam"),
                      "Jongchan/attention-module README (Dropbox share link, ?dl=1 for the file itself)"),
    PretrainedWeights("eca_resnet50_k3557", "eca", None, _m(arch="resnet50", attn="eca"),
                      "BangguWu/ECANet README: a Baidu Pan link with an extract code (no direct URL)"),
    PretrainedWeights("eca_resnet101_k3357", "eca", None, _m(arch="resnet101", attn="eca"),
                      "BangguWu/ECANet README: a Baidu Pan link with an extract code (no direct URL)"),
    PretrainedWeights("gct_resnet50", "gct", None, _m(arch="resnet50", attn="gct", stride_in_1x1=True),
                      "z-x-yang/GCT PyTorch/README.md: a Google Drive file (no direct URL)"),
    PretrainedWeights("gsop_resnet50", "gsop", None, _m(arch="resnet50", attn="gsop"),
                      "ZilinGao/Global-Second-order-Pooling-Convolutional-Networks README: "
                      "no weights linked"),
    PretrainedWeights("srm_resnet50", "srm", None, _m(arch="resnet50", attn="srm"),
                      "hyunjaelee410/style-based-recalibration-module README: no weights linked"),
    PretrainedWeights("dia_resnet164", "dia", None, _m(arch="resnet164", attn="dia", preact=False),
                      "gbup-group/DIANet README: no weights linked"),
)


def pretrained_weights(name: str) -> PretrainedWeights:
    """The row of :data:`PRETRAINED_WEIGHTS` called ``name``."""
    for row in PRETRAINED_WEIGHTS:
        if row.name == name:
            return row
    raise CheckpointError(f"load_pretrained: no published weights called {name!r}; known: "
                          f"{', '.join(r.name for r in PRETRAINED_WEIGHTS)}")


# ----------------------------------------------------------------------------- the converters
Rule = tuple[str, "str | Callable[[re.Match], str]"]


@dataclass(frozen=True)
class Source:
    """How one publisher's checkpoints become chanattn's keys.

    Attributes:
        name: ``"timm"``, ``"cbam"`` ...
        attn: the attention module the checkpoints carry (None: several, as timm's).
        origin: the repository and files the key names were read from.
        rules: ``(regex, replacement)`` pairs; a key takes the first rule whose regex matches
            (``re.sub`` once), a key no rule matches keeps its name (the backbone's keys are
            torchvision's on both sides).
        fix: ``f(new_key, tensor, model) -> tensor`` for the tensors that must change (permuted).
    """

    name: str
    attn: str | None
    origin: str
    rules: tuple[Rule, ...] = ()
    fix: Callable[[str, torch.Tensor, nn.Module], torch.Tensor] | None = field(default=None, repr=False)


_BLOCK = r"^(layer\d+\.\d+)\."


def _cbam_fix(key: str, tensor: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if key.endswith(".attn.spatial.conv.weight"):
        gate = model.get_submodule(key.rsplit(".", 2)[0])
        if getattr(gate, "pool_order", "mean_max") == "mean_max":
            return tensor.flip(1)  # official [max, mean] -> chanattn's default [mean, max]
    return tensor  # a model built with pool_order="max_mean" takes the official kernel as it is


def _bam_stage_end(match: re.Match, model: nn.Module) -> str:
    # bamN follows layerN; chanattn appends it to layerN's nn.Sequential, after its blocks
    stage = getattr(model, f"layer{match.group(1)}", None)
    index = len(stage) - 1 if isinstance(stage, nn.Sequential) else "?"
    return f"layer{match.group(1)}.{index}."


def triu_from_tril_order(n: int) -> torch.Tensor:
    """For the upper triangle of an n x n symmetric matrix read row by row (chanattn's GSoPHead),
    the index of the same entry in its lower triangle read row by row (the official
    MPNCOV.Triuvec): entry (i, j), i <= j, is (j, i) there, at j (j + 1) / 2 + i."""
    rows, cols = torch.triu_indices(n, n)
    return cols * (cols + 1) // 2 + rows


def _gsop_fix(key: str, tensor: torch.Tensor, model: nn.Module) -> torch.Tensor:
    head = getattr(model, "avgpool", None)
    if key == "fc.weight" and hasattr(head, "rd_channels") and tensor.dim() == 2 \
            and getattr(head, "triangle", "upper") == "upper":  # triangle="lower" is the official order
        d = head.rd_channels
        if tensor.shape[1] == d * (d + 1) // 2:
            return tensor[:, triu_from_tril_order(d)]
    return tensor


SOURCES: Mapping[str, Source] = MappingProxyType({
    "timm": Source("timm", None, "huggingface/pytorch-image-models timm/models/resnet.py (Bottleneck/"
                   "BasicBlock: attention 'se'; layers/squeeze_excite.py SEModule fc1/fc2, layers/eca.py "
                   "EcaModule conv), "
                   "timm/models/sknet.py + layers/selective_kernel.py (conv1/conv3 ConvNormAct .conv/.bn, "
                   "conv2.paths.N, conv2.attn.fc_reduce/bn/fc_select)",
                   rules=(
                       (_BLOCK + r"se\.", r"\1.attn."),
                       # SK blocks: ConvNormAct convK.conv/.bn, and the SelectiveKernel in place of
                       # the 3x3 (conv1 of the basic block, conv2 of the bottleneck)
                       (_BLOCK + r"conv(\d)\.paths\.(\d+)\.conv\.", r"\1.conv\2.branches.\3.0."),
                       (_BLOCK + r"conv(\d)\.paths\.(\d+)\.bn\.", r"\1.conv\2.branches.\3.1."),
                       (_BLOCK + r"conv(\d)\.attn\.", r"\1.conv\2."),
                       (_BLOCK + r"conv(\d)\.conv\.", r"\1.conv\2."),
                       (_BLOCK + r"conv(\d)\.bn\.", r"\1.bn\2."),
                   )),
    "cbam": Source("cbam", "cbam", "Jongchan/attention-module MODELS/model_resnet.py (block.cbam) and "
                   "MODELS/cbam.py (ChannelGate.mlp = [Flatten, Linear, ReLU, Linear]; SpatialGate.spatial "
                   "= BasicConv .conv/.bn; ChannelPool = cat[max, mean])",
                   rules=(
                       (_BLOCK + r"cbam\.ChannelGate\.mlp\.1\.", r"\1.attn.channel.fc1."),
                       (_BLOCK + r"cbam\.ChannelGate\.mlp\.3\.", r"\1.attn.channel.fc2."),
                       (_BLOCK + r"cbam\.SpatialGate\.spatial\.conv\.", r"\1.attn.spatial.conv."),
                       (_BLOCK + r"cbam\.SpatialGate\.spatial\.bn\.", r"\1.attn.spatial.bn."),
                   ), fix=_cbam_fix),
    "bam": Source("bam", "bam", "Jongchan/attention-module MODELS/model_resnet.py (bam1..bam3 after "
                  "layer1..3) "
                  "and MODELS/bam.py (channel_att.gate_c.gate_c_fc_0/gate_c_bn_1/gate_c_fc_final; "
                  "spatial_att.gate_s.gate_s_conv_reduce0/gate_s_bn_reduce0/gate_s_conv_di_N/gate_s_bn_di_N/"
                  "gate_s_conv_final)",
                  rules=(
                      (r"^bam(\d)\.channel_att\.gate_c\.gate_c_fc_0\.", "{stage}channel_att.0."),
                      (r"^bam(\d)\.channel_att\.gate_c\.gate_c_bn_1\.", "{stage}channel_att.1."),
                      (r"^bam(\d)\.channel_att\.gate_c\.gate_c_fc_final\.", "{stage}channel_att.3."),
                      (r"^bam(\d)\.spatial_att\.gate_s\.gate_s_conv_reduce0\.", "{stage}spatial_att.0."),
                      (r"^bam(\d)\.spatial_att\.gate_s\.gate_s_bn_reduce0\.", "{stage}spatial_att.1."),
                      (r"^bam(\d)\.spatial_att\.gate_s\.gate_s_conv_di_0\.", "{stage}spatial_att.3."),
                      (r"^bam(\d)\.spatial_att\.gate_s\.gate_s_bn_di_0\.", "{stage}spatial_att.4."),
                      (r"^bam(\d)\.spatial_att\.gate_s\.gate_s_conv_di_1\.", "{stage}spatial_att.6."),
                      (r"^bam(\d)\.spatial_att\.gate_s\.gate_s_bn_di_1\.", "{stage}spatial_att.7."),
                      (r"^bam(\d)\.spatial_att\.gate_s\.gate_s_conv_final\.", "{stage}spatial_att.9."),
                  )),
    "eca": Source("eca", "eca", "BangguWu/ECANet models/eca_resnet.py (block.eca) and models/eca_module.py "
                  "(eca_layer.conv, Conv1d(1, 1, k))",
                  rules=((_BLOCK + r"eca\.", r"\1.attn."),)),
    "srm": Source("srm", "srm", "hyunjaelee410/style-based-recalibration-module models/resnet.py "
                  "(block.rclb) and "
                  "models/recalibration_modules.py (SRMLayer.cfc (C, 2), SRMLayer.bn)",
                  rules=((_BLOCK + r"rclb\.", r"\1.attn."),)),
    "gct": Source("gct", "gct", "z-x-yang/GCT PyTorch/resnet.py (stem.conv1 = [GCT, Conv2d], stem.bn1; block "
                  "convN = [GCT, Conv2d]; downsample = [GCT, Conv2d, BN]) and PyTorch/GCT.py (alpha, "
                  "gamma, beta)",
                  rules=(
                      (r"^stem\.conv1\.0\.", "conv1.attn."), (r"^stem\.conv1\.1\.", "conv1."),
                      (r"^stem\.bn1\.", "bn1."),
                      (_BLOCK + r"conv(\d)\.0\.", r"\1.conv\2.attn."),
                      (_BLOCK + r"conv(\d)\.1\.", r"\1.conv\2."),
                      (_BLOCK + r"downsample\.0\.", r"\1.downsample.0.attn."),
                      (_BLOCK + r"downsample\.1\.", r"\1.downsample.0."),
                      (_BLOCK + r"downsample\.2\.", r"\1.downsample.1."),
                  )),
    "fca": Source("fca", "fca", "cfzd/FcaNet model/fcanet.py (torchvision ResNet, block.att) and "
                  "model/layer.py (MultiSpectralAttentionLayer.dct_layer.weight buffer (C, h, w); "
                  "fc = [Linear, ReLU, Linear, "
                  "Sigmoid], no bias)",
                  rules=(
                      (_BLOCK + r"att\.dct_layer\.weight$", r"\1.attn.dct_weight"),
                      (_BLOCK + r"att\.fc\.0\.", r"\1.attn.fc1."),
                      (_BLOCK + r"att\.fc\.2\.", r"\1.attn.fc2."),
                  )),
    "gsop": Source("gsop", "gsop", "ZilinGao/Global-Second-order-Pooling-Convolutional-Networks "
                   "torchvision/models/resnet.py (Bottleneck conv_for_DR/bn_for_DR/row_bn/row_conv_group/"
                   "fc_adapt_channels; GSoP-Net2 layer_reduce/layer_reduce_bn and fc over the triangle of "
                   "torchvision/models/MPNCOV/python/MPNCOV.py Triuvec: the lower one, row by row)",
                   rules=(
                       (_BLOCK + r"conv_for_DR\.", r"\1.attn.conv_reduce."),
                       (_BLOCK + r"bn_for_DR\.", r"\1.attn.bn_reduce."),
                       (_BLOCK + r"row_bn\.", r"\1.attn.row_bn."),
                       (_BLOCK + r"row_conv_group\.", r"\1.attn.row_conv."),
                       (_BLOCK + r"fc_adapt_channels\.", r"\1.attn.fc."),
                       (r"^layer_reduce\.", "avgpool.conv_reduce."),
                       (r"^layer_reduce_bn\.", "avgpool.bn_reduce."),
                   ), fix=_gsop_fix),
    "dia": Source("dia", "dia", "gbup-group/DIANet models/cifar/dia_resnet.py (layerN = Attention: "
                  ".ModuleList.M "
                  "blocks, .lstm = LSTMCell with w_ih/w_hh = [small_cell .seq = Linear, ReLU, Linear])",
                  rules=(
                      (r"^layer(\d+)\.ModuleList\.(\d+)\.", r"layer\1.\2."),
                      (r"^layer(\d+)\.lstm\.(w_ih|w_hh)\.0\.seq\.(\d+)\.", r"layer\1.*.attn.cell.\2.\3."),
                  )),
})


def _source(source: str) -> Source:
    if not isinstance(source, str):
        raise InputTypeError(f"load_pretrained: source must be a str, got {type(source).__name__}")
    key = source.lower()
    if key not in SOURCES:
        raise InputError(f"load_pretrained: unknown source {source!r}; the sources: {', '.join(SOURCES)}")
    return SOURCES[key]


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved from (Distributed)DataParallel prefix every key with ``module.``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _rename(key: str, src: Source, model: nn.Module) -> list[str]:
    """The model keys ``key`` of ``src`` goes to (several for DIA's per-stage cell)."""
    new = key
    for pattern, repl in src.rules:
        match = re.match(pattern, key)
        if match is None:
            continue
        if isinstance(repl, str) and "{stage}" in repl:
            new = repl.replace("{stage}", _bam_stage_end(match, model)) + key[match.end():]
        else:
            new = re.sub(pattern, repl, key, count=1)
        break
    if ".*." in new:  # DIA: the stage's one cell, under every block of the stage
        head, tail = new.split(".*.", 1)
        stage = getattr(model, head, None)
        n = len(stage) if isinstance(stage, nn.Sequential) else 0
        return [f"{head}.{i}.{tail}" for i in range(n)] or [new]
    return [new]


def _fit_shape(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """An ``nn.Linear`` weight (O, I) as the 1x1 convolution (O, I, 1, 1) chanattn uses (or the
    reverse); any other shape is left for the mismatch check."""
    if tensor.shape == shape:
        return tensor
    squeezed = [s for s in tensor.shape if s != 1]
    if tensor.numel() == shape.numel() and squeezed == [s for s in shape if s != 1]:
        return tensor.reshape(shape)
    return tensor


def convert_state_dict(model: nn.Module, source: str, state: Mapping[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """``state`` (a checkpoint of ``source``) as a state dict of ``model``: keys renamed, tensors
    permuted and reshaped where the layers differ, and checked key by key.

    Raises:
        CheckpointError: a key that maps to no key of ``model`` (naming the key, what it became
            and the source), keys of ``model`` the checkpoint does not fill, or a shape mismatch
            (naming the key and both shapes).
    """
    src = _source(source)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"load_pretrained({src.name!r}): expected a state dict of tensors, got "
                              f"{type(state).__name__}")
    from .training.checkpoint import describe_mismatch, state_dict_mismatch

    expected = model.state_dict()
    what = f"the {src.name!r} checkpoint"
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in _strip_module_prefix(state).items():
        for new in _rename(key, src, model):
            if new not in expected:
                shown = f"{key!r}" + (f" (renamed {new!r})" if new != key else "")
                raise CheckpointError(
                    f"load_pretrained({src.name!r}): key {shown} of {what} maps to no key of "
                    f"{_describe(model)}{_hint(src, model)}")
            value = tensor
            if src.fix is not None:
                value = src.fix(new, value, model)
            out[new] = _fit_shape(value, expected[new].shape)
            origin[new] = key
    for key, value in expected.items():  # counters that checkpoints of PyTorch < 0.4.1 lack
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = value.clone()
    missing, unexpected, misshaped = state_dict_mismatch(expected, out)
    if missing or misshaped:
        shaped = [f"{origin[k.split(':')[0]]!r} -> {k}".replace(": file", ": checkpoint") for k in misshaped]
        raise CheckpointError(
            f"load_pretrained({src.name!r}): {what} does not fit {_describe(model)}: "
            f"{describe_mismatch(missing, unexpected, shaped)}{_hint(src, model)}"
            f"{'; ' + _SPLIT if src.name == 'timm' and any('.branches.' in k for k in misshaped) else ''}")
    return out


def _describe(model: nn.Module) -> str:
    cfg = getattr(model, "chanattn_config", None) or {}
    if cfg.get("arch"):
        return f"{cfg['arch']}{' + ' + cfg['attn'] if cfg.get('attn') else ''}"
    return type(model).__name__


def _hint(src: Source, model: nn.Module) -> str:
    cfg = getattr(model, "chanattn_config", None) or {}
    if src.attn is not None and cfg.get("attn") != src.attn:
        return (f"; {src.name!r} checkpoints are {src.attn} models: build the model with "
                f"create_model(arch, attn={src.attn!r})")
    if src.name == "timm":
        return ("; build the model timm's checkpoint is (chanattn.pretrained.timm_equivalent(timm_name) "
                "gives "
                "the create_model arguments; refused timm models: chanattn.pretrained.TIMM_REFUSED)")
    return ""


# ---------------------------------------------------------------------------------- loading
def _download(url: str, filename: str, source: str) -> str:
    """The file of ``url`` in torch.hub's cache, downloaded there if it is not yet."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, filename)
    if os.path.isfile(path):
        return path
    try:
        os.makedirs(folder, exist_ok=True)
        torch.hub.download_url_to_file(url, path, progress=False)
    except Exception as exc:  # URLError, HTTPError, OSError, timeouts: all one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"load_pretrained({source!r}): could not download {url} ({reason}); without a network, fetch "
            f"the file elsewhere and load it from disk: "
            f"load_pretrained(model, {source!r}, 'path/to/{filename}')"
        ) from None
    return path


def _weights_for(model: nn.Module, src: Source, name: str | None) -> PretrainedWeights:
    """The row of the URL table for ``name``, else the one that builds ``model``."""
    if name is not None:
        row = pretrained_weights(name)
        if row.source != src.name:
            raise CheckpointError(f"load_pretrained({src.name!r}): the weights {name!r} are a "
                                  f"{row.source!r} checkpoint")
        return row
    cfg = getattr(model, "chanattn_config", None) or {}
    same = [r for r in PRETRAINED_WEIGHTS if r.source == src.name and r.build.get("arch") == cfg.get("arch")
            and r.build.get("attn") == cfg.get("attn")]
    # those built with the model's options first (timm's seresnet50 before seresnet50t); the shape
    # check then says where a model built otherwise does not fit
    exact = [r for r in same if all(cfg.get("model_kwargs", {}).get(k) == v for k, v in r.build.items()
                                    if k not in ("arch", "attn", "attn_kwargs"))]
    rows = exact or same
    if not rows:
        raise CheckpointError(f"load_pretrained({src.name!r}): no published weights known for "
                              f"{_describe(model)}; pass a file, a state dict or a URL (the table: "
                              "chanattn.pretrained.PRETRAINED_WEIGHTS)")
    return rows[0]


def load_pretrained(model: nn.Module, source: str, path_or_state_dict: Any = None, *,
                    name: str | None = None) -> nn.Module:
    """Load the published weights of ``source`` into ``model`` (built with
    :func:`chanattn.create_model` as the checkpoint's network) and return it.

    Args:
        model: the chanattn model (e.g. ``create_model("resnet50", attn="cbam")``; for timm,
            :func:`timm_equivalent` gives the arguments).
        source: one of :data:`SOURCES` (``"timm"``, ``"cbam"``, ``"bam"``, ``"eca"``, ``"srm"``,
            ``"gct"``, ``"fca"``, ``"gsop"``, ``"dia"``).
        path_or_state_dict: a state dict; a file (``torch.save`` of a state dict or of a checkpoint
            holding one under ``state_dict``/``model``, or safetensors); an ``http(s)://`` URL; or
            ``"url"``/None: the URL of :data:`PRETRAINED_WEIGHTS` for ``name`` or, without it, for
            the weights that build ``model``. URLs download into torch.hub's cache once.
        name: a :data:`PRETRAINED_WEIGHTS` name (``"seresnet50.a1_in1k"``), with ``"url"``/None.

    Raises:
        CheckpointError: a key that does not map, a missing key, a shape mismatch, a file that is
            missing or not weights, or a download that fails (the message names the URL and how to
            load a local file instead).
    """
    src = _source(source)
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"load_pretrained: model must be an nn.Module, got {type(model).__name__}")
    state = path_or_state_dict
    if isinstance(state, Mapping):
        pass
    elif state is None or (isinstance(state, str) and (state == "url" or re.match(r"^https?://", state))):
        if state is None or state == "url":
            row = _weights_for(model, src, name)
            if row.url is None:
                raise CheckpointError(f"load_pretrained({src.name!r}): {row.name} has no stable download URL "
                                      f"({row.where}); download it by hand and pass the file")
            url, filename = row.url, row.cache_name()
        else:
            url, filename = state, os.path.basename(state.split("?", 1)[0]) or "checkpoint.pth"
        state = _load_file(_download(url, filename, src.name))
    elif isinstance(state, (str, os.PathLike)):
        state = _load_file(os.fspath(state))
    else:
        raise InputTypeError(f"load_pretrained({src.name!r}): path_or_state_dict must be a state dict, "
                             "a path, "
                             f"a URL, 'url' or None, got {type(state).__name__}")
    converted = convert_state_dict(model, src.name, state)
    from .training.checkpoint import load_model_state

    load_model_state(model, converted, f"the {src.name!r} checkpoint")
    return model


def _load_file(path: str) -> dict[str, torch.Tensor]:
    from .training.checkpoint import load_weights

    state, _ = load_weights(path)  # weights_only=True, or safetensors
    return state
