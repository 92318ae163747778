"""Building blocks of the fast implementations (registered in the other files of
:mod:`chanattn.fast`) of the gate modules (the SE family, ECA, CBAM, SK): pooled 1x1 layers as
matrix products, reductions arranged around ATen's CPU kernels (chunks of the batch that stay in
cache between two passes, maxima over overlapping windows), and the autograd Function of CBAM's
spatial pooling, which pools in one pass and saves its input and the pooled map.

Under autograd the SE family's 1x1 layers run as matrix products (3x faster than the convolutions,
forward and backward); where a BatchNorm follows (CBAM's spatial stage, SK's selection) the small
layers run as in the formula, so that training rounds as the formula does (a BatchNorm over a small
batch amplifies a rounding difference). The inference-only changes are noted where they are made.

The chunked loops run in eager mode only (the registry runs none of this while tracing, scripting,
compiling or exporting; the functions also check, for a caller of their own).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import eager as eager_fast_path
from .registry import grad_needed

__all__ = [
    "CHUNK_BYTES",
    "WHOLE_BYTES",
    "avg_max_pool_channels",
    "avg_max_pool_space",
    "conv1d_channels",
    "conv2d_few_channels",
    "linear_1x1",
]

#: The bytes of input one chunk of the chunked loops covers. A chunk and what is written from it
#: stay in the last-level cache (32 MiB of L3 on the machine measured, shared) between the passes
#: over them. At 32x64x56x56, 4 MiB chunks beat 0.5 MiB ones (L2-sized: too many small operations,
#: each with its dispatch and thread start) and no chunks, with one thread and with two.
CHUNK_BYTES = 4 << 20
#: Tensors up to this size are not cut into chunks: they stay in the last-level cache between two
#: passes anyway, and each chunk costs dispatch overhead.
WHOLE_BYTES = 8 << 20


def linear_1x1(conv: nn.Conv2d, s: torch.Tensor, *, exact_under_grad: bool = False) -> torch.Tensor:
    """``conv`` (a 1x1 ``nn.Conv2d``) applied to pooled features ``s`` of shape (B, C_in), as a
    matrix product; returns (B, C_out).

    On a (B, C, 1, 1) tensor a 1x1 convolution is a fully-connected layer, and ``F.linear`` is
    several times faster there than the convolution (no oneDNN set-up for a 1x1 map), forward
    and backward: SE's MLP at C = 512, B = 32 takes 0.35 ms for a training step as matrix products
    and 1.05 ms as convolutions.
    Depthwise layers (``groups == C_in == C_out``) become a per-channel affine map; other grouped
    layers, and anything that is not a plain 1x1 convolution, run as the convolution itself.

    ``exact_under_grad``: under autograd run the convolution itself, which rounds as the plain
    formula does; for a layer followed by a BatchNorm over a small batch (SK's ``fc_reduce``),
    which amplifies a rounding difference.
    """
    w = conv.weight
    if exact_under_grad and torch.is_grad_enabled() and (s.requires_grad or w.requires_grad):
        return conv(s[:, :, None, None]).flatten(1)
    plain = (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
             and conv.dilation == (1, 1) and conv.padding_mode == "zeros")
    if plain and conv.groups == 1:
        return F.linear(s, w.flatten(1), conv.bias)
    if plain and conv.groups == conv.in_channels == conv.out_channels:
        out = s * w.view(1, -1)
        return out if conv.bias is None else out + conv.bias
    return conv(s[:, :, None, None]).flatten(1)


def conv1d_channels(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ECA's 1-D convolution across the channels of pooled ``s`` (B, C), zero-padded to keep C,
    with an odd kernel ``weight`` of shape (1, 1, k) and no bias; returns (B, C).

    On CPU, written as k shifted multiply-adds on the padded (B, C + k - 1) rows: at the kernel
    sizes ECA uses (3 to 9) this is faster there than ``F.conv1d`` on a (B, 1, C) tensor (about
    30 against 90 microseconds at B = 32, C = 64). Elsewhere, and under autograd (the
    reference's rounding in training), ``F.conv1d``.
    """
    k = weight.shape[-1]
    recorded = torch.is_grad_enabled() and (s.requires_grad or weight.requires_grad)
    if recorded or s.device.type != "cpu":
        return F.conv1d(s.unsqueeze(1), weight, padding=k // 2).squeeze(1)
    c = s.shape[1]
    w = weight.view(k)
    padded = F.pad(s, (k // 2, k // 2))
    out = padded[:, 0:c] * w[0]
    for j in range(1, k):
        out = out + padded[:, j:j + c] * w[j]
    return out


def conv2d_few_channels(conv: nn.Conv2d, q: torch.Tensor) -> torch.Tensor:
    """``conv`` on a map with few input channels and one output channel (CBAM's 2 -> 1, 7x7).

    On CPU the batch is folded into the channels: one depthwise convolution over the B * C_in
    maps of a single image, then the sum over C_in. oneDNN vectorises a depthwise convolution over
    channels, so with many maps this is several times faster than its kernel for the dense
    2 -> 1 convolution (about 5x at 32x2x56x56, 2x at 14x14). On maps under 100 positions
    (7x7: the dense kernel is a little faster there), on other devices, under autograd (the
    reference's rounding in training) and for anything but a plain convolution with one output
    channel, ``conv`` itself.
    """
    b, c_in, h, w = q.shape
    plain = (conv.out_channels == 1 and conv.groups == 1 and conv.padding_mode == "zeros"
             and not isinstance(conv.padding, str))
    recorded = torch.is_grad_enabled() and (q.requires_grad or conv.weight.requires_grad)
    if recorded or not (plain and q.device.type == "cpu" and h * w >= 100):
        return conv(q)
    # The per-channel results are summed in float32 at least, as the dense kernel accumulates.
    acc = torch.promote_types(q.dtype, torch.float32)
    weight = conv.weight.to(acc).view(c_in, 1, *conv.weight.shape[2:]).repeat(b, 1, 1, 1)
    out = F.conv2d(q.to(acc).reshape(1, b * c_in, h, w), weight, None, conv.stride, conv.padding,
                   conv.dilation, b * c_in)
    out = out.view(b, c_in, *out.shape[2:]).sum(1, keepdim=True)
    if conv.bias is not None:
        out = out + conv.bias.to(acc).view(1, 1, 1, 1)
    return out.to(q.dtype)


def _batch_chunks(x: torch.Tensor) -> list[tuple[int, int]]:
    """Slices of the batch: chunks of about CHUNK_BYTES (at least one sample) on CPU with one
    intra-op thread where ``x`` is larger than WHOLE_BYTES, else the whole batch.

    Every operation costs some 10 microseconds of dispatch on CPU, so smaller tensors are not
    worth cutting up (they stay in the last-level cache between two reductions anyway). With
    several threads each operation on a chunk opens and joins a parallel region: on a quiet
    machine chunks then gain nothing measurable (32x64x56x56, 2 threads), and on a loaded one,
    where a thread can be descheduled at every join, 4 MiB chunks made CBAM 2.5 times slower than
    whole-tensor operations. On GPUs nothing is cut up."""
    b = x.shape[0]
    per_sample = max(1, x[0].numel() * x.element_size())
    if per_sample * b <= WHOLE_BYTES or x.device.type != "cpu" or torch.get_num_threads() > 1:
        return [(0, b)]
    n = max(1, CHUNK_BYTES // per_sample)
    return [(i, min(b, i + n)) for i in range(0, b, n)]


def _amax(v: torch.Tensor, dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``v.amax(dim)`` (no kept dim) for a tensor whose last dim is contiguous.

    ATen's CPU max reduction runs its vector loop over the contiguous dimension in blocks of 32
    elements and the remainder element by element: at 49 (a 7x7 map) it is 4 to 5 times slower
    than at 32 or 64. Where the contiguous length L is not a multiple of 32 (and is at least 32),
    this reduces two overlapping windows of length 32 * (L // 32), which cover all L, and
    combines them: a max over a set is the max of the maxima of overlapping parts.
    """
    length = v.shape[-1]
    k = length // 32 * 32
    dim = dim % v.dim()
    # Only where the remainder is a large share: the two windows cost about one extra pass.
    if k == 0 or (length - k) * 10 <= k or v.stride(-1) != 1 or v.device.type != "cpu":
        return torch.amax(v, dim) if out is None else torch.amax(v, dim, out=out)
    head, tail = v[..., :k], v[..., length - k:]
    if dim == v.dim() - 1:  # the reduced dimension is the contiguous one
        a = torch.amax(head, dim)
        return torch.maximum(a, torch.amax(tail, dim), out=a if out is None else out)
    # Another dimension is reduced: the result keeps the contiguous dimension of length L.
    if out is None:
        out = v.new_empty(v.shape[:dim] + v.shape[dim + 1:])
    torch.amax(head, dim, out=out[..., :k])
    t = torch.amax(tail, dim)  # positions L - k .. L - 1
    overlap = 2 * k - length  # > 0, since k > L - 32 and k >= 32
    out[..., k:] = t[..., overlap:]
    torch.maximum(out[..., length - k:k], t[..., :overlap], out=out[..., length - k:k])
    return out


def _layout(x: torch.Tensor) -> str:
    """'nchw' or 'nhwc' where ``x`` is contiguous in that layout (both, for 1x1 maps, count as
    'nchw'), else 'other'."""
    if x.is_contiguous():
        return "nchw"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    return "other"


def _pool_space_into(x: torch.Tensor, avg: torch.Tensor, mx: torch.Tensor) -> None:
    """avg, mx (B, C) = mean and max of x (B, C, H, W) over H and W."""
    b, c = x.shape[:2]
    layout = _layout(x)
    if layout == "nchw":
        v = x.view(b * c, -1)
        torch.mean(v, 1, out=avg.view(-1))
        _amax(v, 1, out=mx.view(-1))
    elif layout == "nhwc":
        v = x.permute(0, 2, 3, 1).reshape(b, -1, c)  # a view: (B, HW, C), C contiguous
        torch.mean(v, 1, out=avg)
        _amax(v, 1, out=mx)
    else:
        torch.mean(x, (2, 3), out=avg)
        torch.amax(x, (2, 3), out=mx)


def _pool_channels_into(y: torch.Tensor, q: torch.Tensor) -> None:
    """q[:, 0] = mean over C of y, q[:, 1] = max over C of y; y (B, C, H, W), q (B, 2, H, W)."""
    b, c = y.shape[:2]
    layout = _layout(y)
    if layout == "nchw":
        v = y.view(b, c, -1)
        torch.mean(v, 1, out=q[:, 0].view(b, -1))
        _amax(v, 1, out=q[:, 1].view(b, -1))
    elif layout == "nhwc":
        v = y.permute(0, 2, 3, 1).reshape(b, -1, c)  # a view: (B, HW, C), C contiguous
        torch.mean(v, 2, out=q[:, 0].view(b, -1))
        _amax(v, 2, out=q[:, 1].view(b, -1))
    else:
        torch.mean(y, 1, keepdim=True, out=q[:, 0:1])
        torch.amax(y, 1, keepdim=True, out=q[:, 1:2])


def avg_max_pool_space(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and maximum of ``x`` (B, C, H, W) over H and W: two (B, C) tensors.

    In eager mode without autograd: both reductions on each chunk of the batch in turn (the whole
    batch where it fits in cache, see ``_batch_chunks``), so that the second reads from cache, and
    the maximum by :func:`_amax`. With autograd, or while tracing or compiling, plain ``mean`` and
    ``amax`` (their backward saves ``x`` and the (B, C) maxima, nothing larger).
    """
    if grad_needed(x) or not eager_fast_path():
        return x.mean((2, 3)), x.amax((2, 3))
    b, c = x.shape[:2]
    avg = x.new_empty(b, c)
    mx = x.new_empty(b, c)
    for b0, b1 in _batch_chunks(x):
        _pool_space_into(x[b0:b1], avg[b0:b1], mx[b0:b1])
    return avg, mx


def _pool_channels_forward(x: torch.Tensor, fast: bool) -> torch.Tensor:
    """q = [mean_C(x); max_C(x)], (B, 2, H, W); with ``fast``, each chunk of the batch pooled
    twice while in cache."""
    if not fast:
        return torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    b, _, h, w = x.shape
    q = x.new_empty(b, 2, h, w)
    for b0, b1 in _batch_chunks(x):
        _pool_channels_into(x[b0:b1], q[b0:b1])
    return q


def _pool_channels_backward(gq: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. y of q = [mean_C(y); max_C(y)]: the mean's share spread evenly over C,
    the max's to the maximal entries (split evenly among ties, as ``amax``'s backward does)."""
    mask = y == q[:, 1:2]
    # the count in int32 (a bool sum defaults to int64, an 8-byte copy of the mask first: 7x
    # slower at 32x64x56x56), the max's share by where (no float copy of the mask)
    count = mask.sum(1, keepdim=True, dtype=torch.int32)
    return gq[:, 0:1] / y.shape[1] + torch.where(mask, gq[:, 1:2] / count, 0.0)


class _PoolChannels(torch.autograd.Function):
    """q = [mean_C(x); max_C(x)] in one pass; saves x and q."""

    @staticmethod
    def forward(x: torch.Tensor, fast: bool) -> torch.Tensor:
        return _pool_channels_forward(x, fast)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, _ = inputs
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, gq: torch.Tensor):
        x, q = ctx.saved_tensors
        return _pool_channels_backward(gq, x, q), None


def avg_max_pool_channels(x: torch.Tensor) -> torch.Tensor:
    """[mean over C; max over C] of ``x`` (B, C, H, W): (B, 2, H, W), CBAM's spatial descriptor.

    One pass over ``x`` from memory (chunks of the batch, each pooled twice while in cache). With
    autograd, the backward saves ``x`` and the (B, 2, H, W) result.
    """
    fast = eager_fast_path()
    if grad_needed(x):
        return _PoolChannels.apply(x, fast)
    return _pool_channels_forward(x, fast)
