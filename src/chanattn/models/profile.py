"""Parameters and multiply-accumulates of a model, as the papers count them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..fast import fast_paths

__all__ = ["count_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    """The model's parameters, each shared one once (buffers such as BN statistics not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224),
               inputs: torch.Tensor | None = None) -> int:
    """Multiply-accumulates of one forward pass (what the papers call FLOPs).

    Counted with ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per
    multiply-add of convolutions, linear layers and matrix products (``mm``, ``bmm``,
    ``addmm``, ...); MACs = FLOPs / 2. Element-wise operations (BN, activations, the gates'
    products, pooling) are not counted, as in the papers' tables. The model runs in eval mode and
    without gradients (its mode is restored), so BN statistics are not touched.

    Every attention module is counted on its formula (``chanattn.fast_paths(False)``): the work the
    paper describes, whichever fast implementation a call would take (some compute a small layer
    element-wise, which the counter does not see; CBAM's native operator has a FLOP formula of its
    own, equal to the formula's count, for counters run around it).

    Args:
        model: the model.
        input_size: (B, C, H, W) of a random input (batch 1 gives per-image MACs).
        inputs: the input instead (on the model's device).
    """
    if inputs is None:
        try:
            ref = next(model.parameters())
            device, dtype = ref.device, ref.dtype
        except StopIteration:
            device, dtype = None, None
        inputs = torch.randn(*input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), fast_paths(False), FlopCounterMode(display=False) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
