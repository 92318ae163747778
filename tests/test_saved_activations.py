"""What the training paths of sk and encnet (chanattn.fast) save for backward, and that saving
less changes nothing: outputs, gradients and BatchNorm's running statistics bit for bit those of the
plain layers on CPU (float32, float64, bfloat16), the saved bytes against the formula's, the plain
layers wherever they do not apply, and the conv-BN-ReLU Function of chanattn.fast.recompute on its
own. (Values and gradients against the formula for every implementation:
tests/test_fast_contract.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import chanattn
from chanattn.bench.core import saved_multiple
from chanattn.fast import explain, implementations
from chanattn.fast.recompute import conv_bn_relu
from conftest import formula, randomise_norms

# case: (registry name, kwargs, channels, shape (B, H, W))
CASES = {
    "sk": ("sk", {}, 48, (2, 7, 9)),
    "sk-3branch-stride2": ("sk", {"num_branches": 3, "stride": 2, "out_channels": 32}, 48, (2, 9, 7)),
    "encnet": ("encnet", {"num_codes": 8}, 16, (2, 7, 9)),
    "encnet-no-final-relu": ("encnet", {"num_codes": 8, "final_relu": False}, 16, (2, 9, 7)),
}
IMPLS = {impl.name: impl for impl in implementations()}
TRAINING_PATH = {"sk": "sk.recompute", "encnet": "encnet.recompute"}

# The most each saves, in input sizes, at C = 64 (and encnet's K = 32): sk x and each branch's
# convolution output; encnet x, the ReLU's output and the (B, N, K) distances and assignments (K/C each).
SAVED_AT_MOST = {"sk": 3.05, "encnet": 3.15}
# What the plain formula saves (the measurement is sound, and the bound above means something).
REFERENCE_AT_LEAST = {"sk": 6.9, "encnet": 5.5}


def _run(m: nn.Module, fn, x: torch.Tensor, gout: torch.Tensor | None = None):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    if gout is None:
        gout = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads = torch.autograd.grad(y, [x, *m.parameters()], gout.to(y.dtype))
    return [y.detach(), *grads], gout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_for_bit_the_plain_layers(case, dtype):
    """On CPU the Functions change nothing: outputs, gradients and BN buffers are those of the same
    computation by the plain layers (the formula; for sk the branches without the stack, which the
    formula adds in another order), bit for bit, in training and in eval mode with autograd (sk's
    training path needs BN in training mode: in eval mode sk runs its formula under autograd)."""
    name, kwargs, c, (b, h, w) = CASES[case]
    impl = IMPLS[TRAINING_PATH[name]]
    plain = IMPLS["sk.unstacked"].run if name == "sk" else (lambda mod, t: formula(mod)(t))
    torch.manual_seed(5)
    m = chanattn.create(name, c, **kwargs)
    randomise_norms(m)
    m = m.to(dtype)
    x = torch.randn(b, c, h, w).to(dtype)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        for train in (True, False):
            fast_m, plain_m = copy.deepcopy(m).train(train), copy.deepcopy(m).train(train)
            if train or impl.module_mode is None:
                assert impl.applies(fast_m, xl.detach().requires_grad_(True))[0]
                fast, gout = _run(fast_m, lambda t, mod=fast_m: impl.run(mod, t), xl)
            else:  # sk.recompute needs BatchNorm in training mode; in eval, under autograd, the formula
                assert explain(fast_m, xl.detach().requires_grad_(True)).chosen == "formula"
                continue
            plain_out, _ = _run(plain_m, lambda t, mod=plain_m: plain(mod, t), xl, gout)
            labels = ["output", "input grad"] + [f"grad of {n}" for n, _ in m.named_parameters()]
            for label, p, q in zip(labels, fast, plain_out, strict=True):
                assert torch.equal(p, q), f"{case}, {dtype}, {layout}, train={train}: {label}"
            for (n, p), (_, q) in zip(fast_m.named_buffers(), plain_m.named_buffers(), strict=True):
                assert torch.equal(p, q), f"{case}, {dtype}, {layout}, train={train}: {n}"


@pytest.mark.parametrize("name", sorted(SAVED_AT_MOST))
def test_training_saves_at_most_the_stated_bound(name):
    m = chanattn.create(name, 64).train()
    for shape in [(2, 64, 28, 28), (3, 64, 27, 29)]:
        x = torch.randn(shape)
        saved = saved_multiple(m, x)
        assert saved <= SAVED_AT_MOST[name], f"{name} at {shape} saves {saved:.3f} input sizes"
        reference = saved_multiple(m, x, formula(m))
        assert reference >= REFERENCE_AT_LEAST[name], f"{name}: the plain formula saves {reference:.3f}"


@pytest.mark.parametrize("name", ["sk", "encnet"])
def test_plain_ops_without_autograd(name):
    """No grad, or nothing requiring grad: the training path does not apply (encnet runs
    its formula; sk keeps its own inference path)."""
    m = chanattn.create(name, 32).train()
    x = torch.randn(3, 32, 6, 5)
    impl = IMPLS[TRAINING_PATH[name]]
    assert impl.applies(m, x)[0]  # the parameters require grad
    assert explain(m, x).chosen == impl.name
    with torch.no_grad():
        ok, why = impl.applies(m, x)
        assert not ok and "does not record" in why
        if name != "sk":
            assert explain(m, x).chosen == "formula"
    m.requires_grad_(False)
    assert not impl.applies(m, x)[0]  # nothing requires grad: nothing records


@pytest.mark.parametrize("name", ["sk", "encnet"])
def test_backward_twice_with_retained_graph(name):
    """The recomputation runs again on a second backward through the same graph."""
    m = chanattn.create(name, 32).train()
    x = torch.randn(2, 32, 7, 6, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    first = torch.autograd.grad(y, [x, *m.parameters()], g, retain_graph=True)
    second = torch.autograd.grad(y, [x, *m.parameters()], g)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    # and the gradient w.r.t. x alone (the Functions skip what is not needed)
    y = m(x)
    (gx,) = torch.autograd.grad(y, [x], g)
    torch.testing.assert_close(gx, first[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sk", "encnet"])
def test_autocast_runs_the_plain_layers(name):
    """Under autocast the backward's recomputation would not see the casts: the plain layers."""
    m = chanattn.create(name, 32).train()
    x = torch.randn(2, 32, 7, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ok, why = IMPLS[TRAINING_PATH[name]].applies(m, x)
        assert not ok and "autocast" in why
        y = m(x)
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_encoding_layer_product_keeps_no_copy_of_its_input():
    """encnet.recompute's Encoding layer: the same values and gradients as the layer's own forward,
    bit for bit, without the folded copy of its input that autograd keeps for ``x @ d.t()``."""
    from chanattn.fast.encnet import _encoding
    from chanattn.modules.encnet import Encoding

    enc = Encoding(64, num_codes=32)
    x = torch.randn(2, 64, 14, 15)  # contiguous: x @ d.t() on its (B, N, D) view would copy it
    fast, gout = _run(enc, lambda t: _encoding(enc, t), x)
    ref, _ = _run(enc, enc, x, gout)
    for a, b in zip(fast, ref, strict=True):
        assert torch.equal(a, b)
    # x (a view), the (B, N, K) distances and assignments (K/C = 0.5 each), small (B, K) tensors
    assert saved_multiple(enc, x, lambda t: _encoding(enc, t)) < 2.1
    assert saved_multiple(enc, x) > 2.9


@pytest.mark.parametrize("name", ["encnet"])
def test_compiled_training_step_uses_the_plain_ops(name):
    torch._dynamo.reset()
    m = chanattn.create(name, 16).train()
    x = torch.randn(4, 16, 7, 5)
    r = copy.deepcopy(m)
    ref, gout = _run(r, formula(r), x)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    out, _ = _run(m, compiled, x, gout)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- chanattn.fast.recompute.conv_bn_relu on its own-----------------------------------------------

BLOCKS = {
    "3x3": dict(conv=dict(kernel_size=3, padding=1, bias=False), bn={}),
    "grouped-dilated-stride2": dict(conv=dict(kernel_size=3, padding=2, dilation=2, stride=2, groups=4,
                                              bias=True), bn={}),
    "1x1-cumulative-average": dict(conv=dict(kernel_size=1, bias=False), bn=dict(momentum=None)),
    "no-affine": dict(conv=dict(kernel_size=3, padding=1, bias=False), bn=dict(affine=False)),
    "no-running-stats": dict(conv=dict(kernel_size=3, padding=1, bias=True),
                             bn=dict(track_running_stats=False)),
}


@pytest.mark.parametrize("save", ["conv_output", "output"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_conv_bn_relu_matches_the_modules(block, dtype, save):
    spec = BLOCKS[block]
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Conv2d(8, 12, **spec["conv"]), nn.BatchNorm2d(12, **spec["bn"]), nn.ReLU())
    bn = seq[1]
    with torch.no_grad():  # non-trivial statistics and affine parameters, where it has them
        if bn.track_running_stats:
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
    seq = seq.to(dtype)
    x0 = torch.randn(3, 8, 9, 7, dtype=dtype)
    for x in (x0, x0.contiguous(memory_format=torch.channels_last)):
        for train in (True, False):
            a, b = copy.deepcopy(seq).train(train), copy.deepcopy(seq).train(train)
            for _ in range(2):  # two steps: the cumulative average's count, the running statistics
                fast, gout = _run(a, lambda t, a=a: conv_bn_relu(t, a[0], a[1], save=save), x)
                ref, _ = _run(b, b, x, gout)
                for u, v in zip(fast, ref, strict=True):  # on CPU: the same kernels, bit for bit
                    assert torch.equal(u, v), f"{block}, {dtype}, train={train}, save={save}"
                for (n, u), (_, v) in zip(a.named_buffers(), b.named_buffers(), strict=True):
                    assert torch.equal(u, v), f"{block}: {n} after a step"
            # saved: x, and the convolution's or the block's output (12 channels of 8, stride 1 or 2)
            with torch.no_grad():
                out_elems = a[0](x).numel()
            bound = 1.0 + out_elems / x.numel() + 0.05
            saved = saved_multiple(a, x, lambda t, a=a: conv_bn_relu(t, a[0], a[1], save=save))
            assert saved <= bound, f"{block}: saves {saved:.3f} input sizes (bound {bound:.3f})"


def test_conv_bn_relu_single_value_per_channel_is_the_batchnorm_error():
    seq = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()).train()
    x = torch.randn(1, 4, 1, 1, requires_grad=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        seq(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        conv_bn_relu(x, seq[0], seq[1], save="conv_output")
