"""Bilinear attention (attention in attention), against a direct computation."""

from __future__ import annotations

import pytest
import torch

import chanattn
from chanattn.modules.bilinear import BilinearAttention
from conftest import randomise_norms


def _conv_bn_relu_eval(t: torch.Tensor, seq: torch.nn.Sequential) -> torch.Tensor:
    """A 1x1 conv (no bias), eval BatchNorm and ReLU, written out with einsum."""
    conv, bn = seq[0], seq[1]
    t = torch.einsum("oi,bihw->bohw", conv.weight[:, :, 0, 0], t)
    t = (t - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    t = t * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return t.clamp_min(0)


def _direct(m: BilinearAttention, x: torch.Tensor) -> torch.Tensor:
    rd = m.rd_channels
    z = _conv_bn_relu_eval(x, m.embed)  # phi(x), (B, C', H, W)
    outer = torch.einsum("bihw,bjhw->bijhw", z, z)  # phi phi^T at every position
    # Utri: the entries i <= j, row by row, written as a loop
    xt = torch.stack([outer[:, i, j] for i in range(rd) for j in range(i, rd)], 1)  # (B, D, H, W)
    assert xt.shape[1] == rd * (rd + 1) // 2
    inner = _conv_bn_relu_eval(xt.mean((2, 3), keepdim=True), m.inner)  # omega(GAP(x~))
    per_position = _conv_bn_relu_eval(xt, m.outer)  # varphi(x~)
    return x * torch.sigmoid(inner * per_position)


def test_bilinear_defaults_and_kind():
    assert chanattn.module_info("bilinear").kind == "hybrid"
    m = chanattn.create("bilinear", 256)
    assert isinstance(m, BilinearAttention)
    assert m.rd_channels == 16 and m.bilinear_channels == 136
    assert m.inner[0].in_channels == 136 and m.inner[0].out_channels == 256
    assert m.outer[0].in_channels == 136 and m.outer[0].out_channels == 256


def test_embedding_width_cap_and_overrides():
    assert BilinearAttention(480).rd_channels == 30  # the reference placement is not capped
    assert BilinearAttention(2048).rd_channels == 32
    assert BilinearAttention(2048).bilinear_channels == 32 * 33 // 2
    assert BilinearAttention(2048, rd_max=None).rd_channels == 128
    assert BilinearAttention(2048, rd_channels=8).rd_channels == 8
    assert BilinearAttention(16).rd_channels == 1
    with pytest.raises(ValueError, match=r"BilinearAttention.*rd_max"):
        BilinearAttention(64, rd_max=0)


@pytest.mark.parametrize("c,rd", [(32, None), (12, 3)])
def test_bilinear_matches_a_direct_computation(c, rd):
    torch.manual_seed(0)
    m = BilinearAttention(c, rd_channels=rd).double()
    randomise_norms(m)
    m.eval()
    x = torch.randn(2, c, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _direct(m, x))


def test_the_factor_varies_over_channels_and_positions_and_lies_in_half_to_one():
    torch.manual_seed(0)
    m = BilinearAttention(32, rd_channels=4)
    randomise_norms(m)
    m.eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        a = m.attention(x)
    assert a.shape == (2, 32, 6, 6)
    assert (a >= 0.5).all() and (a < 1).all()  # sigmoid of a product of two ReLU outputs
    assert a.std(dim=(2, 3)).max() > 1e-3  # not a channel gate
    assert a.std(dim=1).max() > 1e-3  # not a spatial gate
    # with identity activations the gate can fall below 0.5
    m2 = BilinearAttention(32, rd_channels=4, act_layer="identity")
    randomise_norms(m2)
    with torch.no_grad():
        assert (m2.eval().attention(x) < 0.5).any()


def test_training_needs_a_batch_of_two():
    m = BilinearAttention(32).train()
    with pytest.raises(ValueError, match=r"BilinearAttention.*batch"):
        m(torch.randn(1, 32, 4, 4))
    assert m.eval()(torch.randn(1, 32, 4, 4)).shape == (1, 32, 4, 4)


def test_triangle_indices_are_buffers_outside_the_state_dict():
    """rows/cols follow the module (device, to_empty) and are in no state dict (checkpoints keep
    their keys); torch.compile traces them without dynamo's lru_cache warning."""
    import warnings

    import torch._dynamo

    m = chanattn.create("bilinear", 64)
    rows, cols = torch.triu_indices(m.rd_channels, m.rd_channels)
    assert torch.equal(m.rows, rows) and torch.equal(m.cols, cols)
    assert {"rows", "cols"} <= {n for n, _ in m.named_buffers()}
    assert not [k for k in m.state_dict() if k.split(".")[-1] in ("rows", "cols")]
    meta = chanattn.create("bilinear", 64, device="meta")
    meta.to_empty(device="cpu")  # uninitialised memory, then recomputed in place
    assert torch.equal(meta.rows, rows) and torch.equal(meta.cols, cols)
    meta.rows.zero_()
    meta.init_non_persistent_buffers()  # timm's hook (reinit_non_persistent_buffers)
    assert torch.equal(meta.rows, rows)
    x = torch.randn(2, 64, 5, 5)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.testing.assert_close(torch.compile(m.eval(), backend="eager")(x), m(x))
    assert not [w for w in caught if "lru_cache" in str(w.message)]
