"""SimAM: its factor against the paper's energy function, minimised numerically for every neuron
(least squares over the linear separator (w, b)), and the parameter-free facts of its paper."""

from __future__ import annotations

import math

import pytest
import torch

import chanattn
from chanattn.models import count_macs, count_params
from chanattn.modules.simam import SimAM


def _minimal_energy(t: float, others: torch.Tensor, lam: float) -> float:
    """min over (w, b) of the paper's energy (binary labels, with the regulariser):
    (1 - (w t + b))^2 + mean_i (-1 - (w x_i + b))^2 + lam w^2, solved as weighted least squares."""
    n = others.numel()
    rows = [torch.tensor([t, 1.0], dtype=torch.float64)]
    rows += [torch.stack([o, torch.ones((), dtype=torch.float64)]) / math.sqrt(n) for o in others]
    rows.append(torch.tensor([math.sqrt(lam), 0.0], dtype=torch.float64))
    a = torch.stack(rows)
    y = torch.tensor([1.0] + [-1.0 / math.sqrt(n)] * n + [0.0], dtype=torch.float64)
    theta = torch.linalg.lstsq(a, y.unsqueeze(1)).solution
    return float(((a @ theta).squeeze(1) - y).pow(2).sum())


@pytest.mark.parametrize("lam", [1e-4, 0.1])
def test_closed_form_is_the_minimal_energy_of_each_neuron(lam):
    # The paper's closed form: with the mean and variance of the *other* neurons, the minimum of
    # the energy is 4 (var + lam) / ((t - mu)^2 + 2 var + 2 lam).
    torch.manual_seed(0)
    x = torch.randn(11, dtype=torch.float64) * 1.5 + 0.3
    for k in range(x.numel()):
        t, others = float(x[k]), torch.cat([x[:k], x[k + 1:]])
        mu, var = float(others.mean()), float(others.var(unbiased=False))
        closed = 4 * (var + lam) / ((t - mu) ** 2 + 2 * var + 2 * lam)
        assert _minimal_energy(t, others, lam) == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("lam", [1e-4, 0.1])
def test_factor_is_sigmoid_of_the_inverse_minimal_energy(lam):
    # The module, as the official code, shares one mean and one variance per channel (the mean of
    # all H W neurons, the sum of squares over H W - 1): the minimal energy against
    # "others" that have exactly these statistics (the channel's values rescaled about its mean).
    torch.manual_seed(1)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64) * 2
    m = SimAM(3, e_lambda=lam).double()
    with torch.no_grad():
        y = m(x)
    for b in range(2):
        for c in range(3):
            v = x[b, c].flatten()
            n = v.numel()
            others = v.mean() + (v - v.mean()) * math.sqrt(n / (n - 1))  # biased var = sum sq / (n-1)
            for i in range(n):
                e = _minimal_energy(float(v[i]), others, lam)
                expected = float(v[i]) / (1 + math.exp(-1 / e))
                assert float(y[b, c].flatten()[i]) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_inverse_energy_formula_and_range():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    m = SimAM(4)
    e_inv = m.inverse_energy(x)
    mu = x.mean((2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum((2, 3), keepdim=True) / (5 * 6 - 1)
    torch.testing.assert_close(e_inv, (x - mu) ** 2 / (4 * (var + 1e-4)) + 0.5)
    assert (e_inv >= 0.5).all()


def test_one_by_one_map_gets_the_factor_of_one_half():
    # The official n = H W - 1 is 0 at 1 x 1 (0 / 0 = NaN); here n >= 1 and x - mu = 0.
    x = torch.randn(3, 8, 1, 1)
    torch.testing.assert_close(SimAM(8)(x), x * torch.sigmoid(torch.tensor(0.5)))


def test_no_parameters_and_lambda_checked():
    m = chanattn.create("simam", 64)
    assert list(m.parameters()) == [] and m.e_lambda == 1e-4
    assert chanattn.module_info("simam").kind == "hybrid"
    for bad in (0, -1e-4, "1e-4"):
        with pytest.raises(ValueError, match=r"SimAM: e_lambda must be a positive number"):
            SimAM(8, e_lambda=bad)


def test_resnet50_figures_of_the_official_readme():
    # Official README (github.com/ZjjConan/SimAM, ImageNet table): SimAM-R50 25.56 M parameters,
    # 4.11 G FLOPs, i.e. ResNet-50's own: SimAM adds no parameter and no multiply-add of a
    # convolution or matrix product. The README's 4.11 G is thop's ResNet-50 count; count_macs
    # counts the convolutions and the FC only (4.09 G), the convention of tests/test_models.py.
    base = chanattn.create_model("resnet50")
    model = chanattn.create_model("resnet50", attn="simam")
    assert count_params(model) == count_params(base) == 25_557_032
    assert round(count_params(model) / 1e6, 2) == 25.56
    assert count_macs(model, (1, 3, 224, 224)) == count_macs(base, (1, 3, 224, 224))
