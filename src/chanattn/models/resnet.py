"""ResNets with an attention module where its paper puts it: the basic and bottleneck blocks, and the
ImageNet ResNet-18/34/50/101/152, ResNeXt-50 32x4d and Wide-ResNet-50-2 (v1.5, or v1 with
``stride_in_1x1=True``).

Deep Residual Learning for Image Recognition (He, Zhang, Ren, Sun; CVPR 2016,
https://arxiv.org/abs/1512.03385); Aggregated Residual Transformations for Deep Neural Networks
(Xie, Girshick, Dollár, Tu, He; CVPR 2017, https://arxiv.org/abs/1611.05431).

The layer names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``fc``; in a
block ``conv1`` ... ``bn3``, ``downsample``), so a torchvision checkpoint loads into the model
without attention, and into one with attention with ``strict=False`` (only the attention is new;
where each module's keys go: :mod:`chanattn.models.placement`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .classifier import ClassifierMixin, make_classifier
from .placement import AttnKwargs, AttnPlan, AttnSpec, downsampled, init_backbone_, make_pool, stage_end_flags
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "make_resnet_stage", "resnet_stage_of"]

#: Builds the module that replaces a 3x3 convolution and the BN and ReLU after it (SK):
#: ``f(in_channels, out_channels, stride)``.
ConvFactory = Callable[[int, int, int], nn.Module]

STEMS = ("imagenet", "cifar", "deep", "deep_tiered")

#: The channels of the deep stems' first two 3x3 convolutions (the third gives 64), as timm's
#: ``stem_type="deep"`` / ``"deep_tiered"`` with ``stem_width=32`` (ResNet-D, Bag of Tricks,
#: https://arxiv.org/abs/1812.01187; timm's ``*d`` and ``*t`` models).
DEEP_STEM_WIDTHS = {"deep": (32, 32), "deep_tiered": (24, 32)}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """y = ReLU(attn(BN(conv3x3(ReLU(BN(conv3x3(x')))))) + shortcut(x')), x' = pre_attn(x).

    With ``sk_conv`` (SK), the first 3x3 convolution and the BN and ReLU after it are replaced by
    the SK unit (which has a BN and a ReLU in each branch); the second convolution and its BN stay,
    so the attention still sees the output of the branch's last BN, and no ReLU comes before the
    addition (the first convolution is the one with the stride, as in SKNet's basic block).

    Args:
        in_channels, planes: input and output channels.
        stride: of the first convolution.
        downsample: the shortcut (None: identity).
        attn: the attention module on the residual branch (None: none).
        pre_attn: the module on the block's input, before the branch and the shortcut (the
            ``"stage_start"`` module of a stage's first block; None: none).
        sk_conv: builds the replacement of the first 3x3 convolution (None: a convolution).
        stride_in_1x1: no 1x1 convolution here; accepted for the bottleneck's signature.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, *, groups: int = 1, base_width: int = 64,
                 attn: nn.Module | None = None, pre_attn: nn.Module | None = None,
                 sk_conv: ConvFactory | None = None, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise InputError(f"BasicBlock supports only groups=1 and base_width=64, got "
                             f"groups={groups}, base_width={base_width}")
        if sk_conv is None:
            self.conv1 = conv3x3(in_channels, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.act1 = nn.ReLU(inplace=True)
        else:
            self.conv1 = sk_conv(in_channels, planes, stride)
            self.bn1 = nn.Identity()
            self.act1 = nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.out_channels = planes
        self.attn = attn  # registered last, where attach() puts it in torchvision's blocks
        self.pre_attn = pre_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_attn is not None:
            x = self.pre_attn(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act2(out + shortcut)


class Bottleneck(nn.Module):
    """y = ReLU(attn(BN(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(x')))))))) + shortcut(x')), x' = pre_attn(x).

    The stride is on the 3x3 convolution (ResNet v1.5, as torchvision), or on the first 1x1
    convolution with ``stride_in_1x1`` (ResNet v1, the original MSRA model, on which the SE, CBAM,
    BAM and GE papers count their FLOPs: ResNet-50 3.86 G multiply-adds instead of 4.09 G; same
    parameters). ``groups`` and ``base_width`` give ResNeXt's width = planes * base_width / 64 *
    groups. With ``sk_conv`` (SK), the 3x3 convolution and the BN and ReLU after it are replaced by
    the SK unit (SKNet's bottleneck), with the 3x3's stride; SK uses its own ``groups`` (32 by
    default, ``attn_kwargs`` changes it).

    Args:
        in_channels: input channels; planes: the bottleneck width before ``groups``/``base_width``
            (output channels = 4 * planes).
        stride, downsample, attn, pre_attn, sk_conv: as :class:`BasicBlock`.
        stride_in_1x1: the stride on the first 1x1 convolution (v1) instead of the 3x3 (default
            False, v1.5).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, *, groups: int = 1, base_width: int = 64,
                 attn: nn.Module | None = None, pre_attn: nn.Module | None = None,
                 sk_conv: ConvFactory | None = None, stride_in_1x1: bool = False) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        if sk_conv is None:
            self.conv2 = conv3x3(width, width, stride_3x3, groups)
            self.bn2 = nn.BatchNorm2d(width)
            self.act2 = nn.ReLU(inplace=True)
        else:
            self.conv2 = sk_conv(width, width, stride_3x3)
            self.bn2 = nn.Identity()
            self.act2 = nn.Identity()
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.out_channels = out_channels
        self.attn = attn  # registered last, where attach() puts it in torchvision's blocks
        self.pre_attn = pre_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_attn is not None:
            x = self.pre_attn(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act3(out + shortcut)


def make_resnet_stage(block: type[nn.Module], in_channels: int, planes: int, num_blocks: int,
                      stride: int, plan: AttnPlan, *, make_downsample: Callable[[int, int, int], nn.Module],
                      index: int = 0, size: tuple[int, int] | None = None, downsampled_next: bool = False,
                      groups: int = 1, base_width: int = 64, stride_in_1x1: bool = False) -> nn.Sequential:
    """Stage ``index``: ``num_blocks`` blocks (the first with ``stride``) with the attention of
    ``plan`` where it goes (in the blocks, before the first, after the last: see
    :class:`~chanattn.models.placement.AttnPlan`).

    Args:
        size: the stage's input (H, W) at the model's input size (None: unknown), for the
            modules' per-stage settings.
        downsampled_next: whether the next stage downsamples (an ``"after_stage"`` module follows).
        make_downsample: ``f(in_channels, out_channels, stride)``, the shortcut where the first
            block changes the shape.
    """
    out_channels = planes * block.expansion
    out_size = downsampled(size, stride)
    stage = plan.stage(index, out_channels, out_size, num_blocks)
    pre = plan.stage_start(plan.stage(index, in_channels, size, num_blocks))
    attns = plan.block_modules(stage)
    sk_conv = plan.conv_factory(stage)
    blocks: list[nn.Module] = []
    for i in range(num_blocks):
        s = stride if i == 0 else 1
        cin = in_channels if i == 0 else out_channels
        downsample = make_downsample(cin, out_channels, s) if (s != 1 or cin != out_channels) else None
        blocks.append(block(cin, planes, s, downsample, groups=groups, base_width=base_width,
                            attn=attns[i], pre_attn=pre if i == 0 else None, sk_conv=sk_conv,
                            stride_in_1x1=stride_in_1x1))
    post = plan.stage_end(stage, downsampled_next)
    if post is not None:
        blocks.append(post)
    return nn.Sequential(*blocks)


def resnet_stage_of(name: str, layers: Sequence[int]) -> tuple[int, int]:
    """(stage index, blocks of the stage) of a layer named ``name`` in a model whose stages are
    ``layer1`` ... (``-1, 0`` for the stem and the head)."""
    head = name.split(".", 1)[0]
    if head.startswith("layer") and head[5:].isdigit() and 1 <= int(head[5:]) <= len(layers):
        i = int(head[5:]) - 1
        return i, layers[i]
    return -1, 0


def _conv_downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


def _avg_downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """ResNet-D's shortcut: 2x2 average pooling with the stride (ceil mode, padding not counted),
    then a stride-1 1x1 convolution and BN; no pooling at stride 1 (layout of timm's
    ``avg_down=True``: ``downsample.1`` is the convolution, ``downsample.2`` the BN)."""
    pool = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride != 1
            else nn.Identity())
    return nn.Sequential(pool, conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))


def _deep_stem(in_chans: int, widths: tuple[int, int]) -> nn.Sequential:
    """Three 3x3 convolutions (the first with stride 2) in place of the 7x7: conv-BN-ReLU twice,
    then the convolution to 64 channels (its BN and ReLU are the model's ``bn1`` and ``relu``)."""
    a, b = widths
    return nn.Sequential(
        nn.Conv2d(in_chans, a, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
        nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
        nn.Conv2d(b, 64, 3, padding=1, bias=False))


class ResNet(ClassifierMixin, nn.Module):
    """The ImageNet ResNet (and ResNeXt, Wide-ResNet-50-2) with an attention module.

    As timm's ResNet: ``forward_features`` (the last stage's map), ``forward_head(x,
    pre_logits=False)``, ``reset_classifier(num_classes, global_pool=None)``,
    ``get_classifier()``, ``num_classes``, ``num_features``, ``feature_info`` (the stem's ReLU and
    ``layer1`` ... ``layer4``, for ``timm.create_model(..., features_only=True)`` through
    :mod:`chanattn.timm`) and ``drop_rate`` (dropout before the classifier, default 0). As
    torchvision's: the children in the order of the forward pass (``conv1``, ``bn1``, ``relu``,
    ``maxpool``, ``layer1`` ...) and ``inplanes`` (the last stage's channels), which torchvision's
    ``IntermediateLayerGetter`` and detection backbones (``BackboneWithFPN``) read.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage (four stages, 64-128-256-512 planes).
        num_classes: default 1000.
        in_chans: input channels (default 3).
        stem: ``"imagenet"`` (default): 7x7 stride-2 convolution and 3x3 stride-2 max pooling,
            for 224x224 inputs; ``"cifar"``: a 3x3 stride-1 convolution and no pooling, for small
            inputs (32x32: the last stage is 4x4 instead of 1x1); ``"deep"`` / ``"deep_tiered"``:
            ResNet-D's three 3x3 convolutions (32-32-64 / 24-32-64 channels, the first with stride
            2) and the max pooling, as timm's ``*d`` / ``*t`` models (``conv1`` is then an
            ``nn.Sequential``, with timm's key names).
        avg_down: ResNet-D's shortcut, average pooling before a stride-1 1x1 convolution (default
            False; timm's ``avg_down=True``).
        groups, width_per_group: ResNeXt's cardinality and width (default 1, 64).
        stride_in_1x1: ResNet v1, the stride of a bottleneck on its first 1x1 convolution
            (default False: v1.5, as torchvision; see :class:`Bottleneck`).
        last_stride: the stride of the last stage (default 2; 1 keeps stage 4 at stage 3's size,
            as the official GSoP-Net ResNets, which ``attn="gsop"`` sets through
            :func:`chanattn.create_model`).
        attn, attn_kwargs: the attention module (see :func:`chanattn.create_model`), or an
            :class:`~chanattn.models.placement.AttnPlan`.
        head: ``"avg"`` (default, global average pooling) or ``"gsop"`` (GSoP-Net2's covariance
            pooling head); head_kwargs: its options.
        zero_init_residual: initialise the last BN of each residual branch to zero (default False).
        global_pool: with ``head="avg"``, timm's pooling type (default ``"avg"``; ``"max"``,
            ``"avgmax"``, ``"catavgmax"``; :class:`~chanattn.models.classifier.GlobalPool`).
        num_classes: 0 gives no classifier (the model returns pooled features, as timm's).
    """

    _pool_name = "avgpool"

    def __init__(self, block: type[nn.Module], layers: Sequence[int], num_classes: int = 1000, *,
                 in_chans: int = 3, stem: str = "imagenet", groups: int = 1, width_per_group: int = 64,
                 stride_in_1x1: bool = False, last_stride: int = 2, attn: AttnSpec | AttnPlan = None,
                 attn_kwargs: AttnKwargs = None, head: str = "avg", head_kwargs: dict | None = None,
                 zero_init_residual: bool = False, global_pool: str = "avg", avg_down: bool = False) -> None:
        super().__init__()
        owner = type(self).__name__
        if stem not in STEMS:
            raise InputError(f"{owner}: stem must be one of {STEMS}, got {stem!r}")
        if last_stride not in (1, 2):
            raise InputError(f"{owner}: last_stride must be 1 or 2, got {last_stride!r}")
        plan = AttnPlan.of(attn, attn_kwargs, owner=owner)
        size = plan.bind(num_stages=len(layers), default_input_size=32 if stem == "cifar" else 224,
                         head=head)
        self.default_input_size = size
        # the children in the order of the forward pass, as torchvision's: IntermediateLayerGetter
        # (detection backbones) and timm's FeatureListNet run them in this order
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = _deep_stem(in_chans, DEEP_STEM_WIDTHS[stem])
        if stem != "cifar":
            size = downsampled(downsampled(size, 2), 2)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem != "cifar" else nn.Identity()
        reduction = 2 if stem != "cifar" else 1
        self.feature_info = [{"num_chs": 64, "reduction": reduction, "module": "relu"}]
        reduction *= 2 if stem != "cifar" else 1
        strides = (1, 2, 2, last_stride)
        after = stage_end_flags(strides)
        in_channels = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = make_resnet_stage(block, in_channels, planes, n, strides[i], plan,
                                      make_downsample=_avg_downsample if avg_down else _conv_downsample,
                                      index=i, size=size,
                                      downsampled_next=after[i], groups=groups, base_width=width_per_group,
                                      stride_in_1x1=stride_in_1x1)
            self.add_module(f"layer{i + 1}", stage)
            in_channels = planes * block.expansion
            size = downsampled(size, strides[i])
            reduction *= strides[i]
            self.feature_info.append({"num_chs": in_channels, "reduction": reduction,
                                      "module": f"layer{i + 1}"})
        self.num_features = self.inplanes = in_channels
        self.avgpool, self.head_hidden_size = make_pool(head, in_channels, head_kwargs, owner=owner,
                                                        global_pool=global_pool)
        self.fc = make_classifier(self.head_hidden_size, num_classes, global_pool)
        self.num_classes = num_classes
        self.drop_rate = 0.0
        init_backbone_(self, keep=[*plan.created, self.avgpool])
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
        plan.before_every_conv(self, lambda name: resnet_stage_of(name, layers))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The pooling, dropout (``drop_rate``) and classifier on ``forward_features``' output;
        ``pre_logits``: stop before the classifier."""
        x = self.avgpool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_IMAGENET = {"family": "imagenet", "input_size": (3, 224, 224), "num_classes": 1000}


def _register_resnet(name: str, block: type[nn.Module], layers: tuple[int, ...], description: str,
                     **fixed) -> None:
    """Register ``name``: a factory with the options every ImageNet ResNet shares, building
    :class:`ResNet` with ``block``, ``layers`` and the ``fixed`` options (ResNeXt's groups ...)."""

    def factory(*, attn=None, attn_kwargs=None, num_classes=1000, in_chans=3, stem="imagenet", head="avg",
                head_kwargs=None, zero_init_residual=False, stride_in_1x1=False, last_stride=2,
                global_pool="avg", avg_down=False) -> ResNet:
        return ResNet(block, layers, num_classes, in_chans=in_chans, stem=stem, stride_in_1x1=stride_in_1x1,
                      last_stride=last_stride, attn=attn, attn_kwargs=attn_kwargs, head=head,
                      head_kwargs=head_kwargs, zero_init_residual=zero_init_residual, global_pool=global_pool,
                      avg_down=avg_down,
                      **fixed)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{description}. See :class:`ResNet` for the options."
    register_model(name, description=description, **_IMAGENET)(factory)
    globals()[name] = factory
    __all__.append(name)


_register_resnet("resnet18", BasicBlock, (2, 2, 2, 2), "ResNet-18 (basic blocks, 2-2-2-2), 11.7 M params")
_register_resnet("resnet34", BasicBlock, (3, 4, 6, 3), "ResNet-34 (basic blocks, 3-4-6-3), 21.8 M params")
_register_resnet("resnet50", Bottleneck, (3, 4, 6, 3), "ResNet-50 (bottlenecks, 3-4-6-3), 25.56 M params")
_register_resnet("resnet101", Bottleneck, (3, 4, 23, 3), "ResNet-101 (bottlenecks, 3-4-23-3), 44.5 M params")
_register_resnet("resnet152", Bottleneck, (3, 8, 36, 3), "ResNet-152 (bottlenecks, 3-8-36-3), 60.2 M params")
_register_resnet("resnext50_32x4d", Bottleneck, (3, 4, 6, 3),
                 "ResNeXt-50 32x4d (grouped bottlenecks), 25.0 M params", groups=32, width_per_group=4)
_register_resnet("wide_resnet50_2", Bottleneck, (3, 4, 6, 3),
                 "Wide-ResNet-50-2 (bottlenecks twice as wide), 68.9 M params", width_per_group=128)
