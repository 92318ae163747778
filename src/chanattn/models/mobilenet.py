"""MobileNetV2 with an attention module where its paper puts it (per block: after the projection's BN).

MobileNetV2: Inverted Residuals and Linear Bottlenecks (Sandler, Howard, Zhu, Zhmoginov, Chen;
CVPR 2018, https://arxiv.org/abs/1801.04381).

The layer names are torchvision's (``features.<i>``, a block's ``conv`` with its last BN at
``conv.<n>``, ``classifier.1``), so a torchvision checkpoint loads into the model without
attention (and, with ``strict=False``, into one with per-block attention).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import make_divisible
from .classifier import ClassifierMixin, GlobalPool, make_classifier
from .placement import AttnAfter, AttnKwargs, AttnPlan, AttnSpec, downsampled, init_backbone_, stage_end_flags
from .registry import register_model
from .resnet import ConvFactory

__all__ = ["ConvBNAct", "InvertedResidual", "MobileNetV2"]

#: (expansion t, output channels c, blocks n, stride s of the first block), the paper's Table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))

STEMS = ("imagenet", "cifar")


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BN -> ReLU6, as ``nn.Sequential`` (keys ``0``, ``1``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )
        # read by torchvision's detection helpers, as its Conv2dNormActivation's
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """y = x' + attn(BN(conv1x1(dw3x3(expand1x1(x'))))), x' = pre_attn(x), where the shapes allow the
    residual, else without the ``x' +``.

    The attention goes on the linear projection's output after its BN (the block's last BN),
    before the addition; blocks without a residual connection (a stride or a channel change) get
    one too, on the same tensor. With ``sk_conv`` (SK), the depthwise 3x3 convolution and its BN
    and ReLU6 are replaced by an SK unit with one group per channel (a depthwise SK).

    Args:
        in_channels, out_channels: channels; stride: of the depthwise convolution.
        expand_ratio: t, the hidden width in_channels * t.
        attn: the attention module (None: none); pre_attn: the module on the block's input (None:
            none); sk_conv: builds the SK unit (None: a convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, *,
                 attn: nn.Module | None = None, pre_attn: nn.Module | None = None,
                 sk_conv: ConvFactory | None = None) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.stride = stride
        self.out_channels = out_channels
        self._is_cn = stride > 1  # torchvision's mark of a downsampling block (its detection helpers read it)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1))
        if sk_conv is None:
            layers.append(ConvBNAct(hidden, hidden, 3, stride, groups=hidden))
        else:
            layers.append(sk_conv(hidden, hidden, stride))
        layers += [nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.attn = attn
        self.pre_attn = pre_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_attn is not None:
            x = self.pre_attn(x)
        out = self.conv(x)
        if self.attn is not None:
            out = self.attn(out)
        return x + out if self.use_res_connect else out


class MobileNetV2(ClassifierMixin, nn.Module):
    """MobileNetV2 (the paper's Table 2) with an attention module.

    Attention where its paper puts it (see :func:`chanattn.create_model`), a stage being a row of
    Table 2: a per-block module after the projection's BN (:class:`InvertedResidual`); a module
    after a stage (``bam``, ``soca``, ``encnet``) wraps the stage's last block
    (:class:`~chanattn.models.placement.AttnAfter`), ``bam`` where the next row starts with stride
    2; one before a stage (``c3``) is its first block's ``pre_attn``; ``sk`` in place of each
    depthwise convolution (a depthwise SK with ReLU6). ``fca`` does not fit: its 24-channel stage
    is not a multiple of 16.

    Args:
        num_classes: default 1000.
        width_mult: channel multiplier (default 1.0), channels rounded to multiples of 8.
        in_chans: input channels (default 3).
        stem: ``"imagenet"`` (default: the first convolution and the second stage with stride 2,
            for 224x224 inputs) or ``"cifar"`` (both with stride 1: 32x32 inputs end at 4x4).
        dropout: before the classifier (default 0.2).
        attn, attn_kwargs: the attention module (see :func:`chanattn.create_model`).
        global_pool: timm's pooling type (default ``"avg"``).

    timm's API as :class:`~chanattn.models.resnet.ResNet`: ``forward_head``, ``reset_classifier``
    (the classifier is ``classifier.1``), ``num_classes=0``, and ``feature_info`` at the end of
    each resolution, the stage rows followed by a stride-2 row and the last (timm's MobileNetV2
    taps: 16, 24, 32, 96 and 320 channels at strides 2 to 32 for 224x224 inputs).
    """

    _pool_name = "global_pool"
    _classifier_name = "classifier.1"

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, *, in_chans: int = 3,
                 stem: str = "imagenet", dropout: float = 0.2, attn: AttnSpec | AttnPlan = None,
                 attn_kwargs: AttnKwargs = None, global_pool: str = "avg") -> None:
        super().__init__()
        owner = type(self).__name__
        if stem not in STEMS:
            raise InputError(f"{owner}: stem must be one of {STEMS}, got {stem!r}")
        if not (isinstance(width_mult, (int, float)) and width_mult > 0):
            raise InputError(f"{owner}: width_mult must be a positive number, got {width_mult!r}")
        plan = AttnPlan.of(attn, attn_kwargs, owner=owner)
        size = plan.bind(num_stages=len(SETTINGS), default_input_size=224 if stem == "imagenet" else 32)
        self.default_input_size = size

        def depthwise_sk(stage):  # SK in place of the depthwise convolution: one group per channel
            if not plan.replaces_conv:
                return None
            return lambda cin, cout, stride: plan.conv3x3(cin, cout, stride,
                                                          {"groups": cin, "act_layer": "relu6"}, stage)

        settings = [list(row) for row in SETTINGS]
        first_stride = 2
        if stem == "cifar":
            first_stride, settings[1][3] = 1, 1
        in_channels = make_divisible(32 * width_mult, 8)
        self.last_channels = make_divisible(1280 * max(1.0, width_mult), 8)
        features: list[nn.Module] = [ConvBNAct(in_chans, in_channels, 3, first_stride)]
        size = downsampled(size, first_stride)
        after = stage_end_flags([row[3] for row in settings])
        stage_of: dict[int, tuple[int, int]] = {}  # feature index -> (stage, blocks of the stage)
        reduction = first_stride
        self.feature_info = []
        for i, (t, c, n, s) in enumerate(settings):
            out_channels = make_divisible(c * width_mult, 8)
            out_size = downsampled(size, s)
            stage = plan.stage(i, out_channels, out_size, n)
            pre = plan.stage_start(plan.stage(i, in_channels, size, n))
            attns = plan.block_modules(stage)
            sk_conv = depthwise_sk(stage)
            for j in range(n):
                block = InvertedResidual(in_channels, out_channels, s if j == 0 else 1, t,
                                         attn=attns[j], pre_attn=pre if j == 0 else None, sk_conv=sk_conv)
                post = plan.stage_end(stage, after[i]) if j == n - 1 else None
                stage_of[len(features)] = (i, n)
                features.append(block if post is None else AttnAfter(block, post))
                in_channels = out_channels
            size = out_size
            reduction *= s
            if i == len(settings) - 1 or settings[i + 1][3] == 2:  # the end of a resolution
                self.feature_info.append({"num_chs": out_channels, "reduction": reduction,
                                          "module": f"features.{len(features) - 1}"})
        features.append(ConvBNAct(in_channels, self.last_channels, 1))
        self.features = nn.Sequential(*features)
        self.num_features = self.last_channels
        self.global_pool = GlobalPool(global_pool)
        self.head_hidden_size = self.last_channels * self.global_pool.feat_mult()
        self.classifier = nn.Sequential(nn.Dropout(dropout),
                                        make_classifier(self.head_hidden_size, num_classes, global_pool))
        self.num_classes = num_classes
        init_backbone_(self, keep=plan.created)
        if num_classes:
            nn.init.normal_(self.classifier[1].weight, 0, 0.01)
            nn.init.zeros_(self.classifier[1].bias)

        def feature_stage(name: str) -> tuple[int, int]:
            parts = name.split(".")
            if parts[0] == "features" and len(parts) > 1 and parts[1].isdigit():
                return stage_of.get(int(parts[1]), (-1, 0))
            return -1, 0

        plan.before_every_conv(self, feature_stage)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The pooling, dropout and classifier; ``pre_logits``: stop before the classifier."""
        x = self.classifier[0](self.global_pool(x))
        return x if pre_logits else self.classifier[1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("mobilenet_v2", family="mobile", input_size=(3, 224, 224), num_classes=1000,
                first_conv="features.0.0", classifier="classifier.1",
                description="MobileNetV2 1.0 (17 inverted residuals), 3.5 M params; stem='cifar' for 32x32")
def mobilenet_v2(*, attn=None, attn_kwargs=None, num_classes=1000, width_mult=1.0, in_chans=3,
                 stem="imagenet", dropout=0.2, global_pool="avg") -> MobileNetV2:
    """MobileNetV2. See :class:`MobileNetV2`."""
    return MobileNetV2(num_classes, width_mult, in_chans=in_chans, stem=stem, dropout=dropout, attn=attn,
                       attn_kwargs=attn_kwargs, global_pool=global_pool)
