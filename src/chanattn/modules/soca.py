"""Second-order Attention Network for Single Image Super-Resolution (Dai, Cai, Zhang, Xia, Zhang;
CVPR 2019, https://openaccess.thecvf.com/content_CVPR_2019/html/Dai_Second-Order_Attention_Network_for_Single_Image_Super-Resolution_CVPR_2019_paper.html,
official code https://github.com/daitao/SAN): the second-order channel attention (SOCA)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..registry import register
from .covariance import covariance_pool, sqrtm_newton_schulz

__all__ = ["SoCA"]

_PAPER = "Second-order Attention Network for Single Image Super-Resolution (CVPR 2019)"


@register("soca", title="Second-order Channel Attention", paper=_PAPER, year=2019, kind="channel",
          placement="group_end",
          placement_note="once at the end of each residual group, as SAN's LSRAG (official model/san.py: the "
                         "group's blocks, then SOCA, then a convolution and the group's shortcut); a ResNet "
                         "stage is the group, so one after every stage. A choice: SAN is a super-resolution "
                         "network of 64 channels; at 2048 channels (ResNet-50's last stage) the "
                         "Newton-Schulz iterations cost ~0.1 T multiply-adds per image")
class SoCA(AttentionModule):
    """y = x * sigmoid(W_U ReLU(W_D z + b_D) + b_U), z_c = mean_j sqrtm(Cov(x))_{cj}.

    Second-order channel attention of SAN (Dai et al., 2019): the C x C covariance of the
    features over the positions (divided by H*W, MPN-COV's ``CovpoolLayer``), normalised by its
    matrix square root, computed with ``num_iters`` = 5 coupled Newton-Schulz iterations with
    trace pre-normalisation and post-compensation (:func:`~chanattn.modules.covariance.
    sqrtm_newton_schulz`); the mean of each row gives one value per channel (the global
    covariance pooling, GCP); an MLP of two 1x1 convolutions with bias, C -> C/r -> C with
    r = 8 and ReLU between, and the sigmoid gate.

    The 5 iterations are SAN's; for C much above 4 they give an approximation of the square root
    (the trace normalisation makes the eigenvalues ~1/C, and the iteration needs more steps to
    converge from there: ~20% relative error at C = 64), which is what SAN trains with.
    ``num_iters`` raises it (10 reach ~1e-6 on typical 64 x 64 covariances).

    SAN crops inputs larger than 1000 x 1000 to their central 1000 x 1000 before the covariance,
    to bound its cost: ``crop_size`` (default 1000, the reference; ``None`` never crops). Here each
    side longer than ``crop_size`` is cropped to its centre; the reference's branches miss a side
    of exactly 1000 next to a longer one and then crop the other side to a wrong width.

    Args:
        channels: input channels C.
        rd_ratio: 1/r (default 1/8); rd_channels: the hidden width, overriding it (default
            ``max(1, C // 8)``).
        num_iters: Newton-Schulz iterations (default 5, SAN's).
        crop_size: the largest H and W used for the covariance (default 1000; ``None``: no crop).
        eps: the guard of the trace normalisation (default 1e-8).
        act_layer: default ``"relu"``; gate_layer: default ``"sigmoid"``.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, rd_channels: int | None = None,
                 num_iters: int = 5, crop_size: int | None = 1000, eps: float = 1e-8,
                 act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        hidden = reduced_channels(channels, rd_ratio, rd_channels, owner=owner)
        self.rd_channels = hidden
        self.num_iters = check_positive_int(num_iters, "num_iters", owner)
        self.crop_size = None if crop_size is None else check_positive_int(crop_size, "crop_size", owner)
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise InputError(f"{owner}: eps must be a positive number, got {eps!r}")
        self.eps = float(eps)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = create_act(act_layer, owner=owner)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = create_act(gate_layer, owner=owner)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_size is None:
            return x
        h, w = x.shape[2], x.shape[3]
        if h > self.crop_size:
            top = (h - self.crop_size) // 2
            x = x[:, :, top:top + self.crop_size]
        if w > self.crop_size:
            left = (w - self.crop_size) // 2
            x = x[:, :, :, left:left + self.crop_size]
        return x

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """The second-order channel descriptor z, (B, C, 1, 1): the row means of the (approximate)
        square root of the covariance."""
        b, c = x.shape[0], x.shape[1]
        cov = covariance_pool(self._crop(x))  # (B, C, C)
        z = sqrtm_newton_schulz(cov, self.num_iters, self.eps).mean(-1)  # (B, C)
        return z.reshape(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        s = self.fc2(self.act(self.fc1(self.descriptor(x))))  # (B, C, 1, 1)
        return x * self.gate(s)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"num_iters={self.num_iters}, crop_size={self.crop_size}")
