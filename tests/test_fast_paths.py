"""The building blocks of the fast implementations (chanattn.fast.functional: the chunked loops, the
windowed max, the chunking policy), the chunked loops run against the formula, what the training
paths of the gate modules save, and the dispatch under tracing and compiling. Every implementation's
values and gradients against the formula: tests/test_fast_contract.py."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import chanattn
import chanattn.fast.functional as CF
from chanattn.bench.core import saved_multiple
from chanattn.fast import explain, implementations
from conftest import formula, randomise_norms

#: the implementations built on the chunked loops of chanattn.fast.functional
CHUNKED = [impl for impl in implementations() if impl.name.endswith(".pytorch") and impl.autograd is not True]


@pytest.fixture
def chunked(monkeypatch):
    """Every CPU loop runs one sample per chunk (the loops run with one thread)."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(CF, "WHOLE_BYTES", 0)
    monkeypatch.setattr(CF, "CHUNK_BYTES", 1)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("impl", CHUNKED, ids=lambda i: i.name)
def test_chunked_loops_equal_the_formula(impl, chunked):
    name = impl.module.registry_name
    for shape in [(3, 48, 13, 13), (2, 32, 16, 16), (2, 48, 7, 9)]:
        m = chanattn.create(name, shape[1]).eval()
        randomise_norms(m)
        x = torch.randn(shape)
        for layout in (torch.contiguous_format, torch.channels_last):
            xl = x.contiguous(memory_format=layout)
            with torch.no_grad():
                assert impl.applies(m, xl)[0]
                y, ref = impl.run(m, xl), formula(m)(xl)
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))


def test_inference_does_not_touch_the_input():
    m = chanattn.create("cbam", 64).eval()
    x = torch.randn(4, 64, 9, 9)
    x0 = x.clone()
    for impl in implementations(m):
        with torch.no_grad():
            if impl.applies(m, x)[0]:
                impl.run(m, x)
    assert torch.equal(x, x0), "the in-place steps of the fast paths must not touch the input"


@pytest.mark.parametrize("shape", [(3, 7), (5, 4, 49), (2, 3, 40), (4, 33, 2, 63), (6, 32), (2, 9, 144),
                                   (3, 9)])
def test_windowed_amax(shape):
    v = torch.randn(shape)
    for d in range(v.dim()):
        assert torch.equal(CF._amax(v, d), v.amax(d))
        out = torch.empty_like(v.amax(d))
        CF._amax(v, d, out=out)
        assert torch.equal(out, v.amax(d))
    strided = torch.randn((*shape[:-1], shape[-1] + 3))[..., 1:shape[-1] + 1]
    for d in range(v.dim()):
        assert torch.equal(CF._amax(strided, d), strided.amax(d))


def test_chunking_policy(monkeypatch):
    """Chunks only on CPU with one thread and above WHOLE_BYTES; the whole batch otherwise."""
    x = torch.empty(6, 4, 8, 8)  # 1 KiB a sample
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert CF._batch_chunks(x) == [(0, 6)]  # small: one piece
        monkeypatch.setattr(CF, "WHOLE_BYTES", 0)
        monkeypatch.setattr(CF, "CHUNK_BYTES", 2048)
        assert CF._batch_chunks(x) == [(0, 2), (2, 4), (4, 6)]
        torch.set_num_threads(2)
        assert CF._batch_chunks(x) == [(0, 6)]
    finally:
        torch.set_num_threads(threads)


# -- memory: what a training forward saves for backward ------------------------------------------


# name: the most each saves, in input sizes, at C = 64 (x itself and the (B, C) / (B, 1, H, W)
# maps; for sk, x and each branch's convolution output and activation output).
SAVED_AT_MOST = {
    "se": 1.05, "se_var1": 1.05, "se_var2": 1.05, "se_var3": 1.05, "rcan_ca": 1.05, "eca": 1.05,
    "cbam_channel": 1.05, "cbam_spatial": 1.1, "sk": 5.05,
}


@pytest.mark.parametrize("name", sorted(SAVED_AT_MOST))
def test_training_saves_at_most_what_is_stated(name):
    m = chanattn.create(name, 64).train()
    x = torch.randn(4, 64, 16, 16)
    saved = saved_multiple(m, x)
    assert saved <= SAVED_AT_MOST[name], f"{name} saves {saved:.3f} input sizes for backward"
    if name == "sk":
        # the formula stacks the branches, a copy of both that autograd keeps as well
        assert saved_multiple(m, x, formula(m)) >= 6.9


# -- tracing and compiling ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cbam", "sk", "se"])
def test_compiled_training_step_matches(name):
    """A module's forward (the dispatch, then the formula) under torch.compile(fullgraph): the
    fast paths leave the formula to the compiler."""
    torch._dynamo.reset()
    m = chanattn.create(name, 32).train()
    x = torch.randn(8, 32, 9, 9)
    ref_m = copy.deepcopy(m)
    xa = x.clone().requires_grad_(True)
    ya = formula(ref_m)(xa)
    ga = torch.autograd.grad(ya.sum(), [xa, *ref_m.parameters()])
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    xb = x.clone().requires_grad_(True)
    yb = compiled(xb)
    gb = torch.autograd.grad(yb.sum(), [xb, *m.parameters()])
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    for a, b in zip(gb, ga):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_trace_does_not_bake_in_the_batch():
    m = chanattn.create("cbam", 32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, torch.randn(2, 32, 8, 8), check_trace=False)
    x = torch.randn(5, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), m(x), rtol=1e-5, atol=1e-6)


def test_tracing_records_the_formula():
    m = chanattn.create("se", 16).eval()
    seen = []

    def probe(mod, args):
        seen.append(explain(mod, args[0]).chosen)

    m.register_forward_pre_hook(probe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(m, torch.randn(2, 16, 4, 4), check_trace=False)
    assert seen == ["formula"]
    with torch.no_grad():
        m(torch.randn(2, 16, 4, 4))
    assert seen[-1] == "se.matmul"
