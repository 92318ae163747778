"""EncNet's Context Encoding module in training: about 3.1 input sizes saved at C = 64, K = 32 (x,
the ReLU's output, the (B, N, K) distances and assignments), where the formula keeps 8.1 (2 x 64 x
28 x 28, tests/conftest.saved_multiple). Three changes, the values, gradients and running statistics
those of the formula, bit for bit on CPU:

- the first conv-BN-ReLU is one autograd Function (:func:`chanattn.fast.recompute.conv_bn_relu`)
  that saves x, its output (which the Encoding layer keeps anyway) and BN's statistics, and
  recomputes the 1x1 convolution in the backward rather than keeping its output (about a tenth of a
  training step on CPU, one thread, C = 64 and 256);
- the Encoding layer does not keep copies of its input: its formula centres x on the codewords'
  mean m (:class:`~chanattn.modules.encnet.Encoding`: a new (B, N, D) tensor, twice: once for the
  distances, once for the aggregation), and ``xc @ dc.t()`` on the (B, N, D) transposed view of a
  contiguous map folds xc into a (B*N, D) matrix, copies that autograd keeps (the layer alone: 4.0
  input sizes saved, 2.0 here); two Functions (:class:`_CentredDistances`,
  :class:`_CentredAggregate`) compute the same from x as given and centre it again in the backward;
- the final relu(x * (1 + gamma)) is a Function (:class:`_GatedReLU`) that saves x and gamma, not
  its output.

Only ``forward`` takes this path; ``forward_with_se_loss`` runs the formula.
"""

from __future__ import annotations

import torch

from ..modules.encnet import ContextEncoding, Encoding
from .recompute import conv_bn_relu, conv_bn_relu_applies
from .registry import FastPath, register


def _encoding(enc: Encoding, x: torch.Tensor) -> torch.Tensor:
    """:meth:`Encoding.forward` keeping x, not its centred and folded copies."""
    enc._check(x)
    b = x.shape[0]
    x = x.reshape(b, enc.channels, -1).transpose(1, 2)  # (B, N, D)
    m, dc = enc.centre()
    dist = _CentredDistances.apply(x, m, dc) + (dc * dc).sum(-1)  # (B, N, K)
    a = torch.softmax(-enc.smoothing * dist, dim=-1)
    # e_k = sum_i a_ik (x_i - m) - (sum_i a_ik) (d_k - m)
    return _CentredAggregate.apply(a, x, m) - a.sum(1).unsqueeze(-1) * dc  # (B, K, D)


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


class _SavesInputs(torch.autograd.Function):
    """A Function whose backward needs exactly its inputs: it saves them all."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)


class _CentredDistances(_SavesInputs):
    """||xc_i||^2 - 2 xc_i.dc_k, (B, N, K), for xc = x - m (x (B, N, D), m (D,), dc (K, D)), as the
    formula computes it (``xc @ dc.t()`` folds xc into a (B*N, D) matrix, one ``mm``), saving x as
    given (a view), m and dc rather than the centred x and its folded copy: the backward centres x
    again and runs the plain ops' backward formulas in autograd's order (the same gradients, bit for
    bit). m is a constant (no gradient)."""

    @staticmethod
    def forward(x: torch.Tensor, m: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        xc = x - m
        p = torch.mm(xc.reshape(b * n, dim), dc.t()).view(b, n, dc.shape[0])
        return (xc * xc).sum(-1, keepdim=True) - 2 * p

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


class _CentredAggregate(_SavesInputs):
    """sum_i a_ik (x_i - m), (B, K, D), for a (B, N, K), x (B, N, D), as the formula's
    ``a.transpose(1, 2) @ (x - m)``, saving a, x (as given) and m rather than the centred x: the
    backward centres x again and runs ``bmm``'s backward (the same gradients, bit for bit). m is a
    constant (no gradient)."""

    @staticmethod
    def forward(a: torch.Tensor, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a.transpose(1, 2), x - m)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        a, x, m = ctx.saved_tensors
        # bmm's backward: (a^T)' = g xc^T, transposed back for a; xc' = (a^T)^T g = a g
        ga = g.bmm((x - m).transpose(1, 2)).transpose(1, 2) if ctx.needs_input_grad[0] else None
        gx = a.bmm(g) if ctx.needs_input_grad[1] else None
        return ga, gx, None


class _GatedReLU(_SavesInputs):
    """y = relu(x * (1 + gamma)), gamma (B, C, 1, 1); saves x and gamma, not y: the backward
    recomputes x * (1 + gamma) (the same values, bit for bit) for the ReLU's mask."""

    @staticmethod
    def forward(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return (x * (1 + gamma)).relu_()

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
