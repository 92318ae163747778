"""The CIFAR ResNets: the residual-learning paper's (ResNet-20/32/44/56/110 and a small ResNet-8:
three stages of basic blocks, 16-32-64 channels, on 32x32 inputs) and the bottleneck ResNet-164 and
ResNet-1001 of the identity-mappings paper (pre-activation, 64-128-256 channels).

Deep Residual Learning for Image Recognition (He, Zhang, Ren, Sun; CVPR 2016,
https://arxiv.org/abs/1512.03385), section 4.2; Identity Mappings in Deep Residual Networks (He,
Zhang, Ren, Sun; ECCV 2016, https://arxiv.org/abs/1603.05027).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .classifier import ClassifierMixin, make_classifier
from .placement import AttnKwargs, AttnPlan, AttnSpec, downsampled, init_backbone_, make_pool, stage_end_flags
from .registry import register_model
from .resnet import BasicBlock, Bottleneck, ConvFactory, conv1x1, conv3x3, make_resnet_stage, resnet_stage_of

__all__ = ["BLOCKS", "SHORTCUTS", "CifarResNet", "PreActBottleneck", "ZeroPadShortcut"]

#: ``block`` of :class:`CifarResNet`.
BLOCKS = ("basic", "bottleneck")

#: ``"conv"``: the paper's option B (the default); ``"pad"``: option A (see :class:`CifarResNet`).
SHORTCUTS = ("conv", "pad")


class ZeroPadShortcut(nn.Module):
    """The parameter-free shortcut of option A: y = [x[:, :, ::s, ::s], zeros] (channels C -> C').

    The input is subsampled with the stride and the missing channels are zeros, appended after
    the input's channels (the paper: "the shortcut still performs identity mapping, with extra
    zero entries padded for increasing dimensions").
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise InputError(f"ZeroPadShortcut: out_channels must be >= in_channels={in_channels}, "
                             f"got {out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (B, C, ceil(H/s), ceil(W/s))
        pad = x.new_zeros(x.shape[0], self.out_channels - self.in_channels, x.shape[2], x.shape[3])
        return torch.cat([x, pad], 1)  # (B, C', H', W')

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _pad_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return ZeroPadShortcut(in_channels, out_channels, stride)


def _conv_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class PreActBottleneck(nn.Module):
    """y = attn(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(ReLU(BN(x')))))))))) + shortcut(x'), x' = pre_attn(x).

    The pre-activation bottleneck of the identity-mappings paper: BN and ReLU before each
    convolution, nothing after the addition. Where the shape changes, the shortcut is a 1x1
    convolution (no BN) of the pre-activated input ReLU(BN(x')), as the paper's first unit
    ("the first activation right after conv1 and before splitting into two paths") and the WRN
    blocks of :mod:`chanattn.models.wide_resnet` (bearpaw's and DIANet's PreResNet code feed it x'
    itself; the parameters are the same). The stride is on the 3x3 convolution.

    The block has no BN after its last convolution: the attention sees the output of the last
    convolution, the end of the residual branch, before the addition (DIANet's PreResNet-164 adds a
    BN there for its DIA unit, ``bn_additional``; not here). With ``sk_conv`` (SK), the 3x3
    convolution and the BN and ReLU after it are replaced by the SK unit.

    Args:
        in_channels: input channels; planes: the bottleneck width (output channels 4 * planes).
        stride: of the 3x3 convolution.
        downsample: the shortcut's 1x1 convolution (None: identity).
        attn, pre_attn, sk_conv: as :class:`~chanattn.models.resnet.BasicBlock`.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 *, groups: int = 1, base_width: int = 64, attn: nn.Module | None = None,
                 pre_attn: nn.Module | None = None, sk_conv: ConvFactory | None = None,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        if groups != 1 or base_width != 64 or stride_in_1x1:
            raise InputError("PreActBottleneck supports only groups=1, base_width=64 and the stride on the "
                             f"3x3 convolution, got groups={groups}, base_width={base_width}, "
                             f"stride_in_1x1={stride_in_1x1}")
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_channels, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        if sk_conv is None:
            self.conv2 = conv3x3(planes, planes, stride)
            self.bn3 = nn.BatchNorm2d(planes)
            self.act3 = nn.ReLU(inplace=True)
        else:
            self.conv2 = sk_conv(planes, planes, stride)
            self.bn3 = nn.Identity()
            self.act3 = nn.Identity()
        self.conv3 = conv1x1(planes, out_channels)
        self.downsample = downsample
        self.stride = stride
        self.out_channels = out_channels
        self.attn = attn
        self.pre_attn = pre_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_attn is not None:
            x = self.pre_attn(x)
        pre = self.act1(self.bn1(x))  # a new tensor: x stays the identity shortcut
        out = self.act2(self.bn2(self.conv1(pre)))
        out = self.conv3(self.act3(self.bn3(self.conv2(out))))
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.downsample is None else self.downsample(pre)
        return out + shortcut


def _preact_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return conv1x1(in_channels, out_channels, stride)


class CifarResNet(ClassifierMixin, nn.Module):
    """The CIFAR ResNet: a 3x3 convolution, three stages of n blocks (strides 1-2-2), global average
    pooling and a linear classifier.

    ``block="basic"`` (default): depth 6n + 2, basic blocks of 16-32-64 channels (He et al. 2016,
    section 4.2). The shortcut where the shape changes (``shortcut``): ``"conv"`` (default) is a
    1x1 strided convolution and BN (the paper's option B), as in the C3 paper's reference code,
    whose CIFAR-100 table MODULES.md quotes; it reproduces those figures (100 classes:
    ResNet-20/56/110 have 0.28/0.86/1.74 M parameters and 40.8/125.8/253.2 M multiply-adds, within
    2.2% of the 41.7/128.2/257.9 M quoted). ``"pad"`` is the paper's option A, the parameter-free
    zero-padded identity of its own CIFAR experiments (:class:`ZeroPadShortcut`): 2,752 parameters
    and 0.26 M multiply-adds fewer (ResNet-110: 1.73 M).

    ``block="bottleneck"``: depth 9n + 2 (164, 1001), bottlenecks of 16-32-64 planes (64-128-256
    output channels), projection shortcuts. ``preact=True`` (default for the bottleneck): the
    identity-mappings paper's pre-activation network (:class:`PreActBottleneck`, a BN and ReLU
    before the pooling), ResNet-164 with 1.70 M parameters (10 classes) as its Table 2;
    ``preact=False``: the original post-activation bottleneck
    (:class:`~chanattn.models.resnet.Bottleneck`, v1.5), DIANet's "ResNet164".

    Attention (``attn``) where its paper puts it (see :func:`chanattn.create_model`).

    Args:
        depth: 6n + 2 for basic blocks (8, 20, 32, 44, 56, 110, ...), 9n + 2 for bottlenecks
            (164, 1001, ...).
        num_classes: default 10.
        in_chans: input channels (default 3; 1 for grey images).
        widths: channels (basic) or planes (bottleneck) of the three stages (default (16, 32, 64)).
        shortcut: ``"conv"`` (default, option B) or ``"pad"`` (option A, basic blocks only).
        block: ``"basic"`` (default) or ``"bottleneck"``.
        preact: pre-activation blocks (bottleneck only; default: True for the bottleneck).
        attn, attn_kwargs: the attention module (see :func:`chanattn.create_model`).
        head: ``"avg"`` (default) or ``"gsop"`` (covariance pooling); head_kwargs: its options.
        global_pool: with ``head="avg"``, timm's pooling type (default ``"avg"``).

    timm's API as :class:`~chanattn.models.resnet.ResNet`: ``forward_head``, ``reset_classifier``,
    ``feature_info`` (the stem's ``act1``, ``layer1``, ``layer2``, and ``act``: the last stage
    after the pre-activation network's final BN and ReLU), ``inplanes``, ``num_classes=0``.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, *, in_chans: int = 3,
                 widths: Sequence[int] = (16, 32, 64), shortcut: str = "conv", block: str = "basic",
                 preact: bool | None = None, attn: AttnSpec | AttnPlan = None, attn_kwargs: AttnKwargs = None,
                 head: str = "avg", head_kwargs: dict | None = None, global_pool: str = "avg") -> None:
        super().__init__()
        owner = type(self).__name__
        if block not in BLOCKS:
            raise InputError(f"{owner}: block must be one of {BLOCKS}, got {block!r}")
        per_block = 2 if block == "basic" else 3
        step = 3 * per_block
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < step + 2 or (depth - 2) % step:
            examples = "8, 20, 32, 44, 56, 110" if block == "basic" else "29, 56, 164, 1001"
            raise InputError(f"{owner}: depth must be {step}n + 2 with n >= 1 for {block} blocks "
                             f"({examples}), got {depth!r}")
        if shortcut not in SHORTCUTS:
            raise InputError(f"{owner}: shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if len(widths) != 3:
            raise InputError(f"{owner}: widths must give 3 stage widths, got {widths!r}")
        preact = (block == "bottleneck") if preact is None else bool(preact)
        if preact and block != "bottleneck":
            raise InputError(f"{owner}: preact=True is offered for block='bottleneck' only")
        if block == "bottleneck" and shortcut != "conv":
            raise InputError(f"{owner}: bottleneck networks use projection shortcuts (shortcut='conv'), "
                             f"got {shortcut!r}")
        n = (depth - 2) // step
        plan = AttnPlan.of(attn, attn_kwargs, owner=owner)
        size = plan.bind(num_stages=3, default_input_size=32, head=head)
        self.default_input_size = size
        self.depth = depth
        self.preact = preact
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        if preact:  # the first unit's BN-ReLU does it
            self.bn1, self.act1 = nn.Identity(), nn.Identity()
        else:
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.act1 = nn.ReLU(inplace=True)
        if block == "basic":
            block_cls, make_downsample = BasicBlock, (_pad_shortcut if shortcut == "pad" else _conv_shortcut)
        elif preact:
            block_cls, make_downsample = PreActBottleneck, _preact_shortcut
        else:
            block_cls, make_downsample = Bottleneck, _conv_shortcut
        strides = (1, 2, 2)
        after = stage_end_flags(strides)
        in_channels = widths[0]
        self.feature_info = [{"num_chs": in_channels, "reduction": 1, "module": "act1"}]
        for i, w in enumerate(widths):
            stage = make_resnet_stage(block_cls, in_channels, w, n, strides[i], plan,
                                      make_downsample=make_downsample, index=i, size=size,
                                      downsampled_next=after[i])
            self.add_module(f"layer{i + 1}", stage)
            in_channels = w * block_cls.expansion
            size = downsampled(size, strides[i])
            reduction = self.feature_info[-1]["reduction"] * strides[i]
            self.feature_info.append({"num_chs": in_channels, "reduction": reduction,
                                      "module": "act" if i == 2 else f"layer{i + 1}"})
        # the pre-activation network's last BN and ReLU before the pooling (none after post-activation blocks)
        self.bn = nn.BatchNorm2d(in_channels) if preact else nn.Identity()
        self.act = nn.ReLU(inplace=True) if preact else nn.Identity()
        self.num_features = self.inplanes = in_channels
        self.pool, self.head_hidden_size = make_pool(head, in_channels, head_kwargs, owner=owner,
                                                     global_pool=global_pool)
        self.fc = make_classifier(self.head_hidden_size, num_classes, global_pool)
        self.num_classes = num_classes
        self.drop_rate = 0.0
        init_backbone_(self, keep=[*plan.created, self.pool])
        plan.before_every_conv(self, lambda name: resnet_stage_of(name, (n, n, n)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.act(self.bn(self.layer3(self.layer2(self.layer1(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The pooling, dropout (``drop_rate``) and classifier; ``pre_logits``: stop before the classifier."""
        x = self.pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _register_depth(depth: int, description: str) -> None:
    def factory(*, attn=None, attn_kwargs=None, num_classes=10, in_chans=3, shortcut="conv",
                widths=(16, 32, 64), head="avg", head_kwargs=None, global_pool="avg") -> CifarResNet:
        return CifarResNet(depth, num_classes, in_chans=in_chans, widths=widths, shortcut=shortcut,
                           attn=attn, attn_kwargs=attn_kwargs, head=head, head_kwargs=head_kwargs,
                           global_pool=global_pool)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth}: {description}. See :class:`CifarResNet`."
    register_model(f"resnet{depth}", family="cifar", description=description)(factory)
    globals()[factory.__name__] = factory
    __all__.append(factory.__name__)


def _register_bottleneck_depth(depth: int, description: str) -> None:
    def factory(*, attn=None, attn_kwargs=None, num_classes=10, in_chans=3, preact=True, head="avg",
                head_kwargs=None, global_pool="avg") -> CifarResNet:
        return CifarResNet(depth, num_classes, in_chans=in_chans, block="bottleneck", preact=preact,
                           attn=attn, attn_kwargs=attn_kwargs, head=head, head_kwargs=head_kwargs,
                           global_pool=global_pool)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = (f"CIFAR ResNet-{depth}: {description}; ``preact=False`` for the post-activation "
                       "bottleneck. See :class:`CifarResNet`.")
    register_model(f"resnet{depth}", family="cifar", description=description)(factory)
    globals()[factory.__name__] = factory
    __all__.append(factory.__name__)


_register_depth(8, "CIFAR ResNet-8, 1 basic block per stage (16-32-64), for fast runs and 8x8 digits")
_register_depth(20, "CIFAR ResNet-20, 3 basic blocks per stage (16-32-64), 0.27 M params")
_register_depth(32, "CIFAR ResNet-32, 5 basic blocks per stage (16-32-64), 0.47 M params")
_register_depth(44, "CIFAR ResNet-44, 7 basic blocks per stage (16-32-64), 0.66 M params")
_register_depth(56, "CIFAR ResNet-56, 9 basic blocks per stage (16-32-64), 0.86 M params")
_register_depth(110, "CIFAR ResNet-110, 18 basic blocks per stage (16-32-64), 1.73 M params")
_register_bottleneck_depth(164, "CIFAR ResNet-164, 18 pre-activation bottlenecks per stage (64-128-256), "
                                "1.70 M params")
_register_bottleneck_depth(1001, "CIFAR ResNet-1001, 111 pre-activation bottlenecks per stage (64-128-256), "
                                 "10.3 M params")
