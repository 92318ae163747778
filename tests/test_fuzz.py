"""Property-based tests (hypothesis) of every registered module over batch 1-4, the channel counts
it accepts, H and W from 1 to 33, float32 / float64 / bfloat16, train and eval mode: output shape
and dtype, finite outputs, the invariants of the module's kind, NaN and Inf propagation, and clean
errors (a ValueError naming the module) for the inputs a module does not take.

Deterministic (``derandomize=True``): the same cases on every run. ``CHANATTN_FUZZ_REPORT=FILE``
appends the number of cases each test ran to FILE (one JSON line per test module run).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chanattn
from conftest import ALL_MODULES, in_input_order, randomise_norms

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# |y / base - factor| tolerance of the kind invariants, relative, per dtype (y is rounded once).
KIND_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2}

# Where a module may turn a non-finite input into a finite output: (the values, why). Every other
# module must give a non-finite output for a NaN, +Inf or -Inf anywhere in its input, and a gate
# y = x * a must give it at the very position (Inf * a is Inf, or NaN where a = 0). NaN propagates
# through every module.
MAY_MASK: dict[str, tuple[tuple[float, ...], str]] = {
    "sk": ((math.inf, -math.inf),
           "sk is conv-BN-ReLU branches, not a gate: an Inf meets the 3x3 kernels' weights, and where "
           "every product is -Inf after BN (certain on a 1 x 1 map with a depthwise grouping and "
           "negative weights: one weight per branch), the ReLU gives its limit 0 and the output is "
           "finite"),
    "splat": ((math.inf, -math.inf),
              "splat, like sk, is a grouped convolution, BN and ReLU, not a gate: an Inf meets the kernels' "
              "weights, and where every product is -Inf after BN (certain on a 1 x 1 map at C = 2: one "
              "weight per split and channel), the ReLU gives its limit 0 and the output is finite"),
    "encnet": ((-math.inf,),
               "y = relu(x * (1 + gamma)), 1 + gamma >= 1: the final ReLU maps a -Inf to its limit 0 "
               "(documented in ContextEncoding); the context path starts with conv-BN-ReLU, which does "
               "the same where the convolution keeps the sign (certain at C = 1); +Inf and NaN "
               "propagate"),
}
# Modules whose output is not y = x * a at each position (a factor of the input), so the non-finite
# value may move: any non-finite output counts.
NOT_A_GATE = {"c3", "sk", "splat", "encnet"}

CASES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_case_counts():
    yield
    path = os.environ.get("CHANATTN_FUZZ_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"total": sum(CASES.values()), **CASES}) + "\n")


def _module(name: str, channels: int, dtype: torch.dtype, train: bool, seed: int, **kwargs):
    torch.manual_seed(seed)
    m = chanattn.create(name, channels, **kwargs)
    randomise_norms(m, seed=seed)
    return m.to(dtype).train(train)


def _input(shape, dtype: torch.dtype, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = torch.sign(x) * (x.abs() + 0.1) * scale  # |x| >= 0.1 * scale: y / x is well defined
    return x.to(dtype)


def _batch_stats_error(m, name: str, exc: ValueError, b: int) -> bool:
    """The documented refusal: training a BatchNorm on one value per channel (batch 1)."""
    return (m.training and b == 1 and type(m).__name__ in str(exc)
            and "BatchNorm" in str(exc) and "eval()" in str(exc))


def _check_kind(name: str, m, x: torch.Tensor, y: torch.Tensor) -> None:
    kind = chanattn.module_info(name).kind
    y = in_input_order(m, y)  # sa: the gate before its channel shuffle
    base = torch.relu(x) if getattr(m, "final_relu", False) else x
    valid = base != 0
    yd, bd = y.double(), base.double()
    assert (yd[~valid] == 0).all()
    factor = torch.where(valid, yd / torch.where(valid, bd, 1.0), torch.nan)
    rtol = KIND_RTOL[x.dtype]
    if kind in ("channel", "spatial"):
        dims = (2, 3) if kind == "channel" else (1,)
        ref = factor.nanmean(dims, keepdim=True).expand_as(factor)
        err = (factor - ref).abs()[valid]
        bound = (rtol * ref.abs() + 1e-30)[valid]
        per = "channel" if kind == "channel" else "position"
        assert (err <= bound).all(), f"{name}: not one factor per {per}"
    if kind in ("channel", "spatial", "hybrid"):
        # a gate y = x * a(x): zero wherever the input is zero
        mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) < 0.3
        with torch.no_grad():
            y0 = in_input_order(m, m(x.masked_fill(mask, 0.0)))
        assert torch.isfinite(y0).all() and (y0[mask] == 0).all(), f"{name}: not zero where x is zero"


@pytest.mark.parametrize("name", ALL_MODULES)
@SETTINGS
@given(data=st.data())
def test_valid_inputs(name, data):
    """Shape, dtype, finiteness, kind invariants and non-finite propagation on inputs the module takes."""
    mult = chanattn.module_info(name).channel_multiple
    c = data.draw(st.integers(1, 64 // mult), label="channels / multiple") * mult
    b = data.draw(st.integers(1, 4), label="batch")
    h = data.draw(st.integers(1, 33), label="H")
    w = data.draw(st.integers(1, 33), label="W")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    train = data.draw(st.booleans(), label="train")
    scale = data.draw(st.sampled_from([1e-2, 1.0, 1e2]), label="scale")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    CASES["valid"] += 1
    m = _module(name, c, dtype, train, seed)
    x = _input((b, c, h, w), dtype, scale, seed)
    with torch.no_grad():
        try:
            y = m(x)
        except ValueError as exc:
            assert _batch_stats_error(m, name, exc, b), f"{name}: refused a valid input: {exc}"
            CASES["refused (BatchNorm on batch 1, documented)"] += 1
            return
    if m.training and b == 1:
        assert not getattr(m, "batchnorm_on_pooled", False), f"{name}: trained BN on one value per channel"
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all(), f"{name}: non-finite output for a finite input"
    _check_kind(name, m, x, y)

    # one NaN, +Inf or -Inf at a random position
    value = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]), label="non-finite value")
    pos = tuple(data.draw(st.integers(0, n - 1), label=f"pos[{i}]") for i, n in enumerate(x.shape))
    bad = x.clone()
    bad[pos] = value
    CASES[f"non-finite {value}"] += 1
    with torch.no_grad():
        yb = in_input_order(m, m(bad))
    if name in NOT_A_GATE:
        finite = bool(torch.isfinite(yb).all())
    else:
        finite = bool(torch.isfinite(yb[pos]))
    if finite:
        assert value in MAY_MASK.get(name, ((),))[0], (
            f"{name}: a {value} at {pos} gives a finite output (silent masking)")
        CASES["non-finite masked (documented)"] += 1


@pytest.mark.parametrize("name", ALL_MODULES)
@SETTINGS
@given(data=st.data())
def test_rejected_inputs_raise_a_clean_error(name, data):
    """Inputs a module does not take: an empty map, another channel count than the module's, a
    wrong number of dimensions, an integer dtype; and, at construction, a channel count that is not
    a positive multiple of the module's ``channel_multiple`` (0, or a non-multiple for ``fca``)."""
    info = chanattn.module_info(name)
    mult = info.channel_multiple
    c = data.draw(st.integers(1, 64 // mult)) * mult
    b = data.draw(st.integers(1, 4))
    h, w = data.draw(st.integers(1, 33)), data.draw(st.integers(1, 33))
    fault = data.draw(st.sampled_from(["empty H", "empty W", "channels", "bad channel count", "dims", "int"]))
    CASES[f"rejected: {fault}"] += 1
    cls = info.cls.__name__
    if fault == "bad channel count":
        bad_c = data.draw(st.integers(1, 64).filter(lambda v: v % mult != 0)) if mult > 1 else 0
        with pytest.raises(ValueError, match=re.escape(cls)):
            chanattn.create(name, bad_c)
        return
    m = _module(name, c, torch.float32, data.draw(st.booleans()), 0)
    if fault == "empty H":
        x = torch.randn(b, c, 0, w)
    elif fault == "empty W":
        x = torch.randn(b, c, h, 0)
    elif fault == "channels":
        other = data.draw(st.integers(1, 80).filter(lambda v: v != c))
        x = torch.randn(b, other, h, w)
    elif fault == "dims":
        x = torch.randn(*data.draw(st.sampled_from([(c, h, w), (b, c, h, w, 2), (b, c)])))
    else:
        x = torch.ones(b, c, h, w, dtype=torch.int64)
    error = TypeError if fault == "int" else ValueError
    with pytest.raises(error, match=re.escape(cls)) as info_exc:
        m(x)
    assert "\n" not in str(info_exc.value)


@pytest.mark.parametrize("name", ["ge_theta", "ge_theta_plus"])
@SETTINGS
@given(data=st.data())
def test_exact_size_rule_of_a_global_gather(name, data):
    """GE-θ / GE-θ+ with a global extent take only the H x W they were built for."""
    built = (data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12)))
    h, w = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    CASES["exact size"] += 1
    m = chanattn.create(name, 16, extent=0, spatial_size=built).eval()
    x = torch.randn(2, 16, h, w)
    if (h, w) == built:
        assert m(x).shape == x.shape
    else:
        with pytest.raises(ValueError, match=rf"{m.__class__.__name__}.*built for inputs of H x W = "
                                             rf"{built[0]} x {built[1]}, got {h} x {w}"):
            m(x)
