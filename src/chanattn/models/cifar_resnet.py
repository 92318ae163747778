"""The CIFAR ResNets of the residual-learning paper (ResNet-20/32/44/56/110 and a small ResNet-8):
three stages of basic blocks, 16-32-64 channels, on 32x32 inputs.

Deep Residual Learning for Image Recognition (He, Zhang, Ren, Sun; CVPR 2016,
https://arxiv.org/abs/1512.03385), section 4.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError
from .placement import AttnPlan, AttnSpec, init_backbone_, make_pool, stage_end_flags
from .registry import register_model
from .resnet import BasicBlock, conv1x1, make_resnet_stage

__all__ = ["SHORTCUTS", "CifarResNet", "ZeroPadShortcut"]

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


class CifarResNet(nn.Module):
    """The CIFAR ResNet with depth 6n + 2: a 3x3 convolution, three stages of n basic blocks
    (16-32-64 channels, strides 1-2-2), global average pooling and a linear classifier.

    The shortcut where the shape changes (``shortcut``): ``"conv"`` (default) is a 1x1 strided
    convolution and BN (the paper's option B), as in the C3 paper's reference code, whose CIFAR-100
    table MODULES.md quotes; it reproduces those figures (100 classes: ResNet-20/56/110 have
    0.28/0.86/1.74 M parameters and 40.8/125.8/253.2 M multiply-adds, within 2.2% of the
    41.7/128.2/257.9 M quoted). ``"pad"`` is the paper's option A, the parameter-free zero-padded
    identity of its own CIFAR experiments (:class:`ZeroPadShortcut`): 2,752 parameters and
    0.26 M multiply-adds fewer (ResNet-110: 1.73 M).

    Attention (``attn``) as in every model here (MODULES.md): per block on the residual branch
    after the last BN; ``bam`` after stages 1 and 2; ``sk`` in place of each block's first 3x3
    convolution; ``dia`` one cell per stage; ``gsop`` in each stage's last block.

    Args:
        depth: 6n + 2 (8, 20, 32, 44, 56, 110, ...).
        num_classes: default 10.
        in_chans: input channels (default 3; 1 for grey images).
        widths: channels of the three stages (default (16, 32, 64)).
        shortcut: ``"conv"`` (default, option B) or ``"pad"`` (option A).
        attn, attn_kwargs: the attention module (see :func:`chanattn.create_model`).
        head: ``"avg"`` (default) or ``"gsop"`` (covariance pooling); head_kwargs: its options.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, *, in_chans: int = 3,
                 widths: Sequence[int] = (16, 32, 64), shortcut: str = "conv", attn: AttnSpec = None,
                 attn_kwargs: dict | None = None, head: str = "avg", head_kwargs: dict | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise InputError(f"{owner}: depth must be 6n + 2 with n >= 1 (8, 20, 32, 44, 56, 110), "
                             f"got {depth!r}")
        if shortcut not in SHORTCUTS:
            raise InputError(f"{owner}: shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if len(widths) != 3:
            raise InputError(f"{owner}: widths must give 3 stage widths, got {widths!r}")
        n = (depth - 2) // 6
        plan = AttnPlan(attn, attn_kwargs, owner=owner)
        self.depth = depth
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        make_downsample = _pad_shortcut if shortcut == "pad" else _conv_shortcut
        strides = (1, 2, 2)
        after = stage_end_flags(strides)
        in_channels = widths[0]
        for i, w in enumerate(widths):
            stage = make_resnet_stage(BasicBlock, in_channels, w, n, strides[i], plan,
                                      make_downsample=make_downsample, stage_attn=after[i])
            self.add_module(f"layer{i + 1}", stage)
            in_channels = w
        self.num_features = in_channels
        self.pool, features = make_pool(head, in_channels, head_kwargs, owner=owner)
        self.fc = nn.Linear(features, num_classes)
        init_backbone_(self, keep=[*plan.created, self.pool])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)))


def _register_depth(depth: int, description: str) -> None:
    def factory(*, attn=None, attn_kwargs=None, num_classes=10, in_chans=3, shortcut="conv",
                widths=(16, 32, 64), head="avg", head_kwargs=None) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_chans=in_chans, widths=widths, shortcut=shortcut,
                           attn=attn, attn_kwargs=attn_kwargs, head=head, head_kwargs=head_kwargs)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth}: {description}. See :class:`CifarResNet`."
    register_model(f"resnet{depth}", family="cifar", description=description)(factory)
    globals()[factory.__name__] = factory
    __all__.append(factory.__name__)


_register_depth(8, "CIFAR ResNet-8, 1 basic block per stage (16-32-64), for fast runs and 8x8 digits")
_register_depth(20, "CIFAR ResNet-20, 3 basic blocks per stage (16-32-64), 0.27 M params")
_register_depth(32, "CIFAR ResNet-32, 5 basic blocks per stage (16-32-64), 0.47 M params")
_register_depth(44, "CIFAR ResNet-44, 7 basic blocks per stage (16-32-64), 0.66 M params")
_register_depth(56, "CIFAR ResNet-56, 9 basic blocks per stage (16-32-64), 0.86 M params")
_register_depth(110, "CIFAR ResNet-110, 18 basic blocks per stage (16-32-64), 1.73 M params")
