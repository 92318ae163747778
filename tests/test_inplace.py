"""No module changes its input tensor in place: the input is bitwise unchanged (and its version
counter untouched) after forward and after backward, in train and eval mode, under no_grad and
inference_mode (where fast paths may work in place on their own buffers), for contiguous,
channels-last and strided (view) inputs, and the output never shares the input's memory."""

from __future__ import annotations

import pytest
import torch

import chanattn
from conftest import ALL_MODULES, channels_for, randomise_norms

#: Modules documented to modify their input in place, with where it is documented. None does.
DOCUMENTED_INPLACE: dict[str, str] = {}

MODES = ("train", "eval", "no_grad", "inference_mode")


def _build(name: str, train: bool) -> torch.nn.Module:
    m = chanattn.create(name, channels_for(name, 32))
    randomise_norms(m)
    return m.train(train)


def _inputs(c: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(tensor passed to the module, tensor whose memory it lives in) by layout."""
    x = torch.randn(2, c, 7, 9)
    big = torch.randn(3, c + 4, 9, 11)
    return {
        "contiguous": (x, x),
        "channels_last": (x.contiguous(memory_format=torch.channels_last),) * 2,
        "strided view": (big[1:, 2:c + 2, 1:8, ::1][:, :, :, 1:10], big),
    }


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return sa.data_ptr() == sb.data_ptr() and sa.nbytes() > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL_MODULES)
def test_input_is_not_modified(name, mode):
    assert name not in DOCUMENTED_INPLACE
    m = _build(name, train=mode == "train")
    for layout, (x, memory) in _inputs(m.channels).items():
        before, version = memory.clone(), memory._version
        if mode == "no_grad":
            with torch.no_grad():
                y = m(x)
        elif mode == "inference_mode":
            with torch.inference_mode():
                y = m(x)
        else:
            y = m(x)
            if y.requires_grad:  # through the parameters (se_var1 and ge_theta_minus have none)
                y.backward(torch.randn_like(y))
        assert torch.equal(memory, before), f"{name} ({mode}, {layout}): the input was modified"
        assert memory._version == version, f"{name} ({mode}, {layout}): in-place op on the input"
        assert not _shares_memory(y, memory), f"{name} ({mode}, {layout}): the output aliases the input"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ALL_MODULES)
def test_leaf_input_requiring_grad(name, train):
    m = _build(name, train)
    x = torch.randn(2, m.channels, 6, 5, requires_grad=True)
    before = x.detach().clone()
    y = m(x)
    y.backward(torch.randn_like(y))
    assert torch.equal(x.detach(), before) and x._version == 0
    assert x.grad is not None and x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    # the output can be modified in place without corrupting the backward of the next use
    y2 = m(x)
    y2.detach().mul_(0)
    assert torch.equal(x.detach(), before)
