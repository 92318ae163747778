"""EncNet's Context Encoding module in training: about 3.1 input sizes saved at C = 64, K = 32 (x,
the ReLU's output, the (B, N, K) distances and assignments), where the formula keeps 6.1. Three
changes, the values, gradients and running statistics those of the formula, bit for bit on CPU:

- the first conv-BN-ReLU is one autograd Function (:func:`chanattn.fast.recompute.conv_bn_relu`)
  that saves x, its output (which the Encoding layer keeps anyway) and BN's statistics, and
  recomputes the 1x1 convolution in the backward rather than keeping its output (about a tenth of a
  training step on CPU, one thread, C = 64 and 256);
- the Encoding layer does not keep a copy of its input: ``x @ d.t()`` on the (B, N, D) transposed
  view of a contiguous map folds it into a (B*N, D) matrix, a copy that autograd keeps for the
  codewords' gradient (one input size); :class:`_FoldedProducts` runs the same product and folds x
  again in the backward;
- the final relu(x * (1 + gamma)) is a Function (:class:`_GatedReLU`) that saves x and gamma, not
  its output.

Only ``forward`` takes this path; ``forward_with_se_loss`` runs the formula.
"""

from __future__ import annotations

import torch

from ..modules.encnet import ContextEncoding, Encoding
from .recompute import conv_bn_relu, conv_bn_relu_applies
from .registry import FastPath, register


def _assignments(enc: Encoding, x: torch.Tensor) -> torch.Tensor:
    """:meth:`Encoding.assignments` with x_i.d_k by :class:`_FoldedProducts`."""
    d = enc.codewords
    sq = (x * x).sum(-1, keepdim=True)
    dist = sq - 2 * _FoldedProducts.apply(x, d) + (d * d).sum(-1)
    return torch.softmax(-enc.smoothing * dist, dim=-1)


def _encoding(enc: Encoding, x: torch.Tensor) -> torch.Tensor:
    """:meth:`Encoding.forward` without keeping a folded copy of x."""
    enc._check(x)
    b = x.shape[0]
    x = x.reshape(b, enc.channels, -1).transpose(1, 2)  # (B, N, D)
    a = _assignments(enc, x)  # (B, N, K)
    return a.transpose(1, 2) @ x - a.sum(1).unsqueeze(-1) * enc.codewords  # (B, K, D)


def _encnet(m: ContextEncoding, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    m._require_batch_stats(x.shape[0] * x.shape[2] * x.shape[3])  # the first BN
    if conv_bn_relu_applies(m.conv, m.bn, m.act):
        u = conv_bn_relu(x, m.conv, m.bn, save="output")  # (B, C, H, W)
    else:
        u = m.act(m.bn(m.conv(x)))
    enc = m.encoding
    codes = m.act_codes(m.bn_codes(_encoding(enc, u) if type(enc) is Encoding else enc(u)))  # (B, K, C)
    e = codes.mean(1)  # (B, C)
    gamma = m.gate(m.fc(e))[:, :, None, None]  # (B, C, 1, 1)
    return _GatedReLU.apply(x, gamma) if m.final_relu else x * (1 + gamma)


class _FoldedProducts(torch.autograd.Function):
    """x @ d.t() for x (B, N, D), d (K, D), as ``torch.matmul`` computes it (x folded into a
    (B*N, D) matrix, one ``mm``), saving x as given (a view) and d rather than the folded copy of
    a non-contiguous x: the backward folds it again and runs ``mm``'s backward as autograd does
    (the same products, so the same gradients, bit for bit)."""

    @staticmethod
    def forward(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        return torch.mm(x.reshape(b * n, dim), d.t()).view(b, n, d.shape[0])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, d = ctx.saved_tensors
        b, n, dim = x.shape
        g = g.reshape(b * n, d.shape[0])
        gx = g.mm(d).view(b, n, dim) if ctx.needs_input_grad[0] else None
        # autograd's mm backward for the column-major d.t(): (g^T x)^T, transposed back for d
        gd = g.t().mm(x.reshape(b * n, dim)) if ctx.needs_input_grad[1] else None
        return gx, gd


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


register(FastPath(
    "encnet.recompute", ContextEncoding, _encnet, purpose="memory", autograd=True,
    summary="conv-BN-ReLU, the Encoding layer's product and the final gated ReLU as autograd "
            "Functions that save less",
    examples=(("encnet", {"num_codes": 8}), ("encnet", {"num_codes": 8, "final_relu": False}))))
