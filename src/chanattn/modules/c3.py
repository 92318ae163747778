"""Cross-channel Communication Networks (Yang, Ren, Gan, Zhu, Parikh; NeurIPS 2019,
https://papers.nips.cc/paper/8411-cross-channel-communication-networks; no arXiv version;
official code https://github.com/jwyang/C3Net.pytorch): the C3 block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..layers import (
    AttentionModule,
    LayerSpec,
    check_positive_int,
    create_act,
    largest_divisor_at_most,
    reduced_channels,
)
from ..registry import Stage, register

__all__ = ["CrossChannelCommunication"]

_DISTANCES = ("mean", "full")
_RESAMPLES = ("area", "nearest")


def _scores(f: torch.Tensor, mean: bool) -> torch.Tensor:
    """The (B*G, C/G, C/G) scores [n, j, i] of the senders i for each receiver j."""
    if mean:
        m = f.mean(-1)  # (B*G, C/G)
        return -(m.unsqueeze(2) - m.unsqueeze(1)).pow(2)
    # -||f_j - f_i||^2 = 2 f_j.f_i - ||f_i||^2 - ||f_j||^2; the last term is constant in i, so
    # the softmax over i drops it (and no cancellation can make a distance < 0)
    return 2 * (f @ f.transpose(1, 2)) - (f * f).sum(-1).unsqueeze(1)


def _pair(size, owner: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise InputError(f"{owner}: spatial_size must be an int or a pair (H, W), got {size!r}")
    return (check_positive_int(size[0], "spatial_size[0]", owner),
            check_positive_int(size[1], "spatial_size[1]", owner))


def _reference_grid(stage: Stage) -> dict:
    """The working grid of the C3 block before a stage: half the stage's input size (the
    reference's [16, 16, 8] before the three stages of a CIFAR ResNet at 32 x 32)."""
    if stage.size is None:
        return {}
    return {"spatial_size": (max(1, stage.size[0] // 2), max(1, stage.size[1] // 2))}


@register("c3", title="Cross-channel Communication block",
          paper="Cross-channel Communication Networks (NeurIPS 2019)",
          year=2019, kind="communication", placement="stage_start", stage_kwargs=_reference_grid,
          placement_note="one C3 block before each stage (official add_cross_neuron wraps each stage "
                         "of the CIFAR ResNets; +0.07 M parameters at every depth in the paper's Table 1), "
                         "on a working grid of half the stage's input size ([16, 16, 8] at 32 x 32)")
class CrossChannelCommunication(AttentionModule):
    """y = ReLU(x + dec(sum_i softmax_i(-(m_i - m_j)^2) f_i)_j), f_i = enc(x_i), m_i = mean(f_i).

    The C3 block (Yang et al., 2019), for each group of channels:
      1. encode: each channel's map x_i, flattened to A = h*w values, through an MLP
         Linear(A -> A*rd_ratio) -> ReLU -> Linear(-> A), shared by all channels: f_i in R^A;
      2. communicate: channel j receives sum_i a_ij f_i with a_ij = softmax over i of the
         negative squared distance between channels i and j (i = j included);
      3. decode: the same MLP shape (its own weights) back to A values per channel;
      4. add the decoded map to the input and apply a ReLU.

    The distance (``distance``): the paper's is between the encodings,
    -||f_i - f_j||^2 (``"full"``); the official code uses the encodings' means, -(m_i - m_j)^2,
    "to increase the robustness in message passing" (``"mean"``, the default, as the catalogue
    asks).

    The working grid (``spatial_size``, h x w): the MLPs have a fixed input size A = h*w, so an
    input of another size is resampled to h x w before the encoder and the decoded maps are
    resampled back to H x W before the addition (``resample``: ``"area"``, adaptive average
    pooling both ways, the default; ``"nearest"``, ``F.interpolate``'s default mode, as in the
    official code). A 1 x 1 input works: it is spread over the grid and the message is averaged
    back. The reference CIFAR-100 models pass the grid of each stage: ``[16, 16, 8, 8]`` in the
    official ``add_cross_neuron`` call is this spatial size (height and width lists), not a
    number of channel groups; ResNet-20/56/110 there have one C3 block before each of the three
    stages, on grids 16, 16 and 8 with reduction 8 (inputs 32x32x16, 32x32x16, 16x16x32), which
    gives the paper's +0.07 M parameters.

    Groups (``groups``): the channels split into G groups of C/G channels that communicate only
    within their group. The official code uses groups of 512 channels: G = C // 512 for C > 512,
    else 1 (every CIFAR stage is one group). ``groups=None`` applies that rule (using the largest
    divisor of C at most C // 512 where C // 512 does not divide C).

    Initialisation as in the official code: Kaiming-normal weights (fan-in, ReLU gain) for the
    four linear layers, PyTorch's default biases.

    Args:
        channels: input channels C.
        spatial_size: the working grid h x w, an int or (h, w) (default 8); pass the input's size
            to skip the resampling.
        rd_ratio: the MLPs' hidden width as a fraction of A (default 1/8, the reference's
            CIFAR setting); rd_channels: the hidden width instead.
        groups: channel groups G (default None: the official rule above); must divide C.
        distance: ``"mean"`` (default, official code) or ``"full"`` (paper).
        resample: ``"area"`` (default) or ``"nearest"`` (official code).
        act_layer: the MLPs' activation (default ``"relu"``).
    """

    def __init__(self, channels: int, spatial_size: int | tuple[int, int] = 8,
                 rd_ratio: float = 1 / 8, rd_channels: int | None = None, groups: int | None = None,
                 distance: str = "mean", resample: str = "area", act_layer: LayerSpec = "relu") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        self.spatial_size = _pair(spatial_size, owner)
        if groups is None:
            groups = largest_divisor_at_most(channels, max(1, channels // 512))
        check_positive_int(groups, "groups", owner)
        if channels % groups:
            raise InputError(f"{owner}: groups must divide channels={channels}, got groups={groups}")
        if distance not in _DISTANCES:
            raise InputError(f"{owner}: distance must be one of {_DISTANCES}, got {distance!r}")
        if resample not in _RESAMPLES:
            raise InputError(f"{owner}: resample must be one of {_RESAMPLES}, got {resample!r}")
        self.groups = groups
        self.distance = distance
        self.resample = resample
        area = self.spatial_size[0] * self.spatial_size[1]
        hidden = reduced_channels(area, rd_ratio, rd_channels, owner=owner)
        self.rd_channels = hidden
        self.encoder = nn.Sequential(nn.Linear(area, hidden), create_act(act_layer, owner=owner),
                                     nn.Linear(hidden, area))
        self.decoder = nn.Sequential(nn.Linear(area, hidden), create_act(act_layer, owner=owner),
                                     nn.Linear(hidden, area))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.resample == "area":
            return F.adaptive_avg_pool2d(x, size)
        return F.interpolate(x, size=size, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, c, h, w = x.shape
        sh, sw = self.spatial_size
        resized = (h, w) != (sh, sw)
        u = self._resize(x, (sh, sw)) if resized else x
        g = self.groups
        f = self.encoder(u.reshape(b * g, c // g, sh * sw))  # (B*G, C/G, A)
        score = _scores(f, self.distance == "mean")  # (B*G, C/G, C/G), [n, j, i]
        attn = torch.softmax(score, dim=-1)  # row j: channel j's weights over the senders i
        msg = attn @ f  # (B*G, C/G, A): sum_i a_ji f_i
        out = self.decoder(msg).reshape(b, c, sh, sw)
        if resized:
            out = self._resize(out, (h, w))
        # ReLU as clamp_min: its backward keeps its input, not its output, so the caller may add to
        # the output in place (timm's blocks: x += shortcut)
        return (x + out).clamp_min(0)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, spatial_size={self.spatial_size}, "
                f"rd_channels={self.rd_channels}, groups={self.groups}, distance={self.distance!r}, "
                f"resample={self.resample!r}")
