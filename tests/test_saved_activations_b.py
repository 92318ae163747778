"""The training paths of gsop and c3 that save less for backward (autograd Functions in
chanattn.fast and chanattn.fast.recompute) against the formula, beyond the contract of
tests/test_fast_contract.py: frozen parameters or input, BatchNorm variants over several steps,
gradcheck, torch.func; what a training forward saves; and the plain ops wherever autograd does not
record."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import chanattn
from chanattn.bench.core import saved_multiple
from chanattn.fast import c3 as c3_mod
from chanattn.fast import gsop as gsop_mod
from conftest import formula, randomise_norms

# case: (registry name, kwargs). gsop's default c' = 128 is larger than x (the convolution is
# recomputed in the backward); rd_channels=8 and stride 2 make it smaller (its output is kept).
CASES = {
    "gsop": ("gsop", {}),
    "gsop-small-rd": ("gsop", {"rd_channels": 8}),
    "gsop-stride2": ("gsop", {"stride": 2, "rd_channels": 24}),
    "gsop-no-preact": ("gsop", {"pre_act": False, "rd_channels": 20}),
    "c3": ("c3", {}),
    "c3-full": ("c3", {"distance": "full"}),
    "c3-nearest-groups": ("c3", {"resample": "nearest", "groups": 2}),
    "c3-native-size": ("c3", {"spatial_size": (7, 9)}),  # no resampling at 7x9
}

def _run(m: nn.Module, fn, x: torch.Tensor, gout: torch.Tensor | None, x_grad: bool = True):
    x = x.detach().clone().requires_grad_(x_grad)
    y = fn(x)
    if gout is None:
        gout = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)
    wrt = ([x] if x_grad else []) + [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad(y, wrt, gout)
    return y.detach(), list(grads), gout


@pytest.mark.parametrize("name", ["gsop", "c3"])
def test_frozen_parameters_or_input(name):
    """Gradients where only the parameters, or only the input, require them."""
    m = chanattn.create(name, 32).train()
    randomise_norms(m)
    x = torch.randn(3, 32, 7, 7)
    ref_m = copy.deepcopy(m)
    fast = _run(m, m.forward, x, None, x_grad=False)
    ref = _run(ref_m, formula(ref_m), x, fast[2], x_grad=False)
    for a, b in zip([fast[0], *fast[1]], [ref[0], *ref[1]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for mod in (m, ref_m):
        mod.requires_grad_(False)
    fast = _run(m, m.forward, x, None)
    ref = _run(ref_m, formula(ref_m), x, fast[2])
    assert len(fast[1]) == 1
    for a, b in zip([fast[0], *fast[1]], [ref[0], *ref[1]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["momentum-none", "no-running-stats"])
@pytest.mark.parametrize("name", ["gsop"])
def test_batchnorm_variants(name, case):
    """Cumulative running averages (momentum=None) over three steps, and BatchNorms that keep no
    running statistics (batch statistics in eval too): as the plain module."""
    m = chanattn.create(name, 16).double()
    for parent in list(m.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                if case == "momentum-none":
                    child.momentum = None
                else:
                    setattr(parent, key, nn.BatchNorm2d(child.num_features, track_running_stats=False,
                                                        dtype=torch.float64))
    ref_m = copy.deepcopy(m)
    for step in range(3):
        x = torch.randn(2, 16, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        for train in (True, False):
            m.train(train), ref_m.train(train)
            fast = _run(m, m.forward, x, None)
            ref = _run(ref_m, formula(ref_m), x, fast[2])
            for a, b in zip([fast[0], *fast[1]], [ref[0], *ref[1]], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for (na, a), (_, b) in zip(m.named_buffers(), ref_m.named_buffers(), strict=True):
        assert torch.equal(a, b), f"{name}: buffer {na}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_in_training(case):
    name, kwargs = CASES[case]
    m = chanattn.create(name, 16, **kwargs).double().train()
    randomise_norms(m)
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64) if case != "c3-native-size" else \
        torch.randn(2, 16, 7, 9, dtype=torch.float64)
    params = dict(m.named_parameters())

    def f(inp, *ps):
        return torch.func.functional_call(m, dict(zip(params, ps, strict=True)), (inp,))

    inputs = (x.requires_grad_(True), *[p.detach().clone().requires_grad_(True) for p in params.values()])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


# -- where autograd does not record: the plain ops ----------------------------------------------

FUNCTIONS = {
    "gsop": [(gsop_mod, "_ReducedCovariance")],
    "c3": [(c3_mod, "_Communicate"), (c3_mod, "_AreaResize")],
}


def _forbid_functions(monkeypatch, name: str) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an autograd Function ran where autograd does not record")

    for mod, cls in FUNCTIONS[name]:
        monkeypatch.setattr(getattr(mod, cls), "apply", refuse)


@pytest.mark.parametrize("name", ["gsop", "c3"])
def test_plain_ops_without_autograd(name, monkeypatch):
    m = chanattn.create(name, 32).train()
    x = torch.randn(2, 32, 9, 9)
    m_copy = copy.deepcopy(m)
    y_fast = m(x.requires_grad_(True))  # the Functions run here
    _forbid_functions(monkeypatch, name)
    with torch.no_grad():
        y = m_copy(x)  # no_grad in training mode: the plain ops (and the same running statistics)
    torch.testing.assert_close(y, y_fast.detach(), rtol=0, atol=0)
    with torch.no_grad():
        m.eval()(x)
    m.requires_grad_(False)
    m(x.detach())  # nothing requires a gradient
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)  # autocast: the plain ops under autocast's casts


def test_compiled_training_uses_the_plain_ops(monkeypatch):
    torch._dynamo.reset()
    m = chanattn.create("c3", 16).train()
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    ya = formula(m)(x)
    _forbid_functions(monkeypatch, "c3")
    yb = torch.compile(m, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(yb, ya)


def test_double_backward_raises():
    m = chanattn.create("c3", 16).train()
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


# -- what a training forward saves -------------------------------------------------------------


# name: (at most, at least for the formula) at benchmarks/activations.py's two shapes
SAVED = {
    "gsop": {(8, 64, 28, 28): (1.70, 8.6), (8, 256, 14, 14): (2.20, 4.1)},
    "c3": {(8, 64, 28, 28): (1.30, 2.5), (8, 256, 14, 14): (2.10, 5.9)},
}


@pytest.mark.parametrize("name", sorted(SAVED))
def test_training_saves_at_most_what_is_stated(name):
    for shape, (at_most, reference_at_least) in SAVED[name].items():
        torch.manual_seed(0)
        m = chanattn.create(name, shape[1]).train()
        x = torch.randn(shape)
        saved = saved_multiple(m, x)
        assert saved <= at_most, f"{name} at {shape} saves {saved:.3f} input sizes for backward"
        ref = saved_multiple(m, x, formula(m))
        assert ref >= reference_at_least, f"{name} at {shape}: the reference saves {ref:.3f}"


@pytest.mark.parametrize("name", ["gsop", "c3"])
def test_torch_func_grad(name):
    """The Functions define setup_context: ``torch.func.grad`` runs through them (in eval mode;
    in training, BatchNorm's buffer updates are not allowed under the transform, as for the plain
    modules) and gives the reference's gradient."""
    m = chanattn.create(name, 16).double()
    randomise_norms(m)
    m.train(name == "c3")
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    g = torch.func.grad(lambda inp: m(inp).pow(2).sum())(x)
    ref = torch.func.grad(lambda inp: formula(m)(inp).pow(2).sum())(x)
    torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-9)
