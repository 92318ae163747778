"""Global Second-order Pooling Convolutional Networks (Gao, Xie, Wang, Li; CVPR 2019,
https://arxiv.org/abs/1811.12006): the GSoP block (channel attention from a covariance matrix) and
the covariance-pooling head that GSoP-Net2 puts at the end of the network (iSQRT-COV)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..errors import InputError, InputTypeError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..recompute import (
    BNConfig,
    ConvConfig,
    bn_apply,
    bn_args,
    bn_backward,
    bn_forward,
    bn_saved,
    recompute_applies,
)
from ..registry import Stage, register
from .covariance import (
    _no_autocast,
    _working,
    covariance_pool,
    sqrtm_newton_schulz,
    tril_vectorize,
    triu_vectorize,
)

__all__ = ["GSoP", "GSoPHead"]

#: ``triangle`` of :class:`GSoPHead`: chanattn's upper triangle, or the official code's lower one
TRIANGLES = ("upper", "lower")

_PAPER = "Global Second-order Pooling Convolutional Networks (CVPR 2019, arXiv:1811.12006)"


@dataclass(frozen=True)
class _Config:
    pre_act: bool
    conv: ConvConfig
    bn: BNConfig


class _ReducedCovariance(torch.autograd.Function):
    """Cov(ReLU(BN(Conv1x1(ReLU(x))))) saving x, BN's per-channel statistics and, where it is no
    larger than x, the convolution's output.

    Autograd would keep ReLU(x) (the convolution's input), the convolution's output (BN's input),
    the ReLU's output and the centred (B, c', N) matrix of the covariance: at C = 64, c' = 128 and
    stride 1, each of the last three is 2x the input. The backward recomputes them from x (the
    convolution only where its output is larger than x, then elementwise passes) and runs the
    ops' own backward kernels (``threshold_backward``, ``native_batch_norm_backward``,
    ``convolution_backward``). BN's running statistics are updated once, in the forward
    (:mod:`chanattn.recompute`)."""

    @staticmethod
    def forward(x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, cfg: _Config):
        r = torch.relu(x) if cfg.pre_act else x
        z = cfg.conv.forward(r, conv_w, conv_b)
        y, s1, s2 = bn_forward(z, bn_w, bn_b, running_mean, running_var, cfg.bn)
        cov = covariance_pool(y.relu_())
        # The convolution's output is kept where it is no larger than x (c' H' W' <= C H W: it then
        # costs less to keep than the convolution costs to recompute), else recomputed from x.
        return cov, (z if z.numel() <= x.numel() else z.new_empty(0)), s1, s2

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, cfg = inputs
        _, z, s1, s2 = output
        ctx.mark_non_differentiable(z, s1, s2)
        ctx.set_materialize_grads(False)
        ctx.cfg = cfg
        stats = bn_saved(cfg.bn, running_mean, running_var, s1, s2)
        ctx.save_for_backward(x, conv_w, conv_b, bn_w, bn_b, *stats, z if z.numel() else None)

    @staticmethod
    @once_differentiable
    def backward(ctx, gcov, _gz, _gs1, _gs2):
        if gcov is None:
            return (None,) * 8
        x, conv_w, conv_b, bn_w, bn_b, stat1, stat2, z = ctx.saved_tensors
        stats, cfg, need = (stat1, stat2), ctx.cfg, ctx.needs_input_grad
        r = torch.relu(x) if cfg.pre_act else x
        if z is None:
            z = cfg.conv.forward(r, conv_w, conv_b)
        a = bn_apply(z, bn_w, bn_b, stats, cfg.bn).relu_()
        with _no_autocast(x.device):
            f = _working(a).flatten(2)  # (B, c', N), as covariance_pool
            n = f.shape[-1]
            f = f - f.mean(-1, keepdim=True)
            g = _working(gcov) / max(n, 1)
            # cov = f f^T / n: df = (g + g^T) f. The centring's own backward subtracts the mean of
            # df over N, which is (g + g^T) times the mean of f: zero, so it is left out.
            df = torch.bmm(g + g.transpose(1, 2), f)
        del f
        da = df.to(a.dtype).reshape(a.shape)
        dy = torch.ops.aten.threshold_backward(da, a, 0)
        del da, a
        dz, d_bn_w, d_bn_b = bn_backward(dy, z, bn_w, stats, cfg.bn, (True, need[3], need[4]))
        del dy, z
        dr, d_conv_w, d_conv_b = cfg.conv.backward(dz, r, conv_w, conv_b is not None, need[:3])
        dx = None
        if need[0]:
            dx = torch.ops.aten.threshold_backward(dr, r, 0) if cfg.pre_act else dr
        return dx, d_conv_w, d_conv_b, d_bn_w, d_bn_b, None, None, None


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

    ``forward_reference`` is the plain formula. ``forward`` computes the same; in training (where
    autograd records, in eager mode) the reduction and the covariance run as one autograd Function
    that saves x and BN's statistics, plus the convolution's output where it is no larger than x,
    and recomputes the rest in the backward: 1.7x the input is saved at 8x64x28x28 (8.7x by the
    plain formula), 2.2x at 8x256x14x14 (4.2x).
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
        """The channel factor, (B, C, 1, 1). Where autograd records (eager mode, no autocast), the
        covariance of the reduced features comes from :class:`_ReducedCovariance`, which saves x
        (and the convolution's output where it is no larger than x) and recomputes the rest in
        the backward; otherwise the plain formula (``attention_reference``)."""
        if not recompute_applies(x, self) or not self._plain_reduce():
            return self.attention_reference(x)
        conv, bn = self.conv_reduce, self.bn_reduce
        conv_cfg = ConvConfig.of(conv)
        shape = conv_cfg.output_shape(x, conv.weight)  # (B, c', H', W')
        self._require_batch_stats(shape[0] * min(shape[2] * shape[3], self.rd_channels))  # both BNs
        running_mean, running_var, bn_cfg = bn_args(bn, shape)
        cov = _ReducedCovariance.apply(x, conv.weight, conv.bias, bn.weight, bn.bias, running_mean,
                                       running_var, _Config(self.pre_act, conv_cfg, bn_cfg))[0]
        return self._head(cov)

    def _plain_reduce(self) -> bool:
        """The reduction is what _ReducedCovariance computes: a plain 1x1 convolution, a BatchNorm2d
        and a ReLU (not where a user swapped one of them)."""
        conv = self.conv_reduce
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.padding == (0, 0)
                and type(self.bn_reduce) is nn.BatchNorm2d and type(self.act_reduce) is nn.ReLU)

    def attention_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula of the channel factor, (B, C, 1, 1)."""
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

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula, for tests."""
        self._check_input(x)
        return x * self.attention_reference(x)

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
