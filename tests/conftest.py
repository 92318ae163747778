from __future__ import annotations

import os

import pytest
import torch

import chanattn

# Two cores here: keep each test process on one thread so that pytest-xdist workers do not fight.
torch.set_num_threads(int(os.environ.get("CHANATTN_TEST_THREADS", "1")))

ALL_MODULES = chanattn.list_modules()


def channels_for(name: str, wanted: int) -> int:
    """The smallest channel count >= ``wanted`` that the module accepts."""
    multiple = chanattn.module_info(name).channel_multiple
    return -(-wanted // multiple) * multiple


def min_size(name: str) -> int:
    return chanattn.module_info(name).min_size


def randomise_norms(model: torch.nn.Module, seed: int = 1, affine: bool = True) -> None:
    """Give every BatchNorm non-trivial running statistics (and, with ``affine``, weights and
    biases), so that eval-mode tests do not pass only because BN is the identity at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if affine and mod.affine:
                    mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    mod.bias.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def saved_multiple(m: torch.nn.Module, x: torch.Tensor, forward=None) -> float:
    """Bytes autograd saves in one forward of ``m`` (or ``forward``) on ``x`` requiring grad, one
    count per storage (a view keeps its whole storage alive), parameters and buffers left out, as
    a multiple of x's bytes: what benchmarks/activations.py counts."""
    skip = {t.untyped_storage().data_ptr() for t in [*m.parameters(), *m.buffers()]}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        return t

    x = x.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        (forward or m)(x)
    return sum(storages.values()) / (x.numel() * x.element_size())
