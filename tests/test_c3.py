"""C3: encode each channel's map, message passing with a softmax over negative squared distances,
decode, add back, ReLU; checked against a direct per-channel computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chanattn
from chanattn.modules.c3 import CrossChannelCommunication


def _mlp(v, seq):
    """Linear -> ReLU -> Linear on one vector, with the layers' weights."""
    return seq[2].weight @ torch.relu(seq[0].weight @ v + seq[0].bias) + seq[2].bias


def _direct(m: CrossChannelCommunication, x: torch.Tensor) -> torch.Tensor:
    """The C3 message for an input already on the module's grid, one channel at a time.

    Channel j of a group receives sum_i a_ji f_i, a_ji = exp(s_ji) / sum_k exp(s_jk), with
    s_ji = -(mean f_j - mean f_i)^2 ("mean") or -||f_j - f_i||^2 ("full")."""
    b, c, h, w = x.shape
    size = c // m.groups
    out = torch.empty_like(x)
    for n in range(b):
        for g in range(m.groups):
            chans = range(g * size, (g + 1) * size)
            f = {i: _mlp(x[n, i].reshape(-1), m.encoder) for i in chans}
            for j in chans:
                if m.distance == "mean":
                    s = torch.stack([-(f[j].mean() - f[i].mean()) ** 2 for i in chans])
                else:
                    s = torch.stack([-((f[j] - f[i]) ** 2).sum() for i in chans])
                a = torch.exp(s - s.max())
                a = a / a.sum()
                msg = sum(a[k] * f[i] for k, i in enumerate(chans))
                out[n, j] = _mlp(msg, m.decoder).reshape(h, w)
    return out


def _build(c=6, **kw) -> CrossChannelCommunication:
    torch.manual_seed(0)
    m = CrossChannelCommunication(c, **kw).double()
    with torch.no_grad():  # larger encodings than at init, so that the softmax is far from uniform
        m.encoder[2].weight.mul_(3)
    return m


@pytest.mark.parametrize("distance", ["mean", "full"])
@pytest.mark.parametrize("groups", [1, 2])
def test_matches_a_direct_computation_on_the_grid(distance, groups):
    m = _build(6, spatial_size=(3, 2), groups=groups, distance=distance)
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), torch.relu(x + _direct(m, x)))


@pytest.mark.parametrize("resample", ["area", "nearest"])
@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (8, 8)])
def test_other_sizes_are_resampled_to_the_grid_and_back(resample, hw):
    m = _build(4, spatial_size=4, resample=resample)
    x = torch.randn(2, 4, *hw, dtype=torch.float64)
    if resample == "area":
        def resize(t, size):
            return F.adaptive_avg_pool2d(t, size)
    else:
        def resize(t, size):
            return F.interpolate(t, size=size, mode="nearest")
    with torch.no_grad():
        message = resize(_direct(m, resize(x, (4, 4))), hw)
        torch.testing.assert_close(m(x), torch.relu(x + message))


def test_one_by_one_input_gets_the_mean_of_the_decoded_map():
    m = _build(4, spatial_size=3)
    x = torch.randn(2, 4, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        spread = x.expand(2, 4, 3, 3)  # adaptive pooling of a 1x1 map to 3x3 repeats it
        message = _direct(m, spread).mean((2, 3), keepdim=True)
        torch.testing.assert_close(m(x), torch.relu(x + message))


def test_output_is_relu_of_input_plus_message():
    m = chanattn.create("c3", 16)
    with torch.no_grad():  # a decoder whose output is zero: no message, the output is relu(x)
        m.decoder[2].weight.zero_()
        m.decoder[2].bias.zero_()
    x = torch.randn(2, 16, 7, 5)
    torch.testing.assert_close(m(x), torch.relu(x))
    with torch.no_grad():  # a constant message of 1: relu(x + 1)
        m.decoder[2].bias.fill_(1.0)
    torch.testing.assert_close(m(x), torch.relu(x + 1))


def test_groups_communicate_only_within_themselves():
    torch.manual_seed(1)
    m = CrossChannelCommunication(8, spatial_size=4, rd_channels=8, groups=2).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    y = m(x)
    r = torch.randn_like(y)
    (grad_second,) = torch.autograd.grad((y[:, 4:] * r[:, 4:]).sum(), x, retain_graph=True)
    assert (grad_second[:, :4] == 0).all()  # the second group does not hear the first
    assert grad_second[:, 4:].abs().sum() > 0
    (grad_others,) = torch.autograd.grad((y[:, [0, 2, 3]] * r[:, [0, 2, 3]]).sum(), x)
    assert grad_others[:, 1].abs().sum() > 0  # within the first group, channel 1 is heard


def test_reference_groups_and_cifar_parameter_count():
    # the official rule: groups of 512 channels
    assert CrossChannelCommunication(256).groups == 1
    assert CrossChannelCommunication(512).groups == 1
    assert CrossChannelCommunication(1024).groups == 2
    assert CrossChannelCommunication(2048).groups == 4
    # CIFAR-100 ResNets of the reference: one block before each stage on grids 16, 16, 8 with
    # reduction 8; each block has two MLPs A -> A/8 -> A, with biases
    total = sum(
        sum(p.numel() for p in CrossChannelCommunication(c, spatial_size=s).parameters())
        for c, s in [(16, 16), (16, 16), (32, 8)]
    )
    expected = sum(2 * (a * (a // 8) + a // 8 + (a // 8) * a + a) for a in (256, 256, 64))
    assert total == expected == 68_880  # the paper's ResNet-20: 0.28 M -> 0.35 M


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"CrossChannelCommunication.*groups.*divide.*12.*5"):
        CrossChannelCommunication(12, groups=5)
    with pytest.raises(ValueError, match=r"CrossChannelCommunication.*distance.*'cos'"):
        CrossChannelCommunication(12, distance="cos")
    with pytest.raises(ValueError, match=r"CrossChannelCommunication.*resample.*'bilinear'"):
        CrossChannelCommunication(12, resample="bilinear")
    with pytest.raises(ValueError, match=r"CrossChannelCommunication.*spatial_size"):
        CrossChannelCommunication(12, spatial_size=(4, 0))
