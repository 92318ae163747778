"""The fast paths of se/ese/eca/cbam/sk (and the modules sharing their code) against each module's
``forward_reference``: outputs and gradients (input and every parameter) across shapes, dtypes,
memory layouts, train and eval, with and without the chunked loops; and what training saves."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import chanattn
import chanattn.functional as CF
from conftest import assert_matches_reference, randomise_norms, saved_multiple

# (registry name, kwargs); channel counts come from the shapes below.
MODULES = {
    "se": ("se", {}),
    "se-divisor": ("se", {"rd_divisor": 8}),
    "rcan_ca": ("rcan_ca", {}),
    "se_var1": ("se_var1", {}),
    "se_var2": ("se_var2", {"bias": True}),
    "ese": ("ese", {"gate_layer": "hard_sigmoid"}),
    "eca": ("eca", {}),
    "eca-k7": ("eca", {"kernel_size": 7}),
    "cbam_channel": ("cbam_channel", {}),
    "cbam_spatial": ("cbam_spatial", {}),
    "cbam": ("cbam", {}),
    "cbam-nonorm": ("cbam", {"norm": False, "bias": False}),
    "sk": ("sk", {}),
    "sk-3branch-stride2": ("sk", {"num_branches": 3, "stride": 2, "out_channels": 32}),
}

# B, C, H, W: odd sizes, maps whose H * W is or is not a multiple of 32 (7x9 = 63, 7x7 = 49,
# 16x16 = 256), one of at least 100 positions, 1x1; C = 48 is not a multiple of 32 (the
# channels-last max over C); a batch of one in eval only.
SHAPES = [(2, 48, 7, 9), (3, 48, 13, 13), (2, 32, 16, 16), (2, 48, 1, 1), (1, 48, 7, 7)]
# Outputs in float32 agree with the reference to 1e-5 (relative to the largest value). Gradients are
# sums over the batch and map with cancellation, where two correct summation orders differ by more
# than that, and in bfloat16 a ReLU or max can switch at a near-tie. So each result (output and
# every gradient) is compared with the float64 one in the 2-norm: its error must be at most TOL of
# the norm, or at most 4x the error of the reference run in the same dtype.
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _run(m: torch.nn.Module, fn, x: torch.Tensor, gout: torch.Tensor | None):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    if gout is None:
        gout = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)
    params = [p for _, p in m.named_parameters()]
    grads = torch.autograd.grad(y, [x, *params], gout)
    return y.detach(), list(grads), gout


def _compare(name: str, m: torch.nn.Module, x: torch.Tensor, train: bool) -> None:
    m.train(train)
    truth_m = copy.deepcopy(m).double()  # before any training step moves the running statistics
    fast = _run(m, m.forward, x, None)
    ref = _run(m, m.forward_reference, x, fast[2])
    labels = ["output", "input grad"] + [f"grad of {n}" for n, _ in m.named_parameters()]
    where = f"{name}, {tuple(x.shape)}, {x.dtype}, train={train}, channels_last={not x.is_contiguous()}"

    def truth():
        t = _run(truth_m, truth_m.forward_reference, x.double(), fast[2].double())
        return [t[0], *t[1]]

    assert_matches_reference(where, labels, [fast[0], *fast[1]], [ref[0], *ref[1]], truth,
                             tol=TOL.get(x.dtype, 0.0))


@pytest.fixture(params=["whole", "chunked"])
def chunking(request, monkeypatch):
    """'chunked' makes every CPU loop run one sample per chunk (loops run with one thread)."""
    threads = torch.get_num_threads()
    if request.param == "chunked":
        monkeypatch.setattr(CF, "WHOLE_BYTES", 0)
        monkeypatch.setattr(CF, "CHUNK_BYTES", 1)
        torch.set_num_threads(1)
    yield request.param
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", sorted(MODULES))
def test_fast_path_matches_reference(case, dtype, chunking):
    name, kwargs = MODULES[case]
    g = torch.Generator().manual_seed(1)
    for b, c, h, w in SHAPES:
        m = chanattn.create(name, c, **kwargs)
        randomise_norms(m)  # non-trivial BatchNorm statistics and affine parameters
        m = m.to(dtype)
        x = torch.randn(b, c, h, w, generator=g).to(dtype)
        for layout in (torch.contiguous_format, torch.channels_last):
            xl = x.contiguous(memory_format=layout)
            for train in (False, True):
                if train and b == 1:
                    continue
                _compare(case, m, xl, train)


def test_inference_output_equals_reference_bitwise_where_it_should():
    """Without autograd the SE-family fast path is the same arithmetic as the reference except for
    the 1x1 layers as matrix products; outputs agree to float rounding, and the input is untouched."""
    m = chanattn.create("cbam", 64).eval()
    x = torch.randn(4, 64, 9, 9)
    x0 = x.clone()
    with torch.no_grad():
        y = m(x)
    assert torch.equal(x, x0), "the in-place steps of the fast path must not touch the input"
    torch.testing.assert_close(y, m.forward_reference(x), rtol=1e-5, atol=1e-6)


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


# -- memory: what a training forward saves for backward ------------------------------------------


# name: the most each saves, in input sizes, at C = 64 (x itself and the (B, C) / (B, 1, H, W)
# maps; for sk, x and each branch's convolution output and activation output).
SAVED_AT_MOST = {
    "se": 1.05, "se_var1": 1.05, "se_var2": 1.05, "se_var3": 1.05, "rcan_ca": 1.05, "eca": 1.05,
    "cbam_channel": 1.05, "cbam_spatial": 1.1, "cbam": 1.12, "sk": 5.05,
}


@pytest.mark.parametrize("name", sorted(SAVED_AT_MOST))
def test_training_saves_at_most_what_is_stated(name):
    m = chanattn.create(name, 64).train()
    x = torch.randn(4, 64, 16, 16)
    saved = saved_multiple(m, x)
    assert saved <= SAVED_AT_MOST[name], f"{name} saves {saved:.3f} input sizes for backward"
    if name == "cbam":
        # the plain formula keeps x * channel_gate as well: the custom Functions save it twice less
        assert saved_multiple(m, x, m.forward_reference) >= 1.9
    if name == "sk":
        # the reference stacks the branches, a copy of both that autograd keeps as well
        assert saved_multiple(m, x, m.forward_reference) >= 6.9


# -- tracing and compiling ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cbam", "sk"])
def test_compiled_training_step_matches(name):
    """The autograd Functions (cbam) and the in-place steps (sk) under torch.compile(fullgraph)."""
    torch._dynamo.reset()
    m = chanattn.create(name, 32).train()
    x = torch.randn(8, 32, 9, 9)
    ya, ga, _ = _run(m, m.forward_reference, x, None)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    yb, gb, _ = _run(m, compiled, x, None)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    for a, b in zip(gb, ga):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_trace_does_not_bake_in_the_batch(chunking):
    m = chanattn.create("cbam", 32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, torch.randn(2, 32, 8, 8), check_trace=False)
    x = torch.randn(5, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), m(x), rtol=1e-5, atol=1e-6)


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
