"""The contract every registered module meets: one parametrized suite over every name, so that no
module can exist untested."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.func import functional_call

import chanattn
from conftest import ALL_MODULES, channels_for, in_input_order, min_size, randomise_norms

# (C, H, W): square and not, odd sizes, and 1 x 1 where a module takes it.
SHAPES = [(16, 1, 1), (32, 7, 9), (16, 13, 13), (64, 9, 7), (16, 2, 3)]


def _build(name: str, c: int, **kwargs) -> torch.nn.Module:
    return chanattn.create(name, channels_for(name, c), **kwargs)


def _input(m, b: int, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(b, m.channels, h, w, dtype=dtype)



def _eval_module(name: str, c: int = 32) -> torch.nn.Module:
    m = _build(name, c)
    randomise_norms(m)
    return m.eval()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ALL_MODULES)
def test_shape_and_finite(name, shape):
    c, h, w = shape
    if min(h, w) < min_size(name):
        pytest.skip(f"{name} needs H, W >= {min_size(name)}")
    m = _build(name, c)
    x = _input(m, 2, h, w)
    y = m.train()(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    randomise_norms(m)
    y = m.eval()(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL_MODULES)
def test_every_parameter_and_the_input_get_a_gradient(name):
    m = _build(name, 32).train()
    x = _input(m, 3, 9, 9).requires_grad_(True)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ALL_MODULES)
def test_eval_output_independent_of_the_batch(name):
    m = _eval_module(name)
    x = _input(m, 4, 8, 8)
    with torch.no_grad():
        full = m(x)
        for i in range(4):
            torch.testing.assert_close(m(x[i:i + 1]), full[i:i + 1], rtol=1e-5, atol=1e-6)
        # and swapping the others does not change sample 0
        other = torch.cat([x[:1], torch.randn_like(x[1:]) * 3])
        torch.testing.assert_close(m(other)[:1], full[:1], rtol=1e-5, atol=1e-6)


def _nonzero_input(m, b: int, h: int, w: int) -> torch.Tensor:
    x = _input(m, b, h, w)
    return torch.sign(x) * (x.abs() + 0.1)  # |x| >= 0.1: y / x is well defined


@pytest.mark.parametrize("name", ALL_MODULES)
def test_kind_invariant(name):
    kind = chanattn.module_info(name).kind
    m = _eval_module(name)
    x = _nonzero_input(m, 2, 6, 5)
    # a module with a final ReLU (encnet: relu(x + x * gamma) = relu(x) * (1 + gamma)) is a factor
    # on relu(x), zero where x < 0
    base = torch.relu(x) if getattr(m, "final_relu", False) else x
    with torch.no_grad():
        y = in_input_order(m, m(x))  # sa: its channel shuffle undone
    valid = base != 0
    assert (y[~valid] == 0).all()
    factor = torch.where(valid, y / torch.where(valid, base, 1.0), torch.nan)
    if kind == "channel":
        # one factor per (b, c): constant over H and W
        ref = factor.nanmean((2, 3), keepdim=True).expand_as(factor)
        torch.testing.assert_close(factor[valid], ref[valid], rtol=1e-5, atol=1e-6)
    elif kind == "spatial":
        # one factor per (b, h, w): constant over C
        ref = factor.nanmean(1, keepdim=True).expand_as(factor)
        torch.testing.assert_close(factor[valid], ref[valid], rtol=1e-5, atol=1e-6)
    else:
        assert kind in ("hybrid", "branch", "communication")
    if kind in ("branch", "communication"):
        pytest.skip(f"a {kind} module is not a gate on its input; no factor invariant")
    # a gate: y = x * a(x), so wherever x is 0, y is 0 (whatever a(x) is)
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.3
    x0 = x.masked_fill(mask, 0.0)
    with torch.no_grad():
        y0 = in_input_order(m, m(x0))
    assert torch.isfinite(y0).all()
    assert (y0[mask] == 0).all(), f"{name}: output not zero where the input is zero"


@pytest.mark.parametrize("name", ALL_MODULES)
def test_torch_compile_eager_backend_matches(name):
    torch._dynamo.reset()
    m = _eval_module(name)
    x = _input(m, 2, 7, 7)
    compiled = torch.compile(m, backend="eager", fullgraph=True)  # no graph breaks
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_jit_trace_matches(name):
    m = _eval_module(name)
    x = _input(m, 2, 7, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(m, x, check_trace=False)
    x2 = _input(m, 2, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(traced(x2), m(x2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_channels_last_input_gives_the_same_output(name):
    m = _eval_module(name)
    x = _input(m, 2, 9, 7)
    with torch.no_grad():
        ref = m(x)
        out = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_float64_and_gradcheck(name):
    m = _build(name, 16).double()
    randomise_norms(m)
    m.eval()
    x = _input(m, 2, 3, 3, dtype=torch.float64)
    assert m(x).dtype == torch.float64
    params = {k: v.detach().clone().requires_grad_(True) for k, v in m.named_parameters()}
    names = list(params)

    def f(inp, *ps):
        return functional_call(m, dict(zip(names, ps)), (inp,))

    inputs = (x.requires_grad_(True), *params.values())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_bad_input_errors_name_the_module(name):
    m = _build(name, 32).eval()
    cls = type(m).__name__
    c = m.channels
    h = max(5, min_size(name))
    with pytest.raises(ValueError, match=rf"{cls}.*{c}.*{c + 1}"):
        m(torch.randn(2, c + 1, h, h))
    with pytest.raises(ValueError, match=rf"{cls}.*4-D.*3-D"):
        m(torch.randn(c, h, h))
    with pytest.raises(TypeError, match=rf"{cls}.*floating.*torch\.int64"):
        m(torch.ones(2, c, h, h, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape(cls)):
        chanattn.create(name, 0)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_registry_metadata(name):
    info = chanattn.module_info(name)
    assert info.name == name
    assert info.kind in chanattn.KINDS
    assert info.title and info.paper
    assert 2010 <= info.year <= 2026
    m = chanattn.create(name, channels_for(name, 32))
    assert isinstance(m, chanattn.AttentionModule) and isinstance(m, info.cls)
    assert type(m).registry_name == name and m.kind == info.kind
    assert type(m).__doc__ and len(type(m).__doc__) > 40, f"{name}: the class needs a docstring"
    assert isinstance(m.no_weight_decay(), set)
    assert m.no_weight_decay() <= {k for k, _ in m.named_parameters()}
