"""Context Encoding for Semantic Segmentation (Zhang, Dana, Shi, Zhang, Wang, Tyagi, Agrawal;
CVPR 2018, https://arxiv.org/abs/1803.08904): the Encoding layer and the Context Encoding
module of EncNet, with its optional Semantic Encoding loss (SE-loss) head."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act
from ..recompute import conv_bn_relu, conv_bn_relu_applies, recompute_applies
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

    Under autograd (eager, no autocast) ``forward`` keeps no copy of its input: the centred x is
    a new (B, N, D) tensor, and ``x @ d.t()`` on the (B, N, D) transposed view of a contiguous map
    folds it into a (B*N, D) matrix, copies autograd would keep; two autograd Functions
    (:class:`_CentredDistances`, :class:`_CentredAggregate`) compute the same and centre x again
    in the backward (the same values and gradients as the plain formula, bit for bit on CPU). The
    plain formula is ``forward_reference``.

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

    def assignments(self, x: torch.Tensor, refold: bool = False) -> torch.Tensor:
        """The soft assignments a_ik, (B, N, K), of the features of ``x`` (B, N, D).

        ``refold``: the distances by :class:`_CentredDistances` (autograd keeps x, not the
        centred copy) rather than the plain ops; the same values and gradients."""
        m, dc = self.centre()
        return self._assign(x, m, dc, refold)

    def _assign(self, x: torch.Tensor, m: torch.Tensor, dc: torch.Tensor, refold: bool) -> torch.Tensor:
        # ||x_i - d_k||^2 = ||x_i - m||^2 - 2 (x_i - m).(d_k - m) + ||d_k - m||^2 (B, N, K)
        q = _CentredDistances.apply(x, m, dc) if refold else _centred_distances(x - m, dc)
        dist = q + (dc * dc).sum(-1)
        return torch.softmax(-self.smoothing * dist, dim=-1)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise InputError(
                f"{type(self).__name__}(channels={self.channels}) expects a (B, {self.channels}, "
                f"H, W) input, got shape {tuple(x.shape)}"
            )

    def _encode(self, x: torch.Tensor, refold: bool) -> torch.Tensor:
        b = x.shape[0]
        x = x.reshape(b, self.channels, -1).transpose(1, 2)  # (B, N, D)
        m, dc = self.centre()
        if refold:
            a = self._assign(x, m, dc, True)  # (B, N, K)
            s = _CentredAggregate.apply(a, x, m)  # (B, K, D)
        else:
            xc = x - m  # (B, N, D)
            a = torch.softmax(-self.smoothing * (_centred_distances(xc, dc) + (dc * dc).sum(-1)), dim=-1)
            # where x's gradient is recorded, a second centred copy: x's gradient then sums the
            # same two terms in the same order as the Functions' path (bit for bit)
            s = _centred_aggregate(a, x - m if torch.is_grad_enabled() and x.requires_grad else xc)
        # e_k = sum_i a_ik (x_i - d_k) = sum_i a_ik (x_i - m) - (sum_i a_ik) (d_k - m)
        return s - a.sum(1).unsqueeze(-1) * dc  # (B, K, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self._encode(x, refold=recompute_applies(x, self))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula."""
        self._check(x)
        return self._encode(x, refold=False)

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

    Training (autograd recording, eager): the first conv-BN-ReLU is one autograd Function
    (:func:`chanattn.recompute.conv_bn_relu`) that saves x, its output (which the Encoding layer
    keeps anyway) and BN's statistics, and recomputes the 1x1 convolution in the backward rather
    than keeping its output; the Encoding layer does not copy its input (see :class:`Encoding`);
    the final relu(x * (1 + gamma)) is a Function (:class:`_GatedReLU`) that saves x and gamma,
    not its output. About 3.1 input sizes at C = 64, K = 32 (x, the ReLU's output, the (B, N, K)
    distances and assignments), where the plain formula (``forward_reference``) keeps 6.1. The
    values, gradients and running statistics are those of the plain formula, bit for bit on CPU.
    The recomputed convolution costs about a tenth of a training step on CPU (one thread, C = 64
    and 256); the other two changes cost one pass over x each in the backward.

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
        if not recompute_applies(x, self):
            return self._encode_reference(x)
        self._check_input(x)
        self._require_batch_stats(x.shape[0] * x.shape[2] * x.shape[3])  # the first BN
        if conv_bn_relu_applies(self.conv, self.bn, self.act):
            u = conv_bn_relu(x, self.conv, self.bn, save="output")  # (B, C, H, W)
        else:
            u = self.act(self.bn(self.conv(x)))
        codes = self.act_codes(self.bn_codes(self.encoding(u)))  # (B, K, C)
        e = codes.mean(1)  # (B, C)
        gamma = self.gate(self.fc(e))[:, :, None, None]  # (B, C, 1, 1)
        y = _GatedReLU.apply(x, gamma) if self.final_relu else x * (1 + gamma)
        return y, e

    def _encode_reference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, e) by the plain formula."""
        self._check_input(x)
        self._require_batch_stats(x.shape[0] * x.shape[2] * x.shape[3])  # the first BN
        u = self.act(self.bn(self.conv(x)))  # (B, C, H, W)
        codes = self.act_codes(self.bn_codes(self.encoding.forward_reference(u)))  # (B, K, C)
        e = codes.mean(1)  # (B, C)
        gamma = self.gate(self.fc(e))[:, :, None, None]  # (B, C, 1, 1)
        y = x * (1 + gamma)
        if self.final_relu:
            y = torch.relu(y)
        return y, e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x)[0]

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain formula, for tests (also the path without autograd)."""
        return self._encode_reference(x)[0]

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


def _centred_distances(xc: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
    """||xc_i||^2 - 2 xc_i.dc_k, (B, N, K), for xc = x - m (B, N, D), dc (K, D): the plain ops,
    whose backward :class:`_CentredDistances` reproduces."""
    return (xc * xc).sum(-1, keepdim=True) - 2 * (xc @ dc.t())


def _centred_aggregate(a: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
    """sum_i a_ik xc_i, (B, K, D), for a (B, N, K), xc = x - m (B, N, D): the plain op, whose
    backward :class:`_CentredAggregate` reproduces."""
    return a.transpose(1, 2) @ xc


class _CentredDistances(torch.autograd.Function):
    """:func:`_centred_distances` saving x (as given, a view), m and dc rather than the centred x
    (and the folded copy ``torch.matmul`` makes of a non-contiguous one): the backward centres x
    again and runs the plain ops' backward formulas in autograd's order (the same gradients, bit
    for bit). m is a constant (no gradient)."""

    @staticmethod
    def forward(x: torch.Tensor, m: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        xc = x - m
        # matmul folds (B, N, D) @ (D, K) into one mm on a (B*N, D) matrix
        p = torch.mm(xc.reshape(b * n, dim), dc.t()).view(b, n, dc.shape[0])
        return (xc * xc).sum(-1, keepdim=True) - 2 * p

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, m, dc = ctx.saved_tensors
        b, n, dim = x.shape
        xc = x - m
        gp = (-g * 2).reshape(b * n, dc.shape[0])  # of the products (sub, then the scalar mul)
        gx = None
        if ctx.needs_input_grad[0]:
            # autograd's order: the product's gradient first, then the square's two factors
            gsq = g.sum(-1, keepdim=True).expand(x.shape) * xc
            gx = gp.mm(dc).view(b, n, dim) + gsq + gsq
        # autograd's mm backward for the column-major dc.t(): (g^T xc)^T, transposed back for dc
        gdc = gp.t().mm(xc.reshape(b * n, dim)) if ctx.needs_input_grad[2] else None
        return gx, None, gdc


class _CentredAggregate(torch.autograd.Function):
    """:func:`_centred_aggregate` saving a, x (as given) and m rather than the centred x: the
    backward centres x again and runs ``bmm``'s backward (the same gradients, bit for bit). m is a
    constant (no gradient)."""

    @staticmethod
    def forward(a: torch.Tensor, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a.transpose(1, 2), x - m)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        a, x, m = ctx.saved_tensors
        # bmm's backward: (a^T)' = g xc^T, transposed back for a; xc' = (a^T)^T g = a g
        ga = g.bmm((x - m).transpose(1, 2)).transpose(1, 2) if ctx.needs_input_grad[0] else None
        gx = a.bmm(g) if ctx.needs_input_grad[1] else None
        return ga, gx, None


class _GatedReLU(torch.autograd.Function):
    """y = relu(x * (1 + gamma)), gamma (B, C, 1, 1); saves x and gamma, not y: the backward
    recomputes x * (1 + gamma) (the same values, bit for bit) for the ReLU's mask."""

    @staticmethod
    def forward(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return (x * (1 + gamma)).relu_()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, gamma = ctx.saved_tensors
        scale = 1 + gamma
        g = torch.ops.aten.threshold_backward(g, x * scale, 0)  # the ReLU's backward
        gx = g * scale if ctx.needs_input_grad[0] else None
        ggamma = (g * x).sum((2, 3), keepdim=True) if ctx.needs_input_grad[1] else None
        return gx, ggamma


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
