"""GSoP block and GSoP-Net2's covariance-pooling head, against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.errors import InputError
from chanattn.modules.gsop import GSoP, GSoPHead
from conftest import randomise_norms
from test_covariance import _eigh_sqrt


def _bn_eval(t: torch.Tensor, bn: torch.nn.BatchNorm2d, dim: int = 1) -> torch.Tensor:
    """Eval-mode BatchNorm over ``dim``, written out."""
    shape = [1] * t.dim()
    shape[dim] = -1
    mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (t - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def _direct_gsop(m: GSoP, x: torch.Tensor) -> torch.Tensor:
    """The GSoP block in eval mode, with loops and einsum, from the module's parameters."""
    b, c = x.shape[:2]
    rd = m.rd_channels
    z = torch.einsum("oc,bchw->bohw", m.conv_reduce.weight[:, :, 0, 0], x.clamp_min(0))
    z = z + m.conv_reduce.bias.view(1, -1, 1, 1)
    z = _bn_eval(z, m.bn_reduce).clamp_min(0)
    factors = []
    for i in range(b):
        cov = torch.cov(z[i].reshape(rd, -1), correction=0)  # (c', c')
        cov = _bn_eval(cov, m.row_bn, dim=0)  # row r normalised by the statistics of row r
        rows = []
        for r in range(rd):  # row-wise convolution: 4 filters see row r only
            for k in range(4):
                o = 4 * r + k
                rows.append((m.row_conv.weight[o, 0, :, 0] * cov[r]).sum() + m.row_conv.bias[o])
        v = torch.stack(rows)  # (4c',)
        s = m.fc.weight[:, :, 0, 0] @ v + m.fc.bias  # (C,)
        factors.append(torch.sigmoid(s))
    return x * torch.stack(factors).view(b, c, 1, 1)


def test_gsop_defaults():
    m = chanattn.create("gsop", 256)
    assert isinstance(m, GSoP)
    assert m.rd_channels == 128
    assert m.row_conv.groups == 128 and m.row_conv.out_channels == 512
    assert tuple(m.row_conv.kernel_size) == (128, 1)
    assert m.fc.in_channels == 512 and m.fc.out_channels == 256
    assert chanattn.module_info("gsop").kind == "channel"


@pytest.mark.parametrize("c,rd,hw", [(12, 5, (4, 6)), (8, 16, (5, 5))])  # c' < C and c' > C
def test_gsop_matches_a_direct_computation(c, rd, hw):
    torch.manual_seed(0)
    m = GSoP(c, rd_channels=rd).double()
    randomise_norms(m)
    m.eval()
    x = torch.randn(2, c, *hw, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _direct_gsop(m, x))


def test_gsop_is_finite_at_one_position_and_with_small_channels():
    m = GSoP(4)  # the default c' = 128 exceeds C = 4
    x = torch.randn(2, 4, 1, 1)
    assert torch.isfinite(m.train()(x)).all()
    randomise_norms(m)
    assert torch.isfinite(m.eval()(x)).all()


def test_gsop_options():
    x = torch.randn(2, 16, 7, 7)
    m = GSoP(16, rd_channels=8, stride=2, act_layer=lambda: torch.nn.LeakyReLU(0.1))
    assert isinstance(m.act, torch.nn.LeakyReLU)
    assert m(x).shape == x.shape
    # without the input ReLU, the sign of the input reaches the covariance
    m1, m2 = GSoP(16, rd_channels=8, pre_act=True).eval(), GSoP(16, rd_channels=8, pre_act=False).eval()
    m2.load_state_dict(m1.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m1(x.clamp_min(0)), m2(x.clamp_min(0)))
        assert not torch.allclose(m1(x), m2(x))


def test_gsop_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"GSoP.*rd_channels.*0"):
        GSoP(16, rd_channels=0)
    with pytest.raises(ValueError, match=r"GSoP.*stride"):
        GSoP(16, stride=0)


# ---------------------------------------------------------------- the head

def test_head_shape_and_finite():
    head = GSoPHead(32)
    assert head.rd_channels == 256 and head.num_iters == 3
    assert head.out_features == 256 * 257 // 2
    x = torch.randn(2, 32, 7, 7)
    f = head.train()(x)
    assert f.shape == (2, head.out_features) and torch.isfinite(f).all()
    randomise_norms(head)
    head.eval()
    for size in ((7, 7), (1, 1), (3, 5)):
        f = head(torch.randn(2, 32, *size))
        assert f.shape == (2, head.out_features) and torch.isfinite(f).all()
    logits = torch.nn.Linear(head.out_features, 10)(f)
    assert logits.shape == (2, 10)


def test_head_matches_covariance_square_root_upper_triangle():
    torch.manual_seed(0)
    head = GSoPHead(6, rd_channels=4, num_iters=20).double()
    randomise_norms(head)
    head.eval()
    x = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        z = F.relu(_bn_eval(F.conv2d(x, head.conv_reduce.weight), head.bn_reduce))
        expected = []
        for b in range(3):
            root = _eigh_sqrt(torch.cov(z[b].reshape(4, -1), correction=0))
            expected.append(torch.stack([root[i, j] for i in range(4) for j in range(i, 4)]))
        torch.testing.assert_close(head(x), torch.stack(expected), rtol=1e-6, atol=1e-8)


def test_head_lower_triangle_is_the_official_order():
    """triangle="lower": the official code's order (MPN-COV's ``Triuvec`` in
    ZilinGao/Global-Second-order-Pooling-Convolutional-Networks,
    torchvision/models/MPNCOV/python/MPNCOV.py: the lower triangle row by row) against the
    eigendecomposition's root written out; and the same features as the default upper order,
    permuted (the root is symmetric)."""
    torch.manual_seed(0)
    lower = GSoPHead(6, rd_channels=4, num_iters=20, triangle="lower").double()
    randomise_norms(lower)
    lower.eval()
    upper = GSoPHead(6, rd_channels=4, num_iters=20).double().eval()
    upper.load_state_dict(lower.state_dict())
    assert upper.triangle == "upper" and lower.triangle == "lower"
    x = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        z = F.relu(_bn_eval(F.conv2d(x, lower.conv_reduce.weight), lower.bn_reduce))
        expected = []
        for b in range(3):
            root = _eigh_sqrt(torch.cov(z[b].reshape(4, -1), correction=0))
            expected.append(torch.stack([root[i, j] for i in range(4) for j in range(i + 1)]))
        f_lower, f_upper = lower(x), upper(x)
    torch.testing.assert_close(f_lower, torch.stack(expected), rtol=1e-6, atol=1e-8)
    # position of (i, j), i <= j, in the upper order; the lower order lists (i, j), j <= i
    upper_pos = {(i, j): k for k, (i, j) in enumerate((i, j) for i in range(4) for j in range(i, 4))}
    perm = [upper_pos[(j, i)] for i in range(4) for j in range(i + 1)]
    assert perm != list(range(len(perm)))  # the orders differ
    torch.testing.assert_close(f_lower, f_upper[:, perm])


def test_head_triangle_through_create_model_and_bad_values():
    model = chanattn.create_model("resnet8", head="gsop", head_kwargs={"rd_channels": 8, "triangle": "lower"})
    assert model.pool.triangle == "lower" and model.fc.in_features == 36
    assert chanattn.create_model("resnet8", head="gsop").pool.triangle == "upper"
    for bad in ("diagonal", None, 1):
        expected = rf"^GSoPHead: triangle must be one of 'upper', 'lower', got {bad!r}$"
        with pytest.raises(InputError, match=expected):
            GSoPHead(16, triangle=bad)


def test_head_gradient_is_finite():
    head = GSoPHead(16, rd_channels=8)
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    head(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_head_input_errors():
    head = GSoPHead(16, rd_channels=8).eval()
    with pytest.raises(ValueError, match=r"GSoPHead.*16.*17"):
        head(torch.randn(2, 17, 4, 4))
    with pytest.raises(ValueError, match=r"GSoPHead.*4-D"):
        head(torch.randn(16, 4, 4))
    with pytest.raises(TypeError, match=r"GSoPHead.*floating"):
        head(torch.ones(2, 16, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"GSoPHead.*num_iters"):
        GSoPHead(16, num_iters=0)


def test_row_conv_einsum_equals_the_grouped_convolution():
    """GSoP's row-wise convolution is computed as an einsum; it must equal the grouped Conv2d it
    holds the weights of, in value and in gradient."""
    torch.manual_seed(0)
    g = chanattn.create("gsop", 32, rd_channels=16).double()
    cov = torch.randn(3, 16, 16, 1, dtype=torch.double, requires_grad=True)
    a = g._row_conv(cov)
    b = g.row_conv(cov)
    assert a.shape == b.shape == (3, 64, 1, 1)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.square().sum(), [cov, g.row_conv.weight, g.row_conv.bias])
    gb = torch.autograd.grad(b.square().sum(), [cov, g.row_conv.weight, g.row_conv.bias])
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)
