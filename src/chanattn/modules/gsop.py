"""Global Second-order Pooling Convolutional Networks (Gao, Xie, Wang, Li; CVPR 2019,
https://arxiv.org/abs/1811.12006): the GSoP block (channel attention from a covariance matrix) and
the covariance-pooling head that GSoP-Net2 puts at the end of the network (iSQRT-COV)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..registry import Stage, register
from .covariance import covariance_pool, sqrtm_newton_schulz, tril_vectorize, triu_vectorize

__all__ = ["GSoP", "GSoPHead"]

#: ``triangle`` of :class:`GSoPHead`: chanattn's upper triangle, or the official code's lower one
TRIANGLES = ("upper", "lower")

_PAPER = "Global Second-order Pooling Convolutional Networks (CVPR 2019, arXiv:1811.12006)"


def _official_stages(stage: Stage) -> dict | None:
    """The official GSoP networks: the reduction with stride 2 in the first stage (``planes <= 64``
    in the official Bottleneck), and no GSoP block in the last stage of GSoP-Net2 (``head="gsop"``:
    main.py clears the last entry of ``attpos``)."""
    if stage.last and stage.head == "gsop":
        return None
    return {"stride": 2} if stage.first else {}


@register("gsop", title="Global Second-order Pooling block", paper=_PAPER, year=2019,
          kind="channel", placement="last_block", stage_kwargs=_official_stages,
          backbone={"last_stride": 1},
          placement_note="the last block of each stage (official main.py: attpos), none in the last stage "
                         "of GSoP-Net2 (head='gsop'); the reduction with stride 2 in the first stage, and "
                         "the ImageNet ResNets' last stage at stride 1, as the official resnet.py")
class GSoP(AttentionModule):
    """y = x * sigmoid(W RC(RowBN(Cov(ReLU(BN(Conv1x1(ReLU(x)))))))), one factor per channel.

    GSoP block (Gao et al., 2019), channel variant (the official code's attention mode ``'1'``):

    1. ReLU on the input (the official ``relu_normal``: the block sits on the residual branch
       after the last BN, whose output can be negative), then a 1x1 convolution C -> c' (with
       bias, as the official code), BN, ReLU: (B, c', H, W);
    2. covariance pooling over the H*W positions (divided by H*W, MPN-COV's ``CovpoolLayer``):
       (B, c', c');
    3. row-wise normalisation: a BatchNorm whose c' features are the rows of the matrix, each
       normalised over the batch and the c' entries of its row (the official ``row_bn``);
    4. row-wise convolution: a grouped convolution with one group per row and a (c' x 1) kernel,
       4 outputs per row (with bias): (B, 4c', 1, 1);
    5. a fully-connected layer 4c' -> C (with bias), then the sigmoid gate.

    Paper and official code: the paper calls the row-wise convolution non-linear; the official
    channel attention applies no activation between it and the FC layer. Default: the official
    code (``act_layer=None``); pass an activation (``"relu"``, ``lambda: nn.LeakyReLU(0.1)``) for
    the paper's reading. The official code reduces with stride 2 in ResNet-50's first stage
    (``planes <= 64``) to save computation: ``stride=2`` does that. c' = 128 is the reference
    (``att_dim``); it is kept for any C, so for C < 128 the "reduction" widens (allowed, and cheap
    at those sizes); ``rd_channels`` overrides it.

    Args:
        channels: input channels C.
        rd_channels: c', the reduced width whose c' x c' covariance is pooled (default 128).
        stride: stride of the reducing 1x1 convolution (default 1; the official code uses 2 in
            the first stage of ResNet-50).
        pre_act: apply ReLU to the input before the reduction, as the official code (default
            True).
        act_layer: activation after the row-wise convolution (default ``None``: none, the
            official code).
        gate_layer: the gate (default ``"sigmoid"``).
    """

    def __init__(self, channels: int, rd_channels: int = 128, stride: int = 1, pre_act: bool = True,
                 act_layer: LayerSpec = None, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels)
        owner = type(self).__name__
        rd = check_positive_int(rd_channels, "rd_channels", owner)
        self.rd_channels = rd
        self.stride = check_positive_int(stride, "stride", owner)
        self.pre_act = bool(pre_act)
        self.conv_reduce = nn.Conv2d(channels, rd, 1, stride=stride, bias=True)
        self.bn_reduce = nn.BatchNorm2d(rd)
        self.act_reduce = nn.ReLU()
        self.row_bn = nn.BatchNorm2d(rd)
        # row-wise convolution: group i sees row i of the (c' x c' x 1) "image"; 4 filters per row
        self.row_conv = nn.Conv2d(rd, 4 * rd, kernel_size=(rd, 1), groups=rd, bias=True)
        self.act = create_act(act_layer, owner=owner)
        self.fc = nn.Conv2d(4 * rd, channels, 1, bias=True)
        self.gate = create_act(gate_layer, owner=owner)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel factor, (B, C, 1, 1)."""
        b = x.shape[0]
        z = torch.relu(x) if self.pre_act else x
        z = self.conv_reduce(z)  # (B, c', H', W')
        self._require_batch_stats(b * min(z.shape[2] * z.shape[3], self.rd_channels))  # both BNs
        z = self.act_reduce(self.bn_reduce(z))
        cov = covariance_pool(z)  # (B, c', c')
        return self._head(cov)

    def _head(self, cov: torch.Tensor) -> torch.Tensor:
        """Row BN, row-wise convolution, FC and gate on the (B, c', c') covariance."""
        cov = self.row_bn(cov.unsqueeze(-1))  # (B, c', c', 1): channel = row, height = column
        s = self.act(self._row_conv(cov))  # (B, 4c', 1, 1)
        return self.gate(self.fc(s))  # (B, C, 1, 1)

    def _row_conv(self, cov: torch.Tensor) -> torch.Tensor:
        """``self.row_conv(cov)`` as one batched contraction: output 4i+k of row i is
        sum_j W[4i+k, j] cov[i, j] + b[4i+k]. The grouped (c', 1) convolution computes the same
        map, but CPU backends run a grouped convolution with one input channel per group and a
        c'-tall kernel ~10x slower than this einsum (GSoP-ResNet-8 training step: ~370 ms -> see
        tests/test_gsop.py for the equality)."""
        b, rd = cov.shape[0], self.rd_channels
        w = self.row_conv.weight.view(rd, 4, rd)  # (c', 4, c'): [row i, output k, column j]
        out = torch.einsum("bij,ikj->bik", cov.view(b, rd, rd), w).reshape(b, 4 * rd)  # (B, 4c')
        if self.row_conv.bias is not None:
            out = out + self.row_conv.bias
        return out.view(b, 4 * rd, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, stride={self.stride}"


class GSoPHead(nn.Module):
    """f = triu(sqrtm_NS(Cov(ReLU(BN(Conv1x1(x)))))): the covariance-pooling head of GSoP-Net2.

    Replaces global average pooling at the end of the network (the official ``GSoP_mode=2``,
    iSQRT-COV): a 1x1 convolution C -> d (no bias), BN, ReLU; the d x d covariance over the
    positions (divided by H*W); its matrix square root by ``num_iters`` Newton-Schulz iterations
    with trace pre-normalisation and post-compensation (3 in the reference); and one triangle of
    the symmetric root as a vector of d(d+1)/2 features for the classifier
    (``nn.Linear(head.out_features, num_classes)``). Not an attention module and not registered:
    it maps (B, C, H, W) to (B, d(d+1)/2).

    Paper and official code: the papers (GSoP, iSQRT-COV) state no order of these features; the
    official code (MPN-COV's ``Triuvec``) takes the lower triangle row by row, m[0,0], m[1,0], m[1,1],
    m[2,0], ... The root is symmetric, so both are the same d(d+1)/2 numbers in another order;
    only a classifier's weights depend on it. Default ``triangle="upper"``, the upper triangle row
    by row, m[0,0], m[0,1], ..., m[0,d-1], m[1,1], ... (chanattn's order before the option, so
    its checkpoints still fit); ``"lower"`` is the official order, whose classifier weights then
    load unchanged. Through :func:`chanattn.create_model`: ``head="gsop",
    head_kwargs={"triangle": "lower"}``.

    Args:
        channels: input channels C (2048 for ResNet-50).
        rd_channels: d (default 256, the reference's ``isqrt_dim``).
        num_iters: Newton-Schulz iterations (default 3, the reference).
        eps: the guard of the trace normalisation (default 1e-8).
        triangle: ``"upper"`` (default) or ``"lower"`` (the official code's order), see above.
    """

    def __init__(self, channels: int, rd_channels: int = 256, num_iters: int = 3,
                 eps: float = 1e-8, triangle: str = "upper") -> None:
        super().__init__()
        owner = type(self).__name__
        self.channels = check_positive_int(channels, "channels", owner)
        self.rd_channels = check_positive_int(rd_channels, "rd_channels", owner)
        self.num_iters = check_positive_int(num_iters, "num_iters", owner)
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise InputError(f"{owner}: eps must be a positive number, got {eps!r}")
        self.eps = float(eps)
        if triangle not in TRIANGLES:
            raise InputError(f"{owner}: triangle must be one of {', '.join(map(repr, TRIANGLES))}, "
                             f"got {triangle!r}")
        self.triangle = triangle
        self.out_features = rd_channels * (rd_channels + 1) // 2
        self.conv_reduce = nn.Conv2d(channels, rd_channels, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(rd_channels)
        self.act_reduce = nn.ReLU()

    def _check_input(self, x: torch.Tensor) -> None:
        label = f"{type(self).__name__} (channels={self.channels})"
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{label} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise InputError(f"{label} expects a 4-D input (B, C, H, W), got a {x.dim()}-D tensor "
                             f"of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputTypeError(f"{label} expects a floating-point input, got dtype {x.dtype}")
        if x.shape[1] != self.channels:
            raise InputError(f"{label} expects {self.channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        z = self.act_reduce(self.bn_reduce(self.conv_reduce(x)))  # (B, d, H, W)
        cov = covariance_pool(z)  # (B, d, d)
        root = sqrtm_newton_schulz(cov, self.num_iters, self.eps)  # (B, d, d)
        # (B, d(d+1)/2)
        return triu_vectorize(root) if self.triangle == "upper" else tril_vectorize(root)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"num_iters={self.num_iters}, out_features={self.out_features}, "
                f"triangle={self.triangle!r}")
