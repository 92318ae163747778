"""C3 in training: none of the (C/G x C/G) matrices and not the input of the area resampling are
saved (1.3x the input at 8x64x28x28 and 2.1x at 8x256x14x14, against 2.5x and 6.0x for the
formula): the communication step saves the encodings only and recomputes its matrices in the
backward (:class:`_Communicate`), and the area resampling saves no input (:class:`_AreaResize`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..modules.c3 import CrossChannelCommunication, _scores
from .registry import FastPath, register


def _c3(m: CrossChannelCommunication, x: torch.Tensor) -> torch.Tensor:
    m._check_input(x)
    b, c, h, w = x.shape
    sh, sw = m.spatial_size
    resized = (h, w) != (sh, sw)

    def resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return _AreaResize.apply(t, size) if m.resample == "area" else m._resize(t, size)

    u = resize(x, (sh, sw)) if resized else x
    g = m.groups
    f = m.encoder(u.reshape(b * g, c // g, sh * sw))  # (B*G, C/G, A)
    msg = _Communicate.apply(f, m.distance == "mean")  # (B*G, C/G, A)
    out = m.decoder(msg).reshape(b, c, sh, sw)
    if resized:
        out = resize(out, (h, w))
    return (x + out).clamp_min(0)  # as the formula: the caller may add to the output in place


class _Communicate(torch.autograd.Function):
    """softmax_i(score_ji) f_i, saving the encodings f (B*G, C/G, A) only.

    Autograd keeps two (B*G, C/G, C/G) matrices for the "mean" distance (the differences
    m_j - m_i, for the square's backward, and the softmax's output, for its own backward and the
    message's), one (the softmax's output) for "full": at 8x256x14x14 each is 1.3x the input. The
    backward recomputes the scores and the softmax from f (for "full" one more batched product
    f f^T) and runs the softmax's own backward (``_softmax_backward_data``)."""

    @staticmethod
    def forward(f, mean: bool):
        return torch.softmax(_scores(f, mean), dim=-1) @ f

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        f, ctx.mean = inputs
        ctx.save_for_backward(f)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (f,) = ctx.saved_tensors
        attn = torch.softmax(_scores(f, ctx.mean), dim=-1)  # [n, j, i]
        df = attn.transpose(1, 2) @ g  # through the message's second factor
        ds = torch.ops.aten._softmax_backward_data(g @ f.transpose(1, 2), attn, -1, attn.dtype)
        del attn
        if ctx.mean:
            m = f.mean(-1)
            # score = -(m_j - m_i)^2: d/dm_j = -2 (m_j - m_i), d/dm_i = 2 (m_j - m_i)
            dd = ds.mul_((m.unsqueeze(1) - m.unsqueeze(2)).mul_(2))
            dm = dd.sum(2) - dd.sum(1)
            df += dm.unsqueeze(-1) / f.shape[-1]
        else:
            # score = 2 f_j.f_i - ||f_i||^2: df_k = 2 sum_i ds_ki f_i + 2 sum_j ds_jk f_j
            # - 2 (sum_j ds_jk) f_k
            df.baddbmm_(ds, f, alpha=2).baddbmm_(ds.transpose(1, 2), f, alpha=2)
            df -= 2 * ds.sum(1).unsqueeze(-1) * f
        return df, None


class _AreaResize(torch.autograd.Function):
    """``F.adaptive_avg_pool2d(x, size)`` saving only x's shape: ATen's backward reads the input's
    sizes and layout, not its values, yet autograd keeps the whole input (here x itself, 1x)."""

    @staticmethod
    def forward(x, size: tuple[int, int]):
        return F.adaptive_avg_pool2d(x, size)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x = inputs[0]
        ctx.shape, ctx.dtype, ctx.device = x.shape, x.dtype, x.device
        nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        ctx.layout = torch.channels_last if nhwc else torch.contiguous_format

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        like = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device, memory_format=ctx.layout)
        return torch.ops.aten._adaptive_avg_pool2d_backward(g, like), None


register(FastPath(
    "c3.recompute", CrossChannelCommunication, _c3, purpose="memory", autograd=True,
    summary="the communication step and the area resampling as autograd Functions that save the "
            "encodings only",
    examples=(("c3", {"distance": "full"}), ("c3", {"resample": "nearest", "groups": 2}))))
