"""Wide Residual Networks for CIFAR (Zagoruyko, Komodakis; BMVC 2016, https://arxiv.org/abs/1605.07146):
WRN-d-k, pre-activation basic blocks, widths 16k-32k-64k, dropout between the convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .classifier import ClassifierMixin, make_classifier
from .placement import AttnKwargs, AttnPlan, AttnSpec, downsampled, init_backbone_, make_pool, stage_end_flags
from .registry import register_model
from .resnet import ConvFactory, conv1x1, conv3x3, resnet_stage_of

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """y = attn(conv3x3(dropout(ReLU(BN(conv3x3(ReLU(BN(x')))))))) + shortcut(x'), x' = pre_attn(x).

    The pre-activation block of WRN. The shortcut is the identity, or a 1x1 convolution (no BN)
    of the pre-activated input ReLU(BN(x)) where the shape changes, as in the reference code.
    The block has no BN after its last convolution: the attention sees the output of the last
    convolution, the end of the residual branch, before the addition. With ``sk_conv`` (SK), the
    first convolution and the BN and ReLU after it are replaced by the SK unit.

    Args:
        in_channels, out_channels: channels; stride: of the first convolution.
        dropout: the dropout probability between the convolutions (default 0).
        attn: the attention module (None: none); pre_attn: the module on the block's input (None:
            none); sk_conv: builds the SK unit (None: a convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0, *,
                 attn: nn.Module | None = None, pre_attn: nn.Module | None = None,
                 sk_conv: ConvFactory | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.ReLU(inplace=True)
        if sk_conv is None:
            self.conv1 = conv3x3(in_channels, out_channels, stride)
            self.bn2 = nn.BatchNorm2d(out_channels)
            self.act2 = nn.ReLU(inplace=True)
        else:
            self.conv1 = sk_conv(in_channels, out_channels, stride)
            self.bn2 = nn.Identity()
            self.act2 = nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_channels, out_channels)
        changes = stride != 1 or in_channels != out_channels
        self.shortcut = conv1x1(in_channels, out_channels, stride) if changes else None
        self.stride = stride
        self.out_channels = out_channels
        self.attn = attn
        self.pre_attn = pre_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_attn is not None:
            x = self.pre_attn(x)
        pre = self.act1(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.act2(self.bn2(out))))
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return out + shortcut


class WideResNet(ClassifierMixin, nn.Module):
    """WRN-d-k for 32x32 inputs: a 3x3 convolution to 16 channels, three stages of (d - 4) / 6
    pre-activation blocks with 16k, 32k, 64k channels (strides 1, 2, 2), BN, ReLU, global average
    pooling and a linear classifier. WRN-28-10 has 36.5 M parameters, WRN-22-10 26.8 M.

    Attention where its paper puts it (see :func:`chanattn.create_model`); a per-block module goes
    at the end of the residual branch (after its last convolution; the pre-activation block has no
    BN there), ``sk`` in place of each block's first convolution.

    Args:
        depth: 6n + 4 (16, 22, 28, 40, ...; default 28).
        widen_factor: k (default 10).
        dropout: between the block's convolutions (default 0; the paper uses 0.3 on CIFAR).
        num_classes: default 10; in_chans: default 3.
        attn, attn_kwargs: the attention module (see :func:`chanattn.create_model`).
        global_pool: timm's pooling type (default ``"avg"``).

    timm's API as :class:`~chanattn.models.resnet.ResNet`: ``forward_head``, ``reset_classifier``,
    ``feature_info`` (``conv1``, ``layer1``, ``layer2``, and ``act``: the last stage after the
    final BN and ReLU), ``num_classes=0``; ``drop_rate`` is the dropout before the classifier
    (``dropout`` is the one inside the blocks).
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0,
                 num_classes: int = 10, *, in_chans: int = 3, attn: AttnSpec | AttnPlan = None,
                 attn_kwargs: AttnKwargs = None, global_pool: str = "avg") -> None:
        super().__init__()
        owner = type(self).__name__
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise InputError(f"{owner}: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40), got {depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise InputError(f"{owner}: widen_factor must be a positive int, got {widen_factor!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise InputError(f"{owner}: dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        plan = AttnPlan.of(attn, attn_kwargs, owner=owner)
        size = plan.bind(num_stages=3, default_input_size=32)
        self.default_input_size = size
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = conv3x3(in_chans, 16)
        strides = (1, 2, 2)
        after = stage_end_flags(strides)
        in_channels = 16
        self.feature_info = [{"num_chs": 16, "reduction": 1, "module": "conv1"}]
        for i, width in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor)):
            out_size = downsampled(size, strides[i])
            stage = plan.stage(i, width, out_size, n)
            pre = plan.stage_start(plan.stage(i, in_channels, size, n))
            attns = plan.block_modules(stage)
            blocks: list[nn.Module] = [
                WideBasicBlock(in_channels if j == 0 else width, width, strides[i] if j == 0 else 1,
                               dropout, attn=attns[j], pre_attn=pre if j == 0 else None,
                               sk_conv=plan.conv_factory(stage))
                for j in range(n)
            ]
            post = plan.stage_end(stage, after[i])
            if post is not None:
                blocks.append(post)
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_channels, size = width, out_size
            reduction = self.feature_info[-1]["reduction"] * strides[i]
            self.feature_info.append({"num_chs": width, "reduction": reduction,
                                      "module": "act" if i == 2 else f"layer{i + 1}"})
        self.bn = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=True)
        self.num_features = in_channels
        self.pool, self.head_hidden_size = make_pool("avg", in_channels, None, owner=owner,
                                                     global_pool=global_pool)
        self.fc = make_classifier(self.head_hidden_size, num_classes, global_pool)
        self.num_classes = num_classes
        self.drop_rate = 0.0
        init_backbone_(self, keep=plan.created)
        plan.before_every_conv(self, lambda name: resnet_stage_of(name, (n, n, n)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.act(self.bn(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The pooling, dropout (``drop_rate``) and classifier; ``pre_logits``: stop before the classifier."""
        x = self.pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("wide_resnet", family="cifar",
                description="Wide-ResNet WRN-d-k (options depth=28, widen_factor=10, dropout=0), "
                            "36.5 M params")
def wide_resnet(*, attn=None, attn_kwargs=None, num_classes=10, depth=28, widen_factor=10, dropout=0.0,
                in_chans=3, global_pool="avg") -> WideResNet:
    """WRN-d-k (default WRN-28-10). See :class:`WideResNet`."""
    return WideResNet(depth, widen_factor, dropout, num_classes, in_chans=in_chans, attn=attn,
                      attn_kwargs=attn_kwargs, global_pool=global_pool)


@register_model("wrn16_4", family="cifar", description="Wide-ResNet WRN-16-4, 2.7 M params")
def wrn16_4(*, attn=None, attn_kwargs=None, num_classes=10, dropout=0.0, in_chans=3,
             global_pool="avg") -> WideResNet:
    """WRN-16-4. See :class:`WideResNet`."""
    return WideResNet(16, 4, dropout, num_classes, in_chans=in_chans, attn=attn, attn_kwargs=attn_kwargs,
                      global_pool=global_pool)


@register_model("wrn22_10", family="cifar", description="Wide-ResNet WRN-22-10, 26.8 M params")
def wrn22_10(*, attn=None, attn_kwargs=None, num_classes=10, dropout=0.0, in_chans=3,
             global_pool="avg") -> WideResNet:
    """WRN-22-10 (the wide network of the C3 paper's CIFAR-100 table). See :class:`WideResNet`."""
    return WideResNet(22, 10, dropout, num_classes, in_chans=in_chans, attn=attn, attn_kwargs=attn_kwargs,
                      global_pool=global_pool)


@register_model("wrn28_10", family="cifar", description="Wide-ResNet WRN-28-10, 36.5 M params")
def wrn28_10(*, attn=None, attn_kwargs=None, num_classes=10, dropout=0.0, in_chans=3,
             global_pool="avg") -> WideResNet:
    """WRN-28-10. See :class:`WideResNet`."""
    return WideResNet(28, 10, dropout, num_classes, in_chans=in_chans, attn=attn, attn_kwargs=attn_kwargs,
                      global_pool=global_pool)
