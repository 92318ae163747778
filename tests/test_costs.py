"""chanattn.count_macs counts every module's work whichever path a call takes: on the formula
(``chanattn.fast_paths(False)``), equal for every registered module to what the flop counter sees on
the formula, and equal to what it sees on the fast path the module takes (CBAM's native operator
through its FLOP formula) except where a fast path computes a small layer element-wise; and a
model's count grows by its attention modules' counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import chanattn
from chanattn.fast import explain
from conftest import ALL_MODULES, channels_for, min_size, randomise_norms

#: fast paths that compute a layer element-wise (the counter sees no multiply-add there), and how
#: many multiply-adds of the formula they leave uncounted for an input of (B, C, H, W)
ELEMENTWISE = {
    "se_var2.affine": lambda m, b, c: b * c,  # the depthwise 1x1 layer as a per-channel product
    "eca.shifted_sums": lambda m, b, c: b * c * m.kernel_size,  # the 1-D convolution as k shifted products
}
COUNTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.LSTMCell, nn.LSTM)


def _flops(m: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ALL_MODULES)
def test_count_macs_counts_every_path(name):
    c = channels_for(name, 32)
    side = max(min_size(name), 9)
    torch.manual_seed(0)
    m = chanattn.create(name, c)
    randomise_norms(m)
    m.eval()
    x = torch.randn(2, c, side, side - 2 if side > min_size(name) + 1 else side)
    with chanattn.fast_paths(False):
        formula = _flops(m, x)
    macs = chanattn.count_macs(m, inputs=x)
    assert macs == formula // 2
    assert m.training is False  # count_macs restores the mode (eval here)
    # the path a call takes (fast paths on, eval, no autograd) counts the same work
    with torch.no_grad():
        chosen = explain(m, x).chosen
    fast = _flops(m, x)
    if chosen in ELEMENTWISE:
        assert formula - fast == 2 * ELEMENTWISE[chosen](m, x.shape[0], c), chosen
    else:
        assert fast == formula, f"{name} via {chosen}: {fast} FLOPs, the formula {formula}"
    if any(isinstance(layer, COUNTED_LAYERS) for layer in m.modules()):
        assert macs > 0, f"{name} has layers with multiply-adds but counts 0"


def test_cbam_counts_its_mlp_and_convolution():
    """The closed form: CBAM's shared MLP on two (B, C) descriptors and its 2 -> 1 7x7 convolution
    at every position (CBAM, ECCV 2018, Sec. 3: the channel MLP C -> C/r -> C, r = 16, and a 7x7
    convolution on the two pooled maps)."""
    m = chanattn.create("cbam", 64).eval()
    b, h, w = 2, 9, 7
    x = torch.randn(b, 64, h, w)
    expected = 2 * b * (64 * 4 + 4 * 64) + b * h * w * 2 * 7 * 7
    assert chanattn.count_macs(m, inputs=x) == expected
    with torch.no_grad():
        assert _flops(m, x) == 2 * expected  # whichever path ran (the native operator where built)


def test_models_count_their_attention_modules():
    for arch, size in (("resnet8", 32), ("resnet50", 64)):
        plain = chanattn.create_model(arch)
        with_cbam = chanattn.create_model(arch, attn="cbam")
        base = chanattn.count_macs(plain, (1, 3, size, size))
        total = chanattn.count_macs(with_cbam, (1, 3, size, size))
        # the difference is the attention modules' own count, at the inputs they receive
        inputs = []
        hooks = [mod.register_forward_pre_hook(lambda mod, args, seen=inputs: seen.append((mod, args[0])))
                 for mod in with_cbam.modules() if isinstance(mod, chanattn.AttentionModule)]
        with torch.no_grad():
            with_cbam.eval()(torch.randn(1, 3, size, size))
        for hk in hooks:
            hk.remove()
        attention = sum(chanattn.count_macs(mod, inputs=t) for mod, t in inputs)
        assert attention > 0 and total == base + attention, arch


def _module_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs per module path (the counter's names, the root's class name first)."""
    with torch.no_grad(), chanattn.fast_paths(False), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return {name.split(".", 1)[1] if "." in name else "": sum(ops.values())
            for name, ops in counter.get_flop_counts().items() if name != "Global"}


@pytest.mark.parametrize("name", ALL_MODULES)
def test_model_counts_every_module(name):
    """Every module in a model (ResNet-8 at 32 x 32, the module's paper placement): the model's count
    is the backbone's, less the layers a module replaces (sk, splat: the 3x3 convolution at the same
    path), plus each attention module's count_macs at the input it receives there."""
    size = 32
    torch.manual_seed(0)
    plain = chanattn.create_model("resnet8")
    model = chanattn.create_model("resnet8", attn=name)
    x = torch.randn(1, 3, size, size)
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []
    paths = {mod: path for path, mod in model.named_modules()}
    outer = [mod for mod in model.modules() if isinstance(mod, chanattn.AttentionModule)
             and not any(isinstance(p, chanattn.AttentionModule) and p is not mod
                         and any(q is mod for q in p.modules()) for p in model.modules())]
    assert outer, f"{name}: no module in the model"
    hooks = [mod.register_forward_pre_hook(lambda mod, args: seen.append((paths[mod], mod, args[0])))
             for mod in outer]
    with torch.no_grad():
        model.eval()(x)
    for hk in hooks:
        hk.remove()
    attention = sum(chanattn.count_macs(mod, inputs=t) for _, mod, t in seen)
    plain_flops = _module_flops(plain, x)
    replaced = sum(plain_flops.get(path, 0) for path, _, _ in seen) // 2
    total = chanattn.count_macs(model, (1, 3, size, size))
    assert total == chanattn.count_macs(plain, (1, 3, size, size)) - replaced + attention, name
    if any(isinstance(layer, COUNTED_LAYERS) for mod in outer for layer in mod.modules()):
        assert attention > 0, f"{name} has layers with multiply-adds but counts 0 in a model"
