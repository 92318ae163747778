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


def in_input_order(m: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``y`` with its channels in the input's order, for a module whose output permutes channels
    by a fixed order (``sa``'s channel shuffle: ``m.output_channel_order()``, y[:, j] is channel
    order[j] of x * a): the kind invariants are checked on the gate before the permutation."""
    order = getattr(m, "output_channel_order", None)
    if order is None:
        return y
    return y.index_select(1, torch.argsort(order()).to(y.device))


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


def formula(m: torch.nn.Module):
    """``m``'s formula: a callable that runs ``m`` with every fast implementation off
    (``chanattn.fast_paths(False)``)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with chanattn.fast_paths(False):
            return m(x)
    return run


def assert_matches_reference(where: str, labels, fast, ref, truth, tol: float = 1e-4,
                             scale_floor: float = 1e-6) -> None:
    """A fast path's results (output and gradients, lists in the order of ``labels``) against the
    reference formula's on the same input.

    float64: equal to 1e-9 (relative to each result's largest value). Lower precision: the two
    round differently and gradients are sums with cancellation, so each fast result must be as
    close to the float64 result (``truth()``, a list) as the reference's is (within 4x), or within
    ``tol`` of its 2-norm (at least ``scale_floor``); in float32 the outputs also agree directly to
    1e-5.
    """
    if fast[0].dtype == torch.float64:
        for label, a, b in zip(labels, fast, ref, strict=True):
            scale = max(b.abs().max().item() if b.numel() else 0.0, 1e-3)
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * scale, msg=f"{where}: {label}")
        return
    for label, a, b, t in zip(labels, fast, ref, truth(), strict=True):
        scale = max(torch.linalg.vector_norm(t).item(), scale_floor)
        e_fast = torch.linalg.vector_norm(a.double() - t).item()
        e_ref = torch.linalg.vector_norm(b.double() - t).item()
        assert e_fast <= max(4 * e_ref, tol * scale), (
            f"{where}: {label}: off the float64 result by {e_fast:.3g}, the reference by {e_ref:.3g} "
            f"(scale {scale:.3g})")
    if fast[0].dtype == torch.float32:
        scale = max(ref[0].abs().max().item(), 1e-3)
        torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-5 * scale, msg=f"{where}: output")

