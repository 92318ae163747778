"""Light CBAM (lcbam): one averaged descriptor per attention, against a direct computation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import chanattn
from chanattn.modules.light_cbam import LightCBAM


def test_against_a_direct_computation():
    torch.manual_seed(0)
    m = LightCBAM(32).double().eval()
    with torch.no_grad():
        m.bn.running_mean.fill_(0.2)
        m.bn.running_var.fill_(1.5)
        m.bn.weight.fill_(0.8)
        m.bn.bias.fill_(-0.1)
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    pooled = (x.mean((2, 3)) + x.amax((2, 3))) / 2  # (B, C)
    h = torch.relu(pooled @ m.fc1.weight.flatten(1).T + m.fc1.bias)
    cg = torch.sigmoid(h @ m.fc2.weight.flatten(1).T + m.fc2.bias).view(2, 32, 1, 1)
    x1 = x * cg
    q = (x1.mean(1, keepdim=True) + x1.amax(1, keepdim=True)) / 2  # (B, 1, H, W)
    v = F.conv2d(q, m.conv.weight, padding=3)
    v = (v - 0.2) / torch.sqrt(torch.tensor(1.5 + m.bn.eps, dtype=torch.float64)) * 0.8 - 0.1
    with torch.no_grad():
        torch.testing.assert_close(m(x), x1 * torch.sigmoid(v))


def test_defaults_and_gate():
    m = chanattn.create("lcbam", 64)
    assert m.rd_channels == 4 and m.fc1.bias is not None and m.conv.weight.shape == (1, 1, 7, 7)
    assert chanattn.module_info("lcbam").kind == "hybrid"
    hard = chanattn.create("lcbam", 16, gate_layer="hard_sigmoid")
    assert isinstance(hard.gate, torch.nn.Hardsigmoid)
