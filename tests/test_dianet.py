"""DIA: one LSTM cell shared by the blocks of a stage; the state lives within one forward."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

import chanattn
from chanattn.modules import dianet
from chanattn.modules.dianet import DenseImplicitAttention, DIALSTMCell, DIAStageState, make_dia_stage


def _mlp(z, seq):
    """Linear -> ReLU -> Linear, written out with the layers' weights."""
    hidden = torch.relu(z @ seq[0].weight.t() + seq[0].bias)
    return hidden @ seq[2].weight.t() + seq[2].bias


def _lstm_step(cell, z, h, c):
    """One step of the DIA LSTM: gates i, f, g, o; c' = f c + i g; h' = o * sigmoid(c')."""
    n = z.shape[1]
    gates = _mlp(z, cell.w_ih) + _mlp(h, cell.w_hh)
    i, f, g, o = (gates[:, k * n:(k + 1) * n] for k in range(4))
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.sigmoid(c)
    return h, c


class _ToyStage(nn.Module):
    """n residual blocks, x <- x + attn_k(conv_k(x)), the DIA modules placed before the addition."""

    def __init__(self, channels: int, num_blocks: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_blocks))
        self.attns = nn.ModuleList(make_dia_stage(channels, num_blocks))

    def forward(self, x):
        for conv, attn in zip(self.convs, self.attns):
            x = x + attn(conv(x))
        return x


def _unrolled(stage: _ToyStage, x: torch.Tensor) -> torch.Tensor:
    cell = stage.attns[0].cell
    h = torch.zeros(x.shape[0], x.shape[1], dtype=x.dtype)
    c = torch.zeros_like(h)
    for conv in stage.convs:
        r = conv(x)
        h, c = _lstm_step(cell, r.mean((2, 3)), h, c)
        x = x + r * h[:, :, None, None]
    return x


def test_stage_of_three_blocks_is_an_unrolled_lstm():
    torch.manual_seed(0)
    stage = _ToyStage(8, 3).double()
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    out = stage(x)
    torch.testing.assert_close(out, _unrolled(stage, x))
    # the state does not leak: a second forward of the same input gives the same output
    torch.testing.assert_close(stage(x), out)
    state = stage.attns[0].stage_state
    assert state.h is None and state.c is None and state.next_index == 0
    # a forward with another batch size right after works, and sample 0 is unchanged
    torch.testing.assert_close(stage(x[:1]), out[:1])


def test_one_cell_and_one_state_per_stage():
    attns = make_dia_stage(16, 4)
    assert len(attns) == 4 and [a.index for a in attns] == [0, 1, 2, 3]
    assert all(a.cell is attns[0].cell and a.stage_state is attns[0].stage_state for a in attns)
    container = nn.ModuleList(attns)
    assert sum(p.numel() for p in container.parameters()) == sum(p.numel() for p in attns[0].parameters())
    # MLPs with reduction 4: C -> C/4 -> 4C, for input and hidden
    assert attns[0].cell.w_ih[0].out_features == 4 and attns[0].cell.w_ih[2].out_features == 64


def test_state_carries_the_gradient_through_the_stage():
    torch.manual_seed(1)
    attns = make_dia_stage(8, 3)
    xs = [torch.randn(2, 8, 3, 3, requires_grad=True) for _ in range(3)]
    ys = [a(x) for a, x in zip(attns, xs)]
    ys[2].sum().backward()
    assert xs[0].grad is not None and xs[0].grad.abs().sum() > 0  # block 2 sees block 0's input


def test_standalone_module_is_a_one_block_stage():
    torch.manual_seed(2)
    m = chanattn.create("dia", 16)
    assert isinstance(m, DenseImplicitAttention) and m.index == 0 and m.stage_state.num_blocks == 1
    x = torch.randn(3, 16, 4, 5)
    with torch.no_grad():
        y = m(x)
        zeros = torch.zeros(3, 16)
        h, _ = _lstm_step(m.cell, x.mean((2, 3)), zeros, zeros)
        torch.testing.assert_close(y, x * h[:, :, None, None])
        torch.testing.assert_close(m(x), y)  # reset at every forward
    assert m.stage_state.h is None


def test_cell_output_uses_sigmoid_of_the_cell_state():
    torch.manual_seed(3)
    cell = DIALSTMCell(8)
    z, h, c = torch.randn(2, 8), torch.rand(2, 8), torch.randn(2, 8) * 3
    h2, c2 = cell(z, (h, c))
    eh, ec = _lstm_step(cell, z, h, c)
    torch.testing.assert_close(h2, eh)
    torch.testing.assert_close(c2, ec)
    assert ((h2 > 0) & (h2 < 1)).all()
    h0, _ = cell(z)  # None = zero state
    torch.testing.assert_close(h0, _lstm_step(cell, z, torch.zeros(2, 8), torch.zeros(2, 8))[0])


def test_out_of_turn_block_raises():
    attns = make_dia_stage(8, 3)
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(RuntimeError, match=r"DenseImplicitAttention.*block 1.*expected block 0"):
        attns[1](x)
    attns[0](x)
    with pytest.raises(RuntimeError, match=r"block 2.*expected block 1"):
        attns[2](x)
    with pytest.raises(RuntimeError, match=r"batch of 1.*holds 2"):
        attns[1](x[:1])


def test_compile_and_deepcopy_of_a_stage():
    torch.manual_seed(4)
    stage = _ToyStage(8, 3).eval()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        ref = stage(x)
        torch._dynamo.reset()
        compiled = torch.compile(stage, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), ref)
        torch.testing.assert_close(compiled(x), ref)
        twin = copy.deepcopy(stage)
        assert twin.attns[1].cell is twin.attns[0].cell is not stage.attns[0].cell
        assert twin.attns[1].stage_state is twin.attns[0].stage_state is not stage.attns[0].stage_state
        torch.testing.assert_close(twin(x), ref)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"DenseImplicitAttention.*16.*expected 8"):
        DenseImplicitAttention(8, cell=DIALSTMCell(16))
    with pytest.raises(ValueError, match=r"DenseImplicitAttention.*index.*\[0, 2\).*2"):
        DenseImplicitAttention(8, state=DIAStageState(2), index=2)
    with pytest.raises(TypeError, match="DIALSTMCell"):
        DenseImplicitAttention(8, cell=nn.Linear(8, 8))
    with pytest.raises(ValueError, match="num_blocks"):
        make_dia_stage(8, 0)


def test_no_cuda_calls_in_the_source():
    assert ".cuda(" not in inspect.getsource(dianet)
