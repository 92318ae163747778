"""DIANet: Dense-and-Implicit Attention Network (Huang, Liang, Liang, Yang; AAAI 2020,
https://arxiv.org/abs/1905.10671): one LSTM-like cell shared by all the blocks of a stage.

Three pieces:

- :class:`DIALSTMCell`, the shared cell;
- :class:`DIAStageState`, the (h, c) that the blocks of one stage hand on during one forward;
- :class:`DenseImplicitAttention` (registered as ``dia``), the per-block module: it pools its
  input, runs the cell one step from the state the previous block left, and scales its input.

:func:`make_dia_stage` builds the modules for the blocks of one stage: one cell, one state, one
module per block. ``chanattn.create("dia", C)`` alone is a one-block stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..layers import AttentionModule, LayerSpec, check_positive_int, create_act, reduced_channels
from ..registry import register

__all__ = ["DIALSTMCell", "DIAStageState", "DenseImplicitAttention", "make_dia_stage"]


class DIALSTMCell(nn.Module):
    """(h', c') = cell(z, (h, c)): an LSTM step whose transforms are MLPs, with h' = o * sigmoid(c').

    gates = MLP_ih(z) + MLP_hh(h), split into i, f, g, o (in this order);
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g); h' = sigmoid(o) * sigmoid(c').

    Each MLP is Linear(C -> C*rd_ratio) -> ReLU -> Linear(-> 4C), with biases (the official
    ``small_cell``); the hidden size is C, so h' in (0, 1)^C is the attention of C channels. The
    paper's modification of the LSTM: sigmoid, not tanh, on the cell state for the output. The
    official cell has a dropout that acts only between stacked layers; with its one layer it is
    never applied, and it is left out here.

    Args:
        channels: C, the size of the input z, of h and of c.
        rd_ratio: the reduction of the MLPs' hidden layer (default 1/4, the paper's).
        rd_channels: the hidden width, overriding ``rd_ratio``.
        act_layer: the MLPs' activation (default ``"relu"``).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 4, rd_channels: int | None = None,
                 act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        owner = type(self).__name__
        self.channels = check_positive_int(channels, "channels", owner)
        hidden = reduced_channels(channels, rd_ratio, rd_channels, owner=owner)
        self.rd_channels = hidden
        self.w_ih = nn.Sequential(nn.Linear(channels, hidden), create_act(act_layer, owner=owner),
                                  nn.Linear(hidden, 4 * channels))
        self.w_hh = nn.Sequential(nn.Linear(channels, hidden), create_act(act_layer, owner=owner),
                                  nn.Linear(hidden, 4 * channels))

    def forward(self, z: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from ``state`` (zeros where None); z, h, c are (B, C)."""
        if state is None:
            h = c = torch.zeros_like(z)
        else:
            h, c = state
        gates = self.w_ih(z) + self.w_hh(h)  # (B, 4C)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.sigmoid(c)
        return h, c

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"


class DIAStageState:
    """The (h, c) that the blocks of one stage hand on to each other during one forward.

    It holds tensors only while a forward of the stage is under way: the stage's first block
    starts from zeros (whatever is held), each block stores its (h, c) for the next, and the
    last block clears them. Nothing is carried from one forward to the next, and a block that
    runs out of turn (not right after the block before it) raises an error.

    Not a module: it has no parameters or buffers, and it is shared (by reference) by the
    :class:`DenseImplicitAttention` modules of one stage. One forward at a time per stage: with
    ``nn.DataParallel`` the replicas share it, so use ``DistributedDataParallel`` (one process
    per device) for multi-device training.

    Args:
        num_blocks: the blocks of the stage.
    """

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = check_positive_int(num_blocks, "num_blocks", type(self).__name__)
        self.clear()

    def clear(self) -> None:
        """Drop the held state (the next block to run must be the first)."""
        self.h: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.next_index = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_blocks={self.num_blocks}, next_index={self.next_index})"


@register("dia", title="Dense-and-Implicit Attention",
          paper="DIANet: Dense-and-Implicit Attention Network (AAAI 2020, arXiv:1905.10671)",
          year=2020, kind="channel", placement="shared_per_stage",
          placement_note="every block, one LSTM cell shared by the blocks of each stage (official "
                         "models/cifar: Attention wraps each stage)")
class DenseImplicitAttention(AttentionModule):
    """y = x * h_t, (h_t, c_t) = cell(GAP(x), (h_{t-1}, c_{t-1})), t = this block's index in its stage.

    DIA (Huang et al., 2020): every block of a stage runs the one :class:`DIALSTMCell` of the
    stage on the global average of its residual branch, from the state the previous block left
    (zeros at the stage's first block), and scales the branch by h_t, before the residual
    addition. The attention is "dense" (it sees every earlier block of the stage through the
    state) and "implicit" (the cell's parameters are shared, not added per block).

    Alone (``chanattn.create("dia", C)``) the module has its own cell and is a one-block stage:
    h = cell(GAP(x), zeros), no state is kept. For a stage of n blocks use
    :func:`make_dia_stage` (or pass one ``cell`` and one ``state`` to the n modules with
    ``index`` 0..n-1), and run the blocks in order in each forward. The shared cell is a
    submodule of each of the n modules (tied weights, as in weight tying): ``parameters()``
    yields it once; ``state_dict()`` lists it under each block's prefix.

    Activation checkpointing: checkpoint whole stages, not single blocks (recomputing one block
    in the backward pass runs it out of turn, which raises the error below).

    The official code always allocates the zero state on the GPU; here it is created like the
    input (any device and dtype). The official CIFAR bottleneck applies the attention to the
    output of the last BN and adds the shortcut after it, as done here by placing the module on
    the residual branch.

    Args:
        channels: C.
        rd_ratio: reduction of the cell's MLPs (default 1/4); rd_channels: their hidden width.
        act_layer: the MLPs' activation (default ``"relu"``). These three build a new cell and
            are ignored when ``cell`` is given.
        cell: a :class:`DIALSTMCell` shared with the other blocks of the stage (default: a new
            one).
        state: the stage's :class:`DIAStageState` (default: a new one-block state).
        index: this block's position in the stage, 0 .. state.num_blocks - 1 (default 0).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 4, rd_channels: int | None = None,
                 act_layer: LayerSpec = "relu", *, cell: DIALSTMCell | None = None,
                 state: DIAStageState | None = None, index: int = 0) -> None:
        super().__init__(channels)
        owner = type(self).__name__
        if cell is None:
            cell = DIALSTMCell(channels, rd_ratio, rd_channels, act_layer)
        elif not isinstance(cell, DIALSTMCell):
            raise InputTypeError(f"{owner}: cell must be a DIALSTMCell, got {type(cell).__name__}")
        elif cell.channels != channels:
            raise InputError(f"{owner}: the cell has {cell.channels} channels, expected {channels}")
        if state is None:
            state = DIAStageState(1)
        elif not isinstance(state, DIAStageState):
            raise InputTypeError(f"{owner}: state must be a DIAStageState, got {type(state).__name__}")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < state.num_blocks:
            raise InputError(
                f"{owner}: index must be an int in [0, {state.num_blocks}) for a stage of "
                f"{state.num_blocks} blocks, got {index!r}"
            )
        self.cell = cell
        self.stage_state = state
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        state = self.stage_state
        z = x.mean((2, 3))  # (B, C)
        if self.index == 0:
            prev = None  # the stage's first block: zero state
        else:
            if state.next_index != self.index or state.h is None or state.c is None:
                raise RuntimeError(
                    f"{self._label()}: block {self.index} of a {state.num_blocks}-block DIA stage "
                    f"ran out of turn (expected block {state.next_index}); run the stage's blocks "
                    "in order, from its first block, in every forward"
                )
            if state.h.shape[0] != x.shape[0]:
                raise RuntimeError(
                    f"{self._label()}: block {self.index} got a batch of {x.shape[0]} but the "
                    f"stage state holds {state.h.shape[0]}"
                )
            prev = (state.h, state.c)
        h, c = self.cell(z, prev)
        if self.index == state.num_blocks - 1:
            state.clear()  # the stage's last block: nothing outlives this forward
        else:
            state.h, state.c, state.next_index = h, c, self.index + 1
        return x * h[:, :, None, None]

    @classmethod
    def make_stage(cls, channels: int, num_blocks: int, **kwargs) -> list[DenseImplicitAttention]:
        """The modules of a stage of ``num_blocks`` blocks sharing one cell: :func:`make_dia_stage`."""
        return make_dia_stage(channels, num_blocks, **kwargs)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, index={self.index}, "
                f"num_blocks={self.stage_state.num_blocks}")


def make_dia_stage(channels: int, num_blocks: int, rd_ratio: float = 1 / 4,
                   rd_channels: int | None = None, act_layer: LayerSpec = "relu"
                   ) -> list[DenseImplicitAttention]:
    """The DIA modules of one stage: one shared :class:`DIALSTMCell`, one :class:`DIAStageState`,
    and one :class:`DenseImplicitAttention` per block (``index`` 0 .. num_blocks - 1).

    Give module ``i`` to block ``i`` of the stage (on its residual branch, after the last BN,
    before the addition) and run the blocks in order: the state starts from zeros at block 0 in
    every forward and is dropped after the last block.

    Example:
        >>> attns = make_dia_stage(64, 3)
        >>> attns[0].cell is attns[2].cell
        True
    """
    owner = "make_dia_stage"
    check_positive_int(num_blocks, "num_blocks", owner)
    cell = DIALSTMCell(channels, rd_ratio, rd_channels, act_layer)
    state = DIAStageState(num_blocks)
    return [DenseImplicitAttention(channels, cell=cell, state=state, index=i) for i in range(num_blocks)]
