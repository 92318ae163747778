"""CBAM's spatial gate where the paper and the official code differ, each a choice: the pool order,
the BN's momentum, and the zero initialisation of the BN's weight in the official ResNets.

The official facts are from Jongchan/attention-module (the authors' code): MODELS/cbam.py
(``BasicConv`` builds the spatial BN with ``momentum=0.01``; ``ChannelPool`` stacks [max, mean])
and MODELS/model_resnet.py (``ResNet.__init__`` sets every BN weight whose key contains
"SpatialGate" to 0). The paper's order [mean; max] is its Sec. 3, "Spatial attention module"."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.errors import InputError
from chanattn.fast import implementations, native
from conftest import formula, randomise_norms


def _spatial_of(m):
    return m.spatial if isinstance(m, chanattn.modules.cbam.CBAM) else m


def _official_spatial(sp, x: torch.Tensor) -> torch.Tensor:
    """The official SpatialGate written out: [max_C; mean_C], the 7x7 convolution, the BN (eval:
    running statistics), the sigmoid."""
    pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
    z = F.conv2d(pooled, sp.conv.weight, padding=sp.kernel_size // 2)
    bn = sp.bn
    z = (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    z = z * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return x * torch.sigmoid(z)


def test_defaults_are_stated_choices():
    for name in ("cbam", "cbam_spatial"):
        sp = _spatial_of(chanattn.create(name, 16))
        assert sp.pool_order == "mean_max"  # the paper's order
        assert sp.bn.momentum == 0.01  # the official BasicConv's
        assert torch.equal(sp.bn.weight, torch.ones(1))  # PyTorch's init outside a model
        assert not sp.zero_init_spatial_bn
    assert _spatial_of(chanattn.create("cbam", 16, bn_momentum=0.1)).bn.momentum == 0.1
    assert _spatial_of(chanattn.create("cbam", 16, bn_momentum=None)).bn.momentum is None


@pytest.mark.parametrize("name", ["cbam_spatial", "cbam"])
def test_max_mean_is_the_official_channel_pool(name):
    """pool_order="max_mean" on every path (the formula, and each fast implementation registered for
    the class wherever it applies: the native operator where built and the PyTorch paths in eval,
    with and without autograd) is the official [max; mean] stacking with the same weights, and the
    paper's order with the convolution's two input channels swapped."""
    torch.manual_seed(0)
    ours = chanattn.create(name, 24, pool_order="max_mean")
    randomise_norms(ours)
    x = torch.randn(3, 24, 12, 11)
    ours.eval()
    if name == "cbam":
        inner = formula(ours.channel)(x)
        expected = _official_spatial(ours.spatial, inner)
    else:
        expected = _official_spatial(ours, x)
    with torch.no_grad():
        torch.testing.assert_close(formula(ours)(x), expected)
        torch.testing.assert_close(ours(x), expected)  # the path the call takes
    xg = x.clone().requires_grad_(True)
    torch.testing.assert_close(ours(xg), expected)  # with autograd
    ran = []
    for impl in implementations(ours):
        for grad in (False, True):
            probe = x.clone().requires_grad_(grad)
            with torch.set_grad_enabled(grad):
                if impl.applies(ours, probe)[0]:
                    torch.testing.assert_close(impl.run(ours, probe), expected, msg=impl.name)
                    ran.append(impl.name)
    # cbam's own PyTorch paths were deleted (benchmarks/README.md, "Fast paths"): its formula runs
    # the spatial stage's, checked above by the call with autograd
    assert (name == "cbam" or f"{name}.pytorch" in ran) and (f"{name}.native" in ran) == native.available()
    # the paper's order with the weights swapped: the same module
    paper = chanattn.create(name, 24)
    state = copy.deepcopy(ours.state_dict())
    key = "spatial.conv.weight" if name == "cbam" else "conv.weight"
    state[key] = state[key].flip(1)
    paper.load_state_dict(state)
    paper.eval()
    with torch.no_grad():
        torch.testing.assert_close(paper(x), expected)
    # the two orders differ with the same weights (the option does something)
    other = chanattn.create(name, 24)
    other.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x), expected, atol=1e-4)


@pytest.mark.parametrize("pool_order", ["mean_max", "max_mean"])
def test_training_step_matches_reference_and_moves_running_stats_by_the_momentum(pool_order):
    torch.manual_seed(1)
    m = chanattn.create("cbam", 16, pool_order=pool_order).train()
    ref = copy.deepcopy(m)
    x = torch.randn(4, 16, 9, 9)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = m(xa), formula(ref)(xb)
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for p, q in zip(m.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    # running mean after one step from 0: momentum (0.01) times the batch mean of the conv output
    with torch.no_grad():
        y = x * m.channel.attention(x)
        pooled = torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)
        if pool_order == "max_mean":
            pooled = pooled.flip(1)
        batch_mean = m.spatial.conv(pooled).mean()
    torch.testing.assert_close(m.spatial.bn.running_mean, 0.01 * batch_mean.view(1))


@pytest.mark.parametrize("name", ["cbam", "cbam_spatial"])
def test_models_zero_init_the_spatial_bn_as_the_official_resnet(name):
    model = chanattn.create_model("resnet18", attn=name, num_classes=5)
    spatial = [m for m in model.modules() if isinstance(m, chanattn.modules.cbam.CBAMSpatialAttention)]
    assert len(spatial) == 8  # one per basic block of ResNet-18
    for m in spatial:
        assert torch.equal(m.bn.weight.detach(), torch.zeros(1)) and m.zero_init_spatial_bn
    # the gate starts at sigmoid(0) = 1/2 everywhere (BN's bias 0)
    sp = spatial[0].eval()
    x = torch.randn(2, sp.channels, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(sp.attention(x), torch.full((2, 1, 5, 5), 0.5))
    # turned off by attn_kwargs; the other backbones and attach follow the same registry fact
    off = chanattn.create_model("resnet18", attn=name, attn_kwargs={"zero_init_spatial_bn": False})
    assert all(torch.equal(m.bn.weight.detach(), torch.ones(1)) for m in off.modules()
               if isinstance(m, chanattn.modules.cbam.CBAMSpatialAttention))
    cifar = chanattn.create_model("resnet20", attn=name)
    assert all(torch.equal(m.bn.weight.detach(), torch.zeros(1)) for m in cifar.modules()
               if isinstance(m, chanattn.modules.cbam.CBAMSpatialAttention))


def test_attach_zero_inits_too():
    import torchvision

    model = chanattn.attach(torchvision.models.resnet18(num_classes=3), "cbam")
    spatial = [m for m in model.modules() if isinstance(m, chanattn.modules.cbam.CBAMSpatialAttention)]
    assert spatial and all(torch.equal(m.bn.weight.detach(), torch.zeros(1)) for m in spatial)


@pytest.mark.parametrize("name", ["cbam", "cbam_spatial"])
@pytest.mark.parametrize(("option", "value", "expected"), [
    ("pool_order", "avg_max", r"pool_order must be one of 'mean_max', 'max_mean', got 'avg_max'"),
    ("pool_order", 1, r"pool_order must be one of 'mean_max', 'max_mean', got 1"),
    ("bn_momentum", 1.5, r"bn_momentum must be a number in \[0, 1\] or None, got 1.5"),
    ("bn_momentum", "0.1", r"bn_momentum must be a number in \[0, 1\] or None, got '0.1'"),
    ("zero_init_spatial_bn", 1, r"zero_init_spatial_bn must be True or False, got 1"),
])
def test_bad_option_values_are_clear_errors(name, option, value, expected):
    owner = {"cbam": "CBAM", "cbam_spatial": "CBAMSpatialAttention"}[name]
    with pytest.raises(InputError, match=rf"^{owner}: {expected}$"):
        chanattn.create(name, 16, **{option: value})
