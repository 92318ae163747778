"""The contract of every registered fast implementation (chanattn.fast), derived from the registry:
on inputs where it applies (built from its declared conditions: autograd recording or not, dtypes,
devices, layouts, the module's mode, and the modules and options it names), its output equals the
formula's (the module under ``chanattn.fast_paths(False)``), and so do the gradients w.r.t. the input
and every parameter and BatchNorm's running statistics after the call, in train and eval mode.

Tolerances (conftest.assert_matches_reference): float64 to 1e-9; in float32 the output to 1e-5 and
every result as close to the float64 result as the formula's own float32 result is (within 4x), or
within 1e-4 of its norm; bfloat16 the same against 3e-2.
"""

from __future__ import annotations

import copy

import pytest
import torch

import chanattn
from chanattn.fast import explain, fast_paths, implementations
from conftest import ALL_MODULES, assert_matches_reference, channels_for, min_size, randomise_norms

IMPLS = {impl.name: impl for impl in implementations()}
# (B, H, W) at C = 32: odd sizes, H * W a multiple of 32 (the windowed max), a 1 x 1 map; the batch
# of one runs where the module can take it (not training a BatchNorm over pooled features)
SHAPES = [(2, 7, 9), (3, 16, 16), (2, 1, 1), (1, 5, 6)]
CHANNELS = 32
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
BUFFER_TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 1e-6), torch.bfloat16: (2e-2, 1e-3)}


def _cases(impl) -> list[tuple[str, dict]]:
    """The registry names whose class runs this implementation (defaults), and its examples."""
    names = [n for n in chanattn.list_modules() if impl in implementations(chanattn.module_info(n).cls)]
    return [(n, {}) for n in names] + [(n, dict(kw)) for n, kw in impl.examples]


def _dtypes(impl) -> list[torch.dtype]:
    return list(impl.dtypes) if impl.dtypes is not None else [torch.float32, torch.float64, torch.bfloat16]


def _layouts(impl) -> list[torch.memory_format]:
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    return [formats[n] for n in (impl.layouts or ("contiguous", "channels_last"))]


def _modes(impl) -> list[bool]:
    return [impl.module_mode == "train"] if impl.module_mode is not None else [True, False]


def _grads(impl) -> list[bool]:
    return [impl.autograd] if impl.autograd is not None else [True, False]


def _run(m: torch.nn.Module, fn, x: torch.Tensor, grad: bool, gout: torch.Tensor | None):
    """[output, grads of x and the parameters] (the output only without autograd), and gout."""
    if not grad:
        with torch.no_grad():
            return [fn(x)], gout
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    if gout is None:
        gout = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    params = [p for p in m.parameters() if p.requires_grad]
    return [y.detach(), *torch.autograd.grad(y, [x, *params], gout.to(y.dtype))], gout


def _check(impl, name: str, kwargs: dict, shape: tuple[int, int, int], dtype: torch.dtype,
           layout: torch.memory_format, train: bool, grad: bool) -> None:
    b, h, w = shape
    torch.manual_seed(b * 100 + h)
    m = chanattn.create(name, CHANNELS, **kwargs)
    randomise_norms(m)
    m = m.to(dtype).train(train)
    x = torch.randn(b, CHANNELS, h, w).to(dtype).contiguous(memory_format=layout)
    where = (f"{impl.name} on {name} {kwargs}, {tuple(x.shape)}, {str(dtype)[6:]}, "
             f"{'channels_last' if layout == torch.channels_last else 'contiguous'}, "
             f"{'train' if train else 'eval'}, {'autograd' if grad else 'no autograd'}")
    probe = x.detach().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        ok, why = impl.applies(m, probe)
        assert ok, f"{where}: does not apply ({why}) on an input built from its declared conditions"
        # the module's own call takes an implementation that applies (this one or an earlier one)
        chosen = explain(m, probe).chosen
        assert chosen in IMPLS and IMPLS[chosen].applies(m, probe)[0], f"{where}: the call takes {chosen}"
    fast_m, ref_m, truth_m = copy.deepcopy(m), copy.deepcopy(m), copy.deepcopy(m).double()
    fast, gout = _run(fast_m, lambda t: impl.run(fast_m, t), x, grad, None)

    def formula(mod):
        def run(t):
            with fast_paths(False):
                return mod(t)
        return run

    ref, _ = _run(ref_m, formula(ref_m), x, grad, gout)
    labels = ["output"] + (["input grad"] + [f"grad of {n}" for n, p in m.named_parameters()
                                             if p.requires_grad] if grad else [])
    assert len(fast) == len(ref) == len(labels), where
    assert_matches_reference(where, labels, fast, ref,
                             lambda: _run(truth_m, formula(truth_m), x.double(), grad,
                                          None if gout is None else gout)[0],
                             tol=TOL.get(dtype, 0.0), scale_floor=1e-2)
    # the running statistics moved as the formula moved them (to the dtype's rounding)
    rtol, atol = BUFFER_TOL[dtype]
    for (n, a), (_, r) in zip(fast_m.named_buffers(), ref_m.named_buffers(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, r, rtol=rtol, atol=atol, msg=f"{where}: buffer {n}")
        else:
            assert torch.equal(a, r), f"{where}: buffer {n}"


def _trains_batch_of_one(name: str, kwargs: dict, train: bool, shape) -> bool:
    info = chanattn.module_info(name)
    return not (train and shape[0] == 1 and getattr(info.cls, "batchnorm_on_pooled", False))


def _takes(name: str, kwargs: dict, train: bool, shape) -> bool:
    """Shapes a module takes in this mode: training a BatchNorm needs more than one value per
    channel (a batch of one on a 1 x 1 map, or over pooled features, is refused as by the formula)."""
    b, h, w = shape
    if train and b * h * w == 1:
        return False
    if train and name == "cbam_spatial" and b == 1 and h * w == 1:
        return False
    return _trains_batch_of_one(name, kwargs, train, shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("impl_name", sorted(IMPLS))
def test_fast_implementation_equals_the_formula(impl_name, dtype):
    impl = IMPLS[impl_name]
    if dtype not in _dtypes(impl):
        pytest.skip(f"{impl_name} takes {impl.dtypes}")
    if impl.requires is not None and not impl.requires():
        pytest.skip(f"{impl_name}: {impl.requires_why()}")
    if dtype == torch.bfloat16 and impl.purpose == "memory":
        pytest.skip("the training paths that recompute are checked bit for bit in bfloat16 "
                    "(test_saved_activations.py)")
    checked = 0
    for name, kwargs in _cases(impl):
        for shape in SHAPES:
            for train in _modes(impl):
                if not _takes(name, kwargs, train, shape):
                    continue
                if dtype == torch.bfloat16 and train and shape[1] * shape[2] == 1:
                    continue  # a BatchNorm over two values amplifies bfloat16's rounding past any bound
                for grad in _grads(impl):
                    for layout in _layouts(impl):
                        _check(impl, name, kwargs, shape, dtype, layout, train, grad)
                        checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", ALL_MODULES)
def test_every_module_runs_its_formula_or_a_checked_implementation(name):
    """Every registered module, in train and eval mode, with and without autograd: a call takes
    either the formula (then it is the formula: equal bit for bit to the call under
    ``fast_paths(False)``) or an implementation registered for its class, which
    test_fast_implementation_equals_the_formula checks on this name (``_cases``)."""
    info = chanattn.module_info(name)
    own = implementations(info.cls)
    for impl in own:
        assert name in [n for n, _ in _cases(impl)], f"{name}: {impl.name} is not checked on it"
    c, side = channels_for(name, CHANNELS), max(min_size(name), 7)
    torch.manual_seed(3)
    m = chanattn.create(name, c)
    randomise_norms(m)
    x = torch.randn(2, c, side, side + 1)
    for train in (True, False):
        for grad in (True, False):
            m.train(train)
            with torch.set_grad_enabled(grad):
                chosen = explain(m, x).chosen
                if chosen != "formula":
                    assert IMPLS.get(chosen) in own, f"{name}: the call takes {chosen}, not its own"
                    continue
                a, b = copy.deepcopy(m), copy.deepcopy(m)
                torch.manual_seed(4)  # the same dropout masks (bat)
                y = a(x)
                torch.manual_seed(4)
                with fast_paths(False):
                    ref = b(x)
            assert torch.equal(y, ref), f"{name} ({'train' if train else 'eval'}): not the formula"
    if not own:  # no fast implementation: every call is the formula
        assert explain(m.eval(), x).chosen == "formula"


def test_every_implementation_has_a_case_and_a_purpose():
    assert IMPLS, "no fast implementation is registered"
    for impl in IMPLS.values():
        assert _cases(impl), f"{impl.name}: no registry name runs it"
        assert impl.purpose in ("speed", "memory") and impl.summary


def test_switch_runs_the_formula_and_restores():
    m = chanattn.create("se", 32).eval()
    x = torch.randn(2, 32, 5, 5)
    with torch.no_grad():
        assert explain(m, x).chosen == "se.matmul"
        with fast_paths(False):
            assert explain(m, x).chosen == "formula"
            assert "fast paths are off" in str(explain(m, x))
            with fast_paths(True):
                assert explain(m, x).chosen == "se.matmul"
            assert explain(m, x).chosen == "formula"
        assert explain(m, x).chosen == "se.matmul"
        fast_paths(False)
        try:
            assert explain(m, x).chosen == "formula"
        finally:
            fast_paths(True)
        assert chanattn.fast.enabled()
