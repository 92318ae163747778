"""The native CBAM kernel as a PyTorch operator: ``torch.ops.chanattn.cbam_forward``.

CBAM in inference reads its input three times (pool over H and W; pool over C of x * channel
gate; write the output), and ATen runs each as a pass over the whole tensor from memory. The C++
kernel in ``chanattn/fast/_native/cbam.cpp`` does the three passes sample by sample while the
sample is in the core's cache, so the tensor crosses the memory bus about once each way.

The operator. ``chanattn::cbam_forward(Tensor x, Tensor? fc1_weight, Tensor? fc1_bias,
Tensor? fc2_weight, Tensor? fc2_bias, Tensor? conv_weight, Tensor? bn_weight, Tensor? bn_bias,
Tensor? bn_mean, Tensor? bn_var, float bn_eps) -> Tensor`` is defined with ``TORCH_LIBRARY`` and
has a CPU kernel; this file registers its fake (meta) implementation, so that ``torch.compile``
and ``torch.export`` can trace a call to it, and its FLOP formula, so that
``torch.utils.flop_counter`` (and :func:`chanattn.count_macs`) counts its multiply-adds as those
of the formula it computes. The kernel runs on ATen's intra-op threads (``at::parallel_for``:
torch's own OpenMP pool, whatever runtime torch links), one range of samples per thread. It has no
backward: the modules use it only where autograd does not record (see :mod:`chanattn.fast.cbam`).

The build. The source is compiled on first use by ``torch.utils.cpp_extension.load`` (ninja and the
C++ compiler ``$CXX``, else ``c++``; ``-O3 -march=native -fopenmp``, dropping ``-march=native`` and
then ``-fopenmp`` where the build fails; ``-fopenmp`` only where torch's intra-op backend is
OpenMP, which ``at::parallel_for`` needs to run on more than one thread) into a cache directory
(``$CHANATTN_CACHE``, else ``$XDG_CACHE_HOME/chanattn``, else ``~/.cache/chanattn``; a private
temporary directory where that cannot be written), under a name that hashes the source, the flags,
the torch and Python versions, the compiler's version and the CPU model, so that a cached library
is reused by every later process (and test) until one of those changes. The first build takes about
12-20 s of CPU (the ATen headers; the kernel itself is small). It is built in a directory of its
own and renamed into place, under a lock (``fcntl.flock``, released by the system if the process
dies): processes that start at once build it once and never load a half-written library.

Where it cannot be built or loaded (no compiler, no ninja, a failing build, another platform) or
``CHANATTN_NATIVE=0`` is set, the operator does not exist in the process and CBAM runs another
implementation: :func:`status` says which and why, and so does :func:`chanattn.explain`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

__all__ = ["NativeStatus", "available", "cbam_forward", "status"]

_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno"]
_lock = threading.Lock()
_state: dict[str, object] = {}
_loaded: dict[str, str] = {}  # the library loaded in this process (once: its operator is registered)


@dataclass(frozen=True)
class NativeStatus:
    """Whether the native operator is in use: ``available``, the library's ``path`` if so, else the
    ``reason`` (one line)."""

    available: bool
    path: str | None = None
    reason: str | None = None

    def describe(self) -> str:
        if self.available:
            return f"native CBAM kernel: in use ({self.path})"
        return f"native CBAM kernel: not in use ({self.reason}); the PyTorch path instead"


def _cache_dir() -> Path:
    if os.environ.get("CHANATTN_CACHE"):
        return Path(os.environ["CHANATTN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "chanattn"


def _writable_cache() -> Path:
    """The cache directory, or, where it cannot be created or written (a read-only home), a new
    private temporary directory for this process."""
    d = _cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK | os.X_OK):
            return d
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="chanattn-native-"))


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) or (cxx if os.path.isfile(cxx) and os.access(cxx, os.X_OK) else None)


def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    return line
    except OSError:
        pass
    return ""


def _build_error(exc: BaseException) -> str:
    """The compiler's first error line from a failed ``cpp_extension.load``, else the exception's."""
    text = str(exc)
    if isinstance(exc, subprocess.CalledProcessError):  # a compiler check: its own output says why
        out = exc.stderr or exc.output or b""
        text = (out.decode(errors="replace") if isinstance(out, bytes) else out) or text
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if "error" in low and not low.startswith(("error building extension", "failed:")):
            return ln
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path`` (created), held for the block; the system releases it if the
    process dies. Where locks are not available, no lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_tooling():
    """``torch.utils.cpp_extension``'s warnings off (that no CUDA runtime is found, for this CPU
    kernel; that the compiler differs from torch's): a build that fails is reported by
    :func:`status` and :func:`chanattn.explain`."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _cpp_extension():
    with _quiet_tooling():
        from torch.utils import cpp_extension
    return cpp_extension


def _compile(name: str, source: Path, dst: Path, flags: list[str]) -> str | None:
    """Build ``source`` with torch's extension tooling in a directory of its own next to ``dst``,
    load it, and rename the library to ``dst``; None, or the build's first error line."""
    cpp_extension = _cpp_extension()
    work = Path(tempfile.mkdtemp(prefix=dst.name + ".", suffix=".build", dir=dst.parent))
    try:
        src = work / "cbam.cpp"
        shutil.copyfile(source, src)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), _quiet_tooling():
            cpp_extension.load(name, [str(src)], extra_cflags=flags, build_directory=str(work),
                               is_python_module=False, verbose=False)
        os.replace(work / f"{name}.so", dst)
        return None
    except Exception as exc:  # the tooling raises RuntimeError, OSError, subprocess errors
        return _build_error(exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build() -> NativeStatus:
    if os.environ.get("CHANATTN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return NativeStatus(False, reason="disabled by CHANATTN_NATIVE=0")
    if sys.platform == "win32":
        return NativeStatus(False, reason="not built on Windows")
    cxx = _compiler()
    if cxx is None:
        return NativeStatus(False, reason=f"no C++ compiler ({os.environ.get('CXX', 'c++')!r} not found)")
    if shutil.which("ninja") is None and not _cpp_extension().is_ninja_available():
        return NativeStatus(False, reason="ninja not found (pip install ninja)")
    src_ref = resources.files("chanattn.fast") / "_native" / "cbam.cpp"
    try:
        source = src_ref.read_bytes()
    except OSError as exc:
        return NativeStatus(False, reason=f"source missing: {exc}")
    version = _compiler_version(cxx)
    cache = _writable_cache()
    errors = []
    # -march=native where the compiler takes it: the library is built for this machine only (the
    # name hashes the CPU model and the compiler, so a shared cache keeps builds apart). -fopenmp
    # where torch's intra-op backend is OpenMP: at::parallel_for is inline ATen code whose
    # `omp parallel` is compiled into the extension, so without it the kernel runs on one thread
    # (the GOMP symbols are left to torch's already loaded runtime; a build that cannot load falls
    # through to the next set of flags)
    omp = ["-fopenmp"] if torch.backends.openmp.is_available() else []
    tries = (["-march=native", *omp, *_FLAGS], [*omp, *_FLAGS], ["-march=native", *_FLAGS], _FLAGS)
    for flags in map(list, dict.fromkeys(map(tuple, tries))):
        key = hashlib.sha256(b"\0".join(
            s.encode() if isinstance(s, str) else s
            for s in (source, " ".join(flags), torch.__version__, platform.python_version(), version,
                      platform.machine(), _cpu_model()))).hexdigest()[:16]
        name = f"chanattn_cbam_{key}"
        path = cache / f"{name}.so"
        if _loaded.get("path") is not None:  # loaded before a reset: the operator stays registered
            return NativeStatus(True, path=_loaded["path"])
        try:
            with _file_lock(cache / f"{name}.lock"):
                if path.exists():
                    torch.ops.load_library(str(path))
                else:
                    with resources.as_file(src_ref) as src:
                        err = _compile(name, Path(src), path, flags)
                    if err is not None:
                        errors.append(err)
                        continue
        except (OSError, RuntimeError) as exc:
            errors.append(f"cannot load {path}: {exc}")
            continue
        _loaded["path"] = str(path)
        _register_python_parts()
        return NativeStatus(True, path=str(path))
    return NativeStatus(False, reason=f"build failed: {errors[-1] if errors else 'unknown'}")


def _register_python_parts() -> None:
    """The operator's fake implementation (shapes for torch.compile and torch.export) and its FLOP
    formula (for torch.utils.flop_counter), once per process."""
    from torch.utils.flop_counter import register_flop_formula

    op = torch.ops.chanattn.cbam_forward

    @torch.library.register_fake("chanattn::cbam_forward")
    def _fake(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, bn_weight, bn_bias,
              bn_mean, bn_var, bn_eps):
        torch._check(x.dim() == 4, lambda: "chanattn::cbam_forward: x must be (B, C, H, W)")
        return torch.empty_like(x)

    @register_flop_formula(op)
    def _flops(x_shape, fc1_shape=None, fc1_bias=None, fc2_shape=None, fc2_bias=None, conv_shape=None,
               *args, **kwargs) -> int:
        """The formula's count: the shared MLP on the two (B, C) descriptors (two 1x1 layers each,
        C -> R -> C) and the 2 -> 1 KxK convolution at every position; 2 FLOPs a multiply-add."""
        b, c, h, w = x_shape
        macs = 0
        if fc1_shape is not None:
            macs += 2 * 2 * b * c * fc1_shape[0]  # two descriptors, fc1 and fc2
        if conv_shape is not None:
            macs += b * h * w * 2 * conv_shape[-1] * conv_shape[-2]
        return 2 * macs


def _load() -> NativeStatus:
    if "status" not in _state:
        with _lock:
            if "status" not in _state:
                _state["status"] = _build()
    return _state["status"]  # type: ignore[return-value]


def status() -> NativeStatus:
    """Whether the native operator is in use (builds it on first call)."""
    return _load()


def available() -> bool:
    """True where the operator is built and loaded (builds it on first call). Under
    ``torch.compile`` the answer is taken once, while tracing, as a constant."""
    return _load().available


# What ``torch.compiler.assume_constant_result`` marks (dynamo calls the function while tracing and
# keeps its result as a constant), set here without it: the decorator imports torch._dynamo, several
# seconds of ``import chanattn`` for every user who never compiles. tests/test_native.py checks that
# a compiled CBAM calls the operator in one graph.
available._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _reset_for_tests() -> None:
    """Forget the build status, so that the next call looks again (a library already loaded stays
    loaded: the operator is registered once per process)."""
    with _lock:
        _state.clear()


def cbam_forward(x: torch.Tensor, fc1_weight: torch.Tensor | None = None,
                 fc1_bias: torch.Tensor | None = None, fc2_weight: torch.Tensor | None = None,
                 fc2_bias: torch.Tensor | None = None,
                 conv_weight: torch.Tensor | None = None, bn: torch.nn.Module | None = None) -> torch.Tensor:
    """CBAM's forward by the native operator (which must be :func:`available`).

    Args:
        x: (B, C, H, W), float32, contiguous (NCHW), on the CPU.
        fc1_weight, fc1_bias, fc2_weight, fc2_bias: the channel stage's MLP, C -> R -> C, ReLU
            between, sigmoid gate (weights of R x C and C x R elements, float32 contiguous; biases
            may be None); ``fc1_weight=None`` skips the channel stage.
        conv_weight: the spatial stage's 2 -> 1 convolution (2 x K x K elements, K odd, no bias),
            sigmoid gate; ``None`` skips the spatial stage.
        bn: the spatial stage's ``BatchNorm2d(1)`` in eval mode (running statistics), or None.

    No autograd: the operator has no backward.
    """
    if bn is None:
        stats: tuple = (None, None, None, None, 0.0)
    else:
        stats = (bn.weight, bn.bias, bn.running_mean, bn.running_var, float(bn.eps))
    return torch.ops.chanattn.cbam_forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, *stats)
