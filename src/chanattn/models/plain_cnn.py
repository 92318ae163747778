"""A plain (non-residual) CNN: the baseline that seed 000 (Channel Locality Block: A Variant of
Squeeze-and-Excitation, Li 2019, https://arxiv.org/abs/1901.01493) compares the SE and C-Local
blocks on, before its modified ResNets. The seed's table is an image and gives no architecture;
this is a small VGG-style network of the kind such baselines use."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .classifier import ClassifierMixin, make_classifier
from .placement import AttnKwargs, AttnPlan, AttnSpec, init_backbone_, make_pool, stage_end_flags
from .registry import register_model
from .resnet import ConvFactory, conv3x3, resnet_stage_of

__all__ = ["ConvLayer", "PlainCNN"]


class ConvLayer(nn.Module):
    """y = attn(ReLU(BN(conv3x3(pre_attn(x))))): one layer of the plain CNN.

    Without a residual branch, the attention goes on the layer's output after the non-linearity,
    where the SE paper puts SE in non-residual networks (VGG, Inception). With ``sk_conv`` (SK),
    the convolution and its BN and ReLU are replaced by the SK unit.

    Args:
        in_channels, out_channels: channels.
        attn: the attention module (None: none); pre_attn: the module on the layer's input (None:
            none); sk_conv: builds the SK unit (None: a convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, *, attn: nn.Module | None = None,
                 pre_attn: nn.Module | None = None, sk_conv: ConvFactory | None = None) -> None:
        super().__init__()
        if sk_conv is None:
            self.conv = conv3x3(in_channels, out_channels)
            self.bn = nn.BatchNorm2d(out_channels)
            self.act = nn.ReLU(inplace=True)
        else:
            self.conv = sk_conv(in_channels, out_channels, 1)
            self.bn = nn.Identity()
            self.act = nn.Identity()
        self.stride = 1
        self.out_channels = out_channels
        self.attn = attn
        self.pre_attn = pre_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_attn is not None:
            x = self.pre_attn(x)
        out = self.act(self.bn(self.conv(x)))
        if self.attn is not None:
            out = self.attn(out)
        return out


class PlainCNN(ClassifierMixin, nn.Module):
    """Stages of ``layers_per_stage`` 3x3 conv-BN-ReLU layers (``widths`` channels), 2x2 max
    pooling between the stages, global average pooling and a linear classifier.

    Attention where its paper puts it (see :func:`chanattn.create_model`), a layer taking a
    residual block's place: a per-block module after each layer's ReLU (``ConvLayer``); a module
    after a stage is appended to the stage (``bam`` after every stage but the last, before each
    pooling); one before a stage is its first layer's ``pre_attn`` (after the pooling); ``sk`` in
    place of each convolution.

    Args:
        widths: channels of the stages (default (32, 64, 128)).
        layers_per_stage: default 2.
        num_classes: default 10; in_chans: default 3.
        attn, attn_kwargs: the attention module (see :func:`chanattn.create_model`).
        global_pool: timm's pooling type (default ``"avg"``).

    timm's API as :class:`~chanattn.models.resnet.ResNet`: ``forward_head``, ``reset_classifier``,
    ``feature_info`` (one entry per stage, ``layer1`` ...), ``num_classes=0``, ``drop_rate``.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), layers_per_stage: int = 2,
                 num_classes: int = 10, *, in_chans: int = 3, attn: AttnSpec | AttnPlan = None,
                 attn_kwargs: AttnKwargs = None, global_pool: str = "avg") -> None:
        super().__init__()
        owner = type(self).__name__
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise InputError(f"{owner}: widths must be positive ints, got {widths!r}")
        n = layers_per_stage
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"{owner}: layers_per_stage must be a positive int, got {layers_per_stage!r}")
        plan = AttnPlan.of(attn, attn_kwargs, owner=owner)
        size = plan.bind(num_stages=len(widths), default_input_size=32)
        self.default_input_size = size
        strides = [1] + [2] * (len(widths) - 1)  # each later stage starts after a 2x2 pooling
        after = stage_end_flags(strides)
        in_channels = in_chans
        self.feature_info = []
        for i, width in enumerate(widths):
            if i > 0 and size is not None:  # 2x2 max pooling
                size = (max(1, size[0] // 2), max(1, size[1] // 2))
            stage = plan.stage(i, width, size, layers_per_stage)
            pre = plan.stage_start(plan.stage(i, in_channels, size, layers_per_stage))
            attns = plan.block_modules(stage)
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for j in range(layers_per_stage):
                layers.append(ConvLayer(in_channels, width, attn=attns[j], pre_attn=pre if j == 0 else None,
                                        sk_conv=plan.conv_factory(stage)))
                in_channels = width
            post = plan.stage_end(stage, after[i])
            if post is not None:
                layers.append(post)
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.feature_info.append({"num_chs": width, "reduction": 2 ** i, "module": f"layer{i + 1}"})
        self.num_stages = len(widths)
        self.num_features = in_channels
        self.pool, self.head_hidden_size = make_pool("avg", in_channels, None, owner=owner,
                                                     global_pool=global_pool)
        self.fc = make_classifier(self.head_hidden_size, num_classes, global_pool)
        self.num_classes = num_classes
        self.drop_rate = 0.0
        init_backbone_(self, keep=plan.created)
        plan.before_every_conv(self, lambda name: resnet_stage_of(name, [layers_per_stage] * len(widths)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The pooling, dropout (``drop_rate``) and classifier; ``pre_logits``: stop before the classifier."""
        x = self.pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("plain_cnn", family="plain", first_conv="layer1.0.conv",
                description="plain CNN (seed 000's baseline): 3 stages x 2 conv-BN-ReLU (32-64-128), "
                            "0.29 M params")
def plain_cnn(*, attn=None, attn_kwargs=None, num_classes=10, widths=(32, 64, 128), layers_per_stage=2,
              in_chans=3, global_pool="avg") -> PlainCNN:
    """The plain CNN baseline. See :class:`PlainCNN`."""
    return PlainCNN(widths, layers_per_stage, num_classes, in_chans=in_chans, attn=attn,
                    attn_kwargs=attn_kwargs, global_pool=global_pool)
