"""Context Encoding for Semantic Segmentation (Zhang, Dana, Shi, Zhang, Wang, Tyagi, Agrawal;
CVPR 2018, https://arxiv.org/abs/1803.08904): the Encoding layer and the Context Encoding
module of EncNet, with its optional Semantic Encoding loss (SE-loss) head."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import register

__all__ = ["ContextEncoding", "Encoding", "se_loss_targets"]


class Encoding(nn.Module):
    """E = {e_k}, e_k = sum_i a_ik r_ik, r_ik = x_i - d_k, a_ik = softmax_k(-s_k ||r_ik||^2).

    The Encoding layer (Zhang et al., Deep TEN, CVPR 2017; used by EncNet): the N = H*W features
    x_i in R^D of a map are softly assigned to K learnable codewords d_k with learnable
    smoothing factors s_k, and the assignment-weighted residuals are summed per codeword. Maps
    (B, D, H, W) to (B, K, D).

    The residuals are never materialised as a (B, N, K, D) tensor. x and the codewords are first
    centred on the codewords' mean m (xc_i = x_i - m, dc_k = d_k - m: the same differences, so the
    same map; m is a constant, the map's gradient through it being exactly zero); then
    ||x_i - d_k||^2 is expanded into ||xc_i||^2 - 2 xc_i.dc_k + ||dc_k||^2 and
    e_k = sum_i a_ik xc_i - (sum_i a_ik) dc_k, the same map in O(B N K + B K D) memory. The
    centring is this implementation's (the official code expands x and d as they are): uncentred,
    the expansion subtracts numbers of size ||x||^2 to get one of size ||x - d||^2, and in float32
    the output's relative error was 1.6e-4 at features and codewords around 10, 1.4e-3 around 30
    (spread by 0.1; measured against float64); centred it is about 1e-7 at any offset, as near 0.

    Initialisation as in the official code: d_k ~ U(-1/sqrt(KD), 1/sqrt(KD)). The official code
    stores ``scale`` = -s_k ~ U(-1, 0) and takes softmax(scale * dist); here the parameter is the
    paper's s_k ~ U(0, 1) and the softmax takes -s_k * dist: the same map and initial values.
    Neither constrains s_k to stay positive during training.

    Args:
        channels: D, the feature dimension (channels of the input map).
        num_codes: K, the number of codewords (default 32, EncNet's).
    """

    def __init__(self, channels: int, num_codes: int = 32) -> None:
        super().__init__()
        owner = type(self).__name__
        self.channels = check_positive_int(channels, "channels", owner)
        self.num_codes = check_positive_int(num_codes, "num_codes", owner)
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))  # (K, D)
        self.smoothing = nn.Parameter(torch.empty(num_codes))  # (K,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.num_codes * self.channels)
        nn.init.uniform_(self.codewords, -bound, bound)
        nn.init.uniform_(self.smoothing, 0.0, 1.0)

    def centre(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, d - m): the codewords' mean (D,), a constant (no gradient), and the centred
        codewords (K, D)."""
        m = self.codewords.detach().mean(0)
        return m, self.codewords - m

    def assignments(self, x: torch.Tensor) -> torch.Tensor:
        """The soft assignments a_ik, (B, N, K), of the features of ``x`` (B, N, D)."""
        return self._assign(x, *self.centre())

    def _assign(self, x: torch.Tensor, m: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
        xc = x - m  # (B, N, D)
        # ||x_i - d_k||^2 = ||xc_i||^2 - 2 xc_i.dc_k + ||dc_k||^2 (B, N, K), the terms in this order
        # (autograd sums the gradients of xc's uses in the order of the operations)
        dist = ((xc * xc).sum(-1, keepdim=True) - 2 * (xc @ dc.t())) + (dc * dc).sum(-1)
        return torch.softmax(-self.smoothing * dist, dim=-1)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise InputError(
                f"{type(self).__name__}(channels={self.channels}) expects a (B, {self.channels}, "
                f"H, W) input, got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        b = x.shape[0]
        x = x.reshape(b, self.channels, -1).transpose(1, 2)  # (B, N, D)
        m, dc = self.centre()
        a = self._assign(x, m, dc)  # (B, N, K)
        # e_k = sum_i a_ik (x_i - d_k) = sum_i a_ik (x_i - m) - (sum_i a_ik) (d_k - m); x - m
        # centred again here, so that x's gradient is the sum of two terms (the distances' and
        # this product's), as in chanattn.fast.encnet's Functions
        return a.transpose(1, 2) @ (x - m) - a.sum(1).unsqueeze(-1) * dc  # (B, K, D)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_codes={self.num_codes}"


@register("encnet", title="Context Encoding Module",
          paper="Context Encoding for Semantic Segmentation (CVPR 2018, arXiv:1803.08904)",
          year=2018, kind="channel", placement="head",
          placement_note="once, on the backbone's final feature map (EncNet's EncHead: the Context Encoding "
                         "Module on top of the last stage). EncNet's CIFAR-10 classifier uses a lighter "
                         "block (EncLayer: 4x reduction, 16 codewords, flattened) in every residual block; "
                         "that is not this module")
class ContextEncoding(AttentionModule):
    """y = relu(x + x * gamma), gamma = sigmoid(W mean_k ReLU(BN(Enc(ReLU(BN(conv1x1(x)))))) + b).

    The Context Encoding module of EncNet (Zhang et al., 2018): a 1x1 convolution (C -> C, no
    bias), BN and ReLU; the Encoding layer (K codewords, see :class:`Encoding`) giving (B, K, C);
    BN over the K codewords and ReLU; the mean over the codewords, e in R^C; a fully-connected
    layer C -> C with bias and a sigmoid gives gamma; the output is relu(x + x * gamma), as in
    the official code and the catalogue.

    Since 1 + gamma > 0, relu(x + x * gamma) = relu(x) * (1 + gamma): one factor per channel on
    relu(x). In EncNet the module's input is the output of a conv-BN-ReLU (``EncHead.conv5``),
    so x >= 0 and the ReLU changes nothing there. On a signed input, such as a residual branch
    after its last BN, the ReLU zeroes the branch's negative responses: ``final_relu=False``
    gives y = x * (1 + gamma) instead, a plain channel gate that keeps them.

    Non-finite inputs: a NaN or +Inf reaches the output; with the final ReLU a -Inf becomes 0 at
    its own position (the ReLU's limit), and the output can be finite where the context path's
    conv-BN-ReLU maps it to 0 as well (always at C = 1 with a positive weight).

    SE-loss: with ``num_classes`` set, a fully-connected layer C -> num_classes on e predicts
    which classes are present in the image (trained with a binary cross-entropy, weight 0.2 in
    the reference; :func:`se_loss_targets` builds the targets from a label map).
    :meth:`forward` always returns y only; :meth:`forward_with_se_loss` returns (y, logits). The
    head's parameters get gradients only through :meth:`forward_with_se_loss` (with distributed
    data parallel, train through it or set ``find_unused_parameters=True``).

    Args:
        channels: input channels C.
        num_codes: K, the number of codewords (default 32).
        num_classes: classes of the SE-loss head (default None: no head).
        final_relu: apply the official code's ReLU to x + x * gamma (default True, see above).
        act_layer: after the two BNs (default ``"relu"``); gate_layer: default ``"sigmoid"``.
    """

    def __init__(self, channels: int, num_codes: int = 32, num_classes: int | None = None,
                 final_relu: bool = True, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        check_positive_int(num_codes, "num_codes", owner)
        if num_classes is not None:
            check_positive_int(num_classes, "num_classes", owner)
        self.num_codes = num_codes
        self.num_classes = num_classes
        self.final_relu = bool(final_relu)
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = create_act(act_layer, owner=owner)
        self.encoding = Encoding(channels, num_codes)
        self.bn_codes = nn.BatchNorm1d(num_codes)  # over the codewords of (B, K, C)
        self.act_codes = create_act(act_layer, owner=owner)
        self.fc = nn.Linear(channels, channels)
        self.gate = create_act(gate_layer, owner=owner)
        self.se_head = nn.Linear(channels, num_classes) if num_classes is not None else None

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, e): the output and the encoded context vector e, (B, C)."""
        self._check_input(x)
        self._require_batch_stats(x.shape[0] * x.shape[2] * x.shape[3])  # the first BN
        u = self.act(self.bn(self.conv(x)))  # (B, C, H, W)
        codes = self.act_codes(self.bn_codes(self.encoding(u)))  # (B, K, C)
        e = codes.mean(1)  # (B, C)
        gamma = self.gate(self.fc(e))[:, :, None, None]  # (B, C, 1, 1)
        y = x * (1 + gamma)
        if self.final_relu:
            y = torch.relu(y)
        return y, e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x)[0]

    def forward_with_se_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, logits): the output and the SE-loss class-presence logits, (B, num_classes).

        Raises:
            ValueError: the module was built without ``num_classes``.
        """
        if self.se_head is None:
            raise InputError(
                f"{self._label()} has no SE-loss head: build it with num_classes=<int>, got "
                "num_classes=None"
            )
        y, e = self._encode(x)
        return y, self.se_head(e)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_codes={self.num_codes}, "
                f"num_classes={self.num_classes}, final_relu={self.final_relu}")


def se_loss_targets(target: torch.Tensor, num_classes: int, ignore_index: int = -1) -> torch.Tensor:
    """The SE-loss targets: 1.0 where class c occurs in sample b's label map, else 0.0.

    Args:
        target: integer labels, (B, H, W) (any shape (B, ...)).
        num_classes: the number of classes; labels outside [0, num_classes) are not counted.
        ignore_index: a label never counted (default -1, the reference's ignore label).

    Returns:
        A float tensor (B, num_classes), for ``BCEWithLogitsLoss`` against the logits of
        :meth:`ContextEncoding.forward_with_se_loss`.
    """
    check_positive_int(num_classes, "num_classes", "se_loss_targets")
    if target.is_floating_point() or target.is_complex():
        raise InputTypeError(f"se_loss_targets: target must hold integer labels, got dtype {target.dtype}")
    flat = target.reshape(target.shape[0], -1).long()  # (B, H*W)
    valid = (flat >= 0) & (flat < num_classes) & (flat != ignore_index)
    idx = torch.where(valid, flat, torch.full_like(flat, num_classes))  # invalid -> a spare bin
    out = torch.zeros(flat.shape[0], num_classes + 1, device=target.device)
    out.scatter_(1, idx, 1.0)
    return out[:, :num_classes]
