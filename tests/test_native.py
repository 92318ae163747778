"""The native CBAM kernel (chanattn/_native/cbam.c via chanattn.native): built on this machine,
taken by the CBAM modules in inference, equal to the plain formula, and declined (with the PyTorch
path taking over) wherever it does not apply or cannot be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import chanattn
from chanattn import native

HAVE_CC = shutil.which(os.environ.get("CC", "cc")) is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")


def randomised(name: str, channels: int, **kwargs) -> torch.nn.Module:
    """A module in eval mode with weights and BN statistics far from their initial values."""
    torch.manual_seed(channels * 7 + len(kwargs))
    m = chanattn.create(name, channels, **kwargs).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.4)
        for b in m.buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.3, 1.7)
    return m


def native_out(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """What the kernel computes for module m, or None where it declines."""
    if isinstance(m, chanattn.modules.cbam.CBAM):
        ch, sp = m.channel.native_args(), m.spatial.native_args()
        return None if ch is None or sp is None else native.cbam_forward(x, **ch, **sp)
    args = m.native_args()
    if args is None:
        return None
    if isinstance(m, chanattn.modules.cbam.CBAMChannelAttention):
        return native.cbam_forward(x, conv_weight=None, **args)
    return native.cbam_forward(x, None, None, None, None, **args)


@needs_cc
def test_kernel_builds_here():
    st = native.status()
    assert st.available, st.describe()
    assert Path(st.path).is_file()
    assert "in use" in st.describe()


SHAPES = [(32, 64, 9, 9), (1, 16, 1, 1), (3, 17, 5, 9), (2, 32, 33, 1), (2, 24, 1, 31),
          (4, 512, 7, 7), (2, 256, 14, 14), (2, 64, 56, 56), (5, 3, 8, 8)]
CONFIGS = [
    ("cbam", {}),
    ("cbam", {"kernel_size": 3}),
    ("cbam", {"kernel_size": 5, "norm": False}),
    ("cbam", {"bias": False, "rd_channels": 3}),
    ("cbam_channel", {}),
    ("cbam_channel", {"bias": False}),
    ("cbam_spatial", {}),
    ("cbam_spatial", {"kernel_size": 1, "norm": False}),
]


@needs_cc
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{k}" for n, k in CONFIGS])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_kernel_equals_reference(name, kwargs, shape):
    if name != "cbam_spatial" and shape[1] < 16 and "rd_channels" not in kwargs:
        kwargs = {**kwargs, "rd_channels": 2}
    m = randomised(name, shape[1], **kwargs)
    x = torch.randn(shape) * 3
    with torch.no_grad():
        got = native_out(m, x)
        assert got is not None, "the kernel declined a configuration it computes"
        # the module's forward takes the kernel: the same tensor, bit for bit
        torch.testing.assert_close(m(x), got, rtol=0, atol=0)
        ref = m.forward_reference(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))


@needs_cc
@pytest.mark.parametrize("name", ["cbam", "cbam_channel", "cbam_spatial"])
def test_thread_count_does_not_change_the_result(name):
    m = randomised(name, 64)
    x = torch.randn(7, 64, 12, 10)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(native_out(m, x))
    finally:
        torch.set_num_threads(before)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


@needs_cc
@pytest.mark.parametrize("name", ["cbam", "cbam_channel", "cbam_spatial"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_propagate_as_in_the_reference(name, value):
    m = randomised(name, 32)
    x = torch.randn(2, 32, 7, 9)
    x[1, 5, 3, 4] = value
    with torch.no_grad():
        got, ref = native_out(m, x), m.forward_reference(x)
    assert got is not None
    # where the reference is NaN or infinite, so is the kernel, and the finite rest agree
    assert torch.equal(got.isnan(), ref.isnan())
    assert torch.equal(got.isinf(), ref.isinf())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    # sample 0 does not see sample 1's value
    assert got[0].isfinite().all()


@needs_cc
def test_kernel_declines_what_it_does_not_compute():
    m = randomised("cbam", 32)
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        assert native_out(m, x.double()) is None
        assert native_out(m, x.to(memory_format=torch.channels_last)) is None
        assert native_out(m, x[:, :, ::2]) is None  # a strided view
        assert native_out(m, x.to(torch.bfloat16)) is None
    m.train()  # BN with batch statistics
    assert native_out(m, x) is None
    other_act = randomised("cbam", 32, act_layer="gelu")
    assert other_act.channel.native_args() is None
    hard = randomised("cbam_spatial", 32, gate_layer="hard_sigmoid")
    assert hard.native_args() is None
    # and the modules stay correct on every one of those paths
    for mod, inp in ((m, x), (other_act, x), (hard, x), (randomised("cbam", 32).double(), x.double()),
                     (randomised("cbam", 32), x.to(memory_format=torch.channels_last))):
        with torch.no_grad():
            torch.testing.assert_close(mod(inp), mod.forward_reference(inp), rtol=1e-5, atol=1e-5)


@needs_cc
def test_count_macs_sees_what_cbam_computes():
    """Under a dispatch mode (count_macs's FlopCounterMode) the kernel declines, so the MLP's and
    the 7x7 convolution's multiply-adds are counted (issue 14: ResNet + CBAM counted as ResNet):
    per CBAM of C channels on an H x W map, 2 poolings x (C x C/16 + C/16 x C) + 2 x 49 x H x W."""
    from torch.utils.flop_counter import FlopCounterMode

    m = randomised("cbam", 32)
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        assert native_out(m, x) is not None
        with FlopCounterMode(display=False):
            assert native_out(m, x) is None
    base = chanattn.create_model("resnet18", num_classes=10)
    model = chanattn.create_model("resnet18", attn="cbam", num_classes=10)
    added = sum(n * (2 * 2 * c * (c // 16) + 2 * 49 * h * h)
                for c, h, n in ((64, 16, 2), (128, 8, 2), (256, 4, 2), (512, 2, 2)))  # at 64 x 64
    size = (1, 3, 64, 64)
    assert chanattn.count_macs(model, size) - chanattn.count_macs(base, size) == added


@needs_cc
def test_training_does_not_take_the_kernel():
    """With autograd the PyTorch path runs (the kernel has no backward): gradients flow."""
    m = randomised("cbam", 16)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and m.channel.fc1.weight.grad is not None


def _run(code: str, env: dict[str, str]) -> str:
    """Runs code in a fresh interpreter (the loaded library is per process); its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


CHECK = """
    import torch, chanattn
    from chanattn import native
    m = chanattn.create("cbam", 32).eval()
    x = torch.randn(3, 32, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.forward_reference(x), rtol=1e-5, atol=1e-5)
    print(native.status().describe())
"""


def test_disabled_by_environment(tmp_path):
    out = _run(CHECK, {"CHANATTN_NATIVE": "0", "CHANATTN_CACHE": str(tmp_path)})
    assert "not in use (disabled by CHANATTN_NATIVE=0)" in out
    assert list(tmp_path.iterdir()) == []


def test_no_compiler_falls_back(tmp_path):
    out = _run(CHECK, {"CC": str(tmp_path / "no-such-cc"), "CHANATTN_CACHE": str(tmp_path)})
    assert "not in use (no C compiler" in out


def test_failing_compiler_falls_back_with_its_error(tmp_path):
    cc = tmp_path / "broken-cc"
    cc.write_text("#!/bin/sh\necho 'broken-cc: error: cannot compile' >&2\nexit 1\n")
    cc.chmod(0o755)
    cache = tmp_path / "cache"
    out = _run(CHECK, {"CC": str(cc), "CHANATTN_CACHE": str(cache)})
    assert "not in use (build failed: broken-cc: error: cannot compile)" in out
    # nothing half-written is left behind
    assert not cache.exists() or [p.name for p in cache.iterdir()] == []


@needs_cc
def test_concurrent_first_builds_share_the_cache(tmp_path):
    """Several processes building into an empty cache at once all load a whole library."""
    env = {**os.environ, "CHANATTN_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHECK)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "native CBAM kernel: in use" in out
    libs = sorted(p.name for p in tmp_path.iterdir())
    assert len(libs) == 1 and libs[0].endswith(".so"), libs


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{k}" for n, k in CONFIGS])
def test_pytorch_inference_path_without_the_kernel(monkeypatch, name, kwargs, chunked):
    """Where the kernel is not in use, inference runs the PyTorch fast path (chanattn.functional),
    whole-tensor or chunk by chunk: equal to the reference as well."""
    import chanattn.functional as CF
    import chanattn.modules.cbam as cbam_module

    monkeypatch.setattr(cbam_module, "cbam_forward", lambda *a, **k: None)
    threads = torch.get_num_threads()
    if chunked:
        monkeypatch.setattr(CF, "WHOLE_BYTES", 0)
        monkeypatch.setattr(CF, "CHUNK_BYTES", 1)
        torch.set_num_threads(1)
    try:
        for shape in SHAPES:
            kw = kwargs
            if name != "cbam_spatial" and shape[1] < 16 and "rd_channels" not in kw:
                kw = {**kw, "rd_channels": 2}
            m = randomised(name, shape[1], **kw)
            x = torch.randn(shape) * 3
            with torch.no_grad():
                ref = m.forward_reference(x)
                torch.testing.assert_close(m(x), ref, rtol=1e-5,
                                           atol=1e-5 * max(1.0, ref.abs().max().item()))
    finally:
        torch.set_num_threads(threads)


@needs_cc
def test_unwritable_cache_builds_in_a_temporary_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = _run(CHECK, {"CHANATTN_CACHE": str(blocker / "cache")})
    assert "native CBAM kernel: in use" in out and "chanattn-native-" in out


@needs_cc
def test_benchmark_script_runs():
    pytest.importorskip("timm")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "cbam_native.py"), "--shapes",
                           "2x32x8x8", "--repeats", "1", "--modules", "cbam,cbam_spatial"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("cbam")]
    assert [r[:2] for r in rows] == [["cbam", "2x32x8x8"], ["cbam_spatial", "2x32x8x8"]]
    assert all(float(v) > 0 for r in rows for v in r[2:])
