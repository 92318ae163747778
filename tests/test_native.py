"""The native CBAM operator (chanattn/fast/_native/cbam.cpp, ``torch.ops.chanattn.cbam_forward`` via
chanattn.fast.native): built here with torch's extension tooling, typed, equal to the formula on
every configuration and shape it takes, seen by torch.compile, torch.export and the FLOP counter,
declined (with the reason in chanattn.explain) wherever it does not apply, and replaced by the
PyTorch path where it cannot be built."""

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
from chanattn.fast import explain, implementations, native
from chanattn.modules.cbam import CBAM
from conftest import formula

HAVE_TOOLS = shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja") is not None
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="no C++ compiler or ninja on this machine")
NATIVE = {impl.module: impl for impl in implementations() if impl.name.endswith(".native")}


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
    impl = NATIVE[type(m)]
    return impl.run(m, x) if impl.applies(m, x)[0] else None


@needs_tools
def test_kernel_builds_here():
    st = native.status()
    assert st.available, st.describe()
    assert Path(st.path).is_file() and st.path.endswith(".so")
    assert "in use" in st.describe()
    assert torch.ops.chanattn.cbam_forward.default._schema.arguments[0].name == "x"



@needs_tools
@pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="torch's intra-op backend is not OpenMP")
def test_kernel_runs_on_torchs_openmp_threads():
    """at::parallel_for is inline ATen code: built without -fopenmp, its `omp parallel` is dropped
    and the kernel runs on one thread whatever torch.get_num_threads() says (the regression in
    benchmarks/results of 2026-11-30: 1.16 ms at 32x512x7x7 on 2 threads, 0.75 ms with the fix).
    A library built with OpenMP calls the runtime's GOMP_parallel."""
    st = native.status()
    assert st.available, st.describe()
    assert b"GOMP_parallel" in Path(st.path).read_bytes()

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


@needs_tools
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{k}" for n, k in CONFIGS])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_kernel_equals_the_formula(name, kwargs, shape):
    if name != "cbam_spatial" and shape[1] < 16 and "rd_channels" not in kwargs:
        kwargs = {**kwargs, "rd_channels": 2}
    m = randomised(name, shape[1], **kwargs)
    x = torch.randn(shape) * 3
    with torch.no_grad():
        got = native_out(m, x)
        assert got is not None, "the kernel declined a configuration it computes"
        # the module's own call takes the kernel: the same tensor, bit for bit
        assert explain(m, x).chosen.endswith(".native")
        torch.testing.assert_close(m(x), got, rtol=0, atol=0)
        ref = formula(m)(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))


@needs_tools
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


@needs_tools
@pytest.mark.parametrize("name", ["cbam", "cbam_channel", "cbam_spatial"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_propagate_as_in_the_formula(name, value):
    m = randomised(name, 32)
    x = torch.randn(2, 32, 7, 9)
    x[1, 5, 3, 4] = value
    with torch.no_grad():
        got, ref = native_out(m, x), formula(m)(x)
    assert got is not None
    # where the formula is NaN or infinite, so is the kernel, and the finite rest agree
    assert torch.equal(got.isnan(), ref.isnan())
    assert torch.equal(got.isinf(), ref.isinf())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    # sample 0 does not see sample 1's value
    assert got[0].isfinite().all()


@needs_tools
def test_kernel_declines_what_it_does_not_compute_and_says_why():
    m = randomised("cbam", 32)
    x = torch.randn(2, 32, 8, 8)
    cases = [(m, x.double(), "takes float32 only"), (m.double(), x.double(), "takes float32 only"),
             (randomised("cbam", 32), x.to(memory_format=torch.channels_last), "takes contiguous"),
             (randomised("cbam", 32), x[:, :, ::2], "takes contiguous"),
             (randomised("cbam", 32).to(torch.bfloat16), x.to(torch.bfloat16), "takes float32 only"),
             (randomised("cbam", 32).train(), x, "needs the module in eval mode"),
             (randomised("cbam", 32, act_layer="gelu"), x, "ReLU and the sigmoid gate only"),
             (randomised("cbam_spatial", 32, gate_layer="hard_sigmoid"), x, "the sigmoid gate only")]
    for mod, inp, reason in cases:
        with torch.no_grad():
            report = explain(mod, inp)
        native_line = next(c for c in report.candidates if c.name.endswith(".native"))
        assert not native_line.applies and reason in native_line.reason, str(report)
        # and the module stays right on that path
        with torch.no_grad():
            tol = 2e-2 if inp.dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(mod(inp), formula(mod)(inp), rtol=tol, atol=tol)
    # with autograd recording the kernel (no backward) is not taken, and gradients flow
    m = randomised("cbam", 16)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    assert "autograd records" in str(explain(m, x))
    m(x).sum().backward()
    assert x.grad is not None and m.channel.fc1.weight.grad is not None


@needs_tools
def test_count_macs_sees_what_cbam_computes():
    """ResNet + CBAM counts the MLP and the 7x7 convolution (issue 14: the old ctypes kernel ran
    outside the dispatcher, so a FLOP counter around it counted ResNet + CBAM as ResNet): per CBAM of
    C channels on an H x W map, 2 poolings x (C x C/16 + C/16 x C) + 2 x 49 x H x W multiply-adds,
    the same whether the operator runs (its FLOP formula) or the formula (count_macs). At 224 x 224
    the same closed form gives ResNet-50 + CBAM 6,388,854 over ResNet-50 (count_macs here: 4,095,573,110
    against 4,089,184,256; not run in the suite, too slow), i.e. 4.0956 G."""
    from torch.utils.flop_counter import FlopCounterMode

    base = chanattn.create_model("resnet18", num_classes=10)
    model = chanattn.create_model("resnet18", attn="cbam", num_classes=10).eval()
    added = sum(n * (2 * 2 * c * (c // 16) + 2 * 49 * h * h)
                for c, h, n in ((64, 16, 2), (128, 8, 2), (256, 4, 2), (512, 2, 2)))  # at 64 x 64
    size = (1, 3, 64, 64)
    macs = chanattn.count_macs(model, size)
    assert macs - chanattn.count_macs(base, size) == added
    # a counter around the model with the fast paths on: every CBAM runs the operator, counted the same
    x = torch.randn(size)
    cbams = [mod for mod in model.modules() if isinstance(mod, CBAM)]
    with torch.no_grad():
        assert len(cbams) == 8
        assert all(explain(mod, torch.randn(1, mod.channels, 2, 2)).chosen == "cbam.native" for mod in cbams)
        with FlopCounterMode(display=False) as counter:
            model(x)
    assert counter.get_total_flops() == 2 * macs


@needs_tools
def test_the_operator_is_typed():
    m = randomised("cbam", 16)
    x = torch.randn(2, 16, 5, 5)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.chanattn.cbam_forward(x.double(), None, None, None, None, None, None, None, None, None, 0.0)
    with pytest.raises(RuntimeError, match="odd"):
        torch.ops.chanattn.cbam_forward(x, None, None, None, None, torch.randn(1, 2, 4, 4), None, None, None,
                                        None, 0.0)
    with pytest.raises(RuntimeError):  # the schema: a float, not a tensor, for bn_eps
        torch.ops.chanattn.cbam_forward(x, m.channel.fc1.weight, None, m.channel.fc2.weight, None, None,
                                        None, None, None, None, x)


@needs_tools
def test_compile_export_and_the_flop_counter_see_the_operator():
    from torch.utils.flop_counter import FlopCounterMode

    m = randomised("cbam", 32)
    x = torch.randn(3, 32, 9, 9)
    with torch.no_grad():
        eager = m(x)
        torch._dynamo.reset()
        compiled = torch.compile(m, fullgraph=True)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)
        # the compiled graph calls the operator (the fake implementation gave its shape)
        graphs = []
        torch._dynamo.reset()
        torch.compile(m, backend=lambda gm, example: graphs.append(gm) or gm, fullgraph=True)(x)
        assert any("chanattn.cbam_forward" in str(g.graph) for g in graphs)

    class Calls(torch.nn.Module):
        def forward(self, t):
            return native.cbam_forward(t, conv_weight=m.spatial.conv.weight)

    program = torch.export.export(Calls(), (x,))
    assert "chanattn.cbam_forward" in str(program.graph)
    torch.testing.assert_close(program.module()(x), Calls()(x))
    # the FLOP counter counts the operator's multiply-adds as the formula's
    with torch.no_grad(), FlopCounterMode(display=False) as fast:
        m(x)
    with torch.no_grad(), chanattn.fast_paths(False), FlopCounterMode(display=False) as plain:
        m(x)
    assert fast.get_total_flops() == plain.get_total_flops() > 0


def _run(code: str, env: dict[str, str]) -> str:
    """Runs code in a fresh interpreter (the loaded library is per process); its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


CHECK = """
    import torch, chanattn
    from chanattn.fast import native
    m = chanattn.create("cbam", 32).eval()
    x = torch.randn(3, 32, 9, 9)
    with torch.no_grad():
        with chanattn.fast_paths(False):
            ref = m(x)
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
        print(chanattn.explain(m, x))
    print(native.status().describe())
"""


def test_disabled_by_environment(tmp_path):
    out = _run(CHECK, {"CHANATTN_NATIVE": "0", "CHANATTN_CACHE": str(tmp_path)})
    assert "not in use (disabled by CHANATTN_NATIVE=0)" in out
    assert "the native kernel is not in use: disabled by CHANATTN_NATIVE=0" in out  # explain's reason
    assert "CBAM 'cbam': formula" in out
    assert list(tmp_path.iterdir()) == []


def test_no_compiler_falls_back(tmp_path):
    out = _run(CHECK, {"CXX": str(tmp_path / "no-such-cxx"), "CHANATTN_CACHE": str(tmp_path)})
    assert "not in use (no C++ compiler" in out


@pytest.mark.skipif(shutil.which("ninja") is None, reason="needs ninja to reach the compiler")
def test_failing_compiler_falls_back_with_its_error(tmp_path):
    cxx = tmp_path / "broken-cxx"
    cxx.write_text("#!/bin/sh\necho 'broken-cxx: error: cannot compile' >&2\nexit 1\n")
    cxx.chmod(0o755)
    cache = tmp_path / "cache"
    out = _run(CHECK, {"CXX": str(cxx), "CHANATTN_CACHE": str(cache)})
    assert "not in use (build failed: broken-cxx: error: cannot compile)" in out
    # nothing half-written is left behind
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.endswith(".lock")]


@needs_tools
def test_concurrent_first_builds_share_the_cache(tmp_path):
    """Several processes building into an empty cache at once build it once and all load a whole
    library (the first builds under a lock, the others wait for it and load the result)."""
    env = {**os.environ, "CHANATTN_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHECK)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "native CBAM kernel: in use" in out and "-> cbam.native" in out
    libs = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert len(libs) == 1 and libs[0].endswith(".so"), libs


def test_unwritable_cache_falls_back_to_a_temporary_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CHANATTN_CACHE", str(blocker / "cache"))
    d = native._writable_cache()
    assert d.is_dir() and d.name.startswith("chanattn-native-") and os.access(d, os.W_OK)
    d.rmdir()


@needs_tools
def test_benchmark_script_runs():
    pytest.importorskip("timm")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "cbam_native.py"), "--shapes",
                           "2x32x8x8", "--repeats", "1", "--modules", "cbam,cbam_spatial"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("cbam")]
    assert [r[:2] for r in rows] == [["cbam", "2x32x8x8"], ["cbam_spatial", "2x32x8x8"]]
    # four timings in ms, then three ratios printed to two decimals (0.00 where one path is over
    # 200x faster, as on a loaded machine at this tiny shape)
    assert all(len(r) == 9 and all(float(v) > 0 for v in r[2:6]) and all(float(v) >= 0 for v in r[6:])
               for r in rows)
