"""ECA-NS: per-channel kernels against a loop, the official layout (unfold + depthwise Conv1d),
ECA as the special case of one shared kernel, and the k x C parameters of ECA-Net's Table 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.models import count_params
from chanattn.modules.eca_ns import EfficientChannelAttentionNS


def _loop(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s_i = sum_j w_i^j y_{i + j - (k-1)/2}, zero outside 0 ... C-1 (Eq. 7, centred)."""
    b, c = x.shape[:2]
    k = weight.shape[1]
    y = x.mean((2, 3))
    s = torch.zeros(b, c, dtype=x.dtype)
    for i in range(c):
        for j in range(k):
            n = i + j - (k - 1) // 2
            if 0 <= n < c:
                s[:, i] += weight[i, j] * y[:, n]
    return x * torch.sigmoid(s).view(b, c, 1, 1)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_a_loop(k):
    torch.manual_seed(0)
    m = EfficientChannelAttentionNS(7, kernel_size=k).double()
    x = torch.randn(2, 7, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _loop(x, m.conv.weight.view(7, k)), rtol=1e-12, atol=1e-12)


def test_matches_the_official_unfold_and_depthwise_conv1d():
    # The official eca_ns.py: unfold the pooled (B, 1, 1, C) map with a (1, k) window and padding
    # (k-1)/2, then Conv1d(C, C, k, groups=C) over each channel's window.
    torch.manual_seed(1)
    m = EfficientChannelAttentionNS(10, kernel_size=5)
    x = torch.randn(3, 10, 4, 4)
    y = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
    y = F.unfold(y.transpose(-1, -3), kernel_size=(1, 5), padding=(0, 2))  # (B, k, C)
    s = m.conv(y.transpose(-1, -2))  # (B, C, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * torch.sigmoid(s).unsqueeze(-1), rtol=1e-6, atol=1e-7)


def test_one_shared_kernel_is_eca():
    # Eq. (8): sharing the weights among the channels gives ECA's 1-D convolution (Eq. 9).
    torch.manual_seed(2)
    eca = chanattn.create("eca", 12, kernel_size=3)
    ns = EfficientChannelAttentionNS(12, kernel_size=3)
    with torch.no_grad():
        ns.conv.weight.copy_(eca.conv.weight.view(1, 1, 3).expand(12, 1, 3))
    x = torch.randn(2, 12, 5, 5)
    with torch.no_grad(), chanattn.fast_paths(False):  # ECA's formula
        torch.testing.assert_close(ns(x), eca(x), rtol=1e-6, atol=1e-7)


def test_defaults_and_errors():
    m = chanattn.create("eca_ns", 256)
    assert m.kernel_size == 3 and m.conv.weight.shape == (256, 1, 3) and m.conv.bias is None
    assert chanattn.module_info("eca_ns").kind == "channel"
    assert chanattn.create("eca_ns", 256, kernel_size=None).kernel_size == 5  # ECA's rule
    with pytest.raises(ValueError, match="EfficientChannelAttentionNS: kernel_size must be odd, got 2"):
        chanattn.create("eca_ns", 16, kernel_size=2)


def test_k_times_c_parameters_in_resnet50():
    # ECA-Net, Table 2 (ResNet-50 on ImageNet): ECA-NS has k x C parameters per module (k = 3
    # there, as ECA's), against ECA's k.
    base = count_params(chanattn.create_model("resnet50"))
    widths = [c for n, c in zip((3, 4, 6, 3), (256, 512, 1024, 2048)) for _ in range(n)]
    assert count_params(chanattn.create_model("resnet50", attn="eca_ns")) - base == sum(3 * c for c in widths)


def test_count_macs_is_k_per_channel():
    # Eq. (7): k multiply-adds per channel and sample (the k x C weights of Table 2, each used once)
    m = EfficientChannelAttentionNS(24, kernel_size=5).eval()
    assert chanattn.count_macs(m, inputs=torch.randn(3, 24, 4, 6)) == 3 * 24 * 5
