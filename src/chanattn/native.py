"""Native (C) kernels for the fast paths that stock PyTorch operations cannot fuse.

CBAM in inference reads its input three times (pool over H and W; pool over C of x * channel
gate; write the output), and ATen runs each as a pass over the whole tensor from memory. The C
kernel in ``chanattn/_native/cbam.c`` does the three passes sample by sample while the sample is
in the core's cache, so the tensor crosses the memory bus about once each way.

The kernel is compiled on first use with the machine's C compiler (``$CC``, else ``cc``;
``-O3 -march=native -fopenmp``, dropping the flags the compiler refuses) into a cache directory
(``$CHANATTN_CACHE``, else ``$XDG_CACHE_HOME/chanattn``, else ``~/.cache/chanattn``; a private
temporary directory where that cannot be written), under a name that hashes the source, the
flags, the compiler's version and the CPU model. It is written to a temporary file and renamed,
so processes that build it at once never load a half-written library. With ``-fopenmp`` the
kernel runs on the process's OpenMP threads: in a process that imported torch, torch's own
(the same libgomp soname resolves to the copy torch loaded), already awake after the operation
before; threads of its own would contend with them on every call.

Where it cannot be built or loaded (no compiler, a failing build, another platform) or
``CHANATTN_NATIVE=0`` is set, the modules run their PyTorch fast path instead: results agree to
rounding either way. :func:`status` says which is in use and why.
"""

from __future__ import annotations

import ctypes
import hashlib
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
from torch import nn

__all__ = ["NativeStatus", "cbam_forward", "cbam_library", "status"]

_ABI = 2
_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp-simd", "-pthread", "-fno-math-errno"]
_lock = threading.Lock()


@dataclass(frozen=True)
class NativeStatus:
    """Whether the native kernels are in use: ``available``, the library's ``path`` if so, else the
    ``reason`` (one line)."""

    available: bool
    path: str | None = None
    reason: str | None = None

    def describe(self) -> str:
        if self.available:
            return f"native CBAM kernel: in use ({self.path})"
        return f"native CBAM kernel: not in use ({self.reason}); PyTorch fast path instead"


_state: dict[str, object] = {}


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
    cc = os.environ.get("CC", "cc")
    return shutil.which(cc) or (cc if os.path.isfile(cc) and os.access(cc, os.X_OK) else None)


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"


def _compile(cc: str, src: Path, dst: Path, flags: list[str]) -> str | None:
    """Compile ``src`` to ``dst`` atomically; the compiler's first error line, or None."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, str(src), "-o", tmp, "-lm"], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            return lines[0] if lines else f"{cc} exited with {proc.returncode}"
        os.replace(tmp, dst)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> tuple[ctypes.CDLL | None, NativeStatus]:
    if os.environ.get("CHANATTN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, NativeStatus(False, reason="disabled by CHANATTN_NATIVE=0")
    if sys.platform == "win32":
        return None, NativeStatus(False, reason="not built on Windows")
    cc = _compiler()
    if cc is None:
        return None, NativeStatus(False, reason=f"no C compiler ({os.environ.get('CC', 'cc')!r} not found)")
    src_ref = resources.files("chanattn") / "_native" / "cbam.c"
    try:
        source = src_ref.read_bytes()
    except OSError as exc:
        return None, NativeStatus(False, reason=f"source missing: {exc}")
    version = _compiler_version(cc)
    cache = _writable_cache()
    errors = []
    # -march=native where the compiler takes it (the library is built for this machine only; the
    # name hashes the CPU model and the compiler so a shared cache keeps builds apart), -fopenmp
    # where it takes that (see the module's docstring).
    for flags in (["-march=native", "-fopenmp", *_FLAGS], ["-fopenmp", *_FLAGS],
                  ["-march=native", *_FLAGS], _FLAGS):
        key = hashlib.sha256(
            b"\0".join([source, " ".join(flags).encode(), version.encode(),
                        platform.machine().encode(), platform.processor().encode(),
                        _cpu_model().encode()])
        ).hexdigest()[:16]
        path = cache / f"cbam-{key}.so"
        if not path.exists():
            with resources.as_file(src_ref) as src:
                try:
                    err = _compile(cc, Path(src), path, flags)
                except OSError as exc:
                    err = f"cannot write to {path.parent}: {exc}"
            if err is not None:
                errors.append(err)
                continue
        try:
            lib = ctypes.CDLL(str(path))
            if lib.chanattn_cbam_abi() != _ABI:
                errors.append(f"{path} has another ABI version")
                continue
        except (OSError, AttributeError) as exc:
            errors.append(f"cannot load {path}: {exc}")
            continue
        fn = lib.chanattn_cbam_forward
        fn.restype = ctypes.c_int
        ptr, lng = ctypes.c_void_p, ctypes.c_long
        fn.argtypes = [ptr, ptr, lng, lng, lng, lng, ptr, ptr, ptr, ptr, lng, ptr, lng,
                       ptr, ptr, ptr, ptr, ctypes.c_double, lng]
        return lib, NativeStatus(True, path=str(path))
    return None, NativeStatus(False, reason=f"build failed: {errors[-1] if errors else 'unknown'}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    return line
    except OSError:
        pass
    return ""


def cbam_library() -> ctypes.CDLL | None:
    """The loaded library (built on first call), or None where it is not in use."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                lib, st = _build()
                _state["status"] = st
                _state["lib"] = lib
    return _state["lib"]  # type: ignore[return-value]


def status() -> NativeStatus:
    """Whether the native kernels are in use (builds them on first call)."""
    cbam_library()
    return _state["status"]  # type: ignore[return-value]


def _reset_for_tests() -> None:
    """Forget the loaded library, so the next call builds (or refuses) again."""
    with _lock:
        _state.clear()


def _dispatch_mode_active() -> bool:
    """A ``TorchDispatchMode`` is watching the ops (counting, faking, logging them)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _takes(t: torch.Tensor | None, numel: int) -> bool:
    return t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
                         and t.numel() == numel)


def cbam_forward(x: torch.Tensor, fc1_weight: torch.Tensor | None, fc1_bias: torch.Tensor | None,
                 fc2_weight: torch.Tensor | None, fc2_bias: torch.Tensor | None,
                 conv_weight: torch.Tensor | None, bn: nn.BatchNorm2d | None = None
                 ) -> torch.Tensor | None:
    """CBAM's forward by the native kernel, or None where the kernel is not in use or does not
    take these arguments.

    Args:
        x: (B, C, H, W), float32, contiguous (NCHW), on the CPU.
        fc1_weight, fc1_bias, fc2_weight, fc2_bias: the channel stage's MLP, C -> R -> C, ReLU
            between (weights of R x C and C x R elements, float32 contiguous; biases may be None);
            ``fc1_weight=None`` skips the channel stage.
        conv_weight: the spatial stage's 2 -> 1 convolution (2 x K x K elements, K odd, no bias),
            ``None`` skips the spatial stage.
        bn: the spatial stage's BatchNorm2d(1) in eval mode (running statistics), or None.

    No autograd: the caller checks that no gradient is needed. Under a ``TorchDispatchMode``
    (``FlopCounterMode`` in :func:`chanattn.models.count_macs`, fake or meta tensors) the kernel
    declines: it computes outside PyTorch's dispatcher, so the mode would not see its products.
    """
    lib = cbam_library()
    if lib is None or x.dim() != 4 or not _takes(x, x.numel()) or _dispatch_mode_active():
        return None
    b, c, h, w = x.shape
    hidden = kernel = 0
    if fc1_weight is not None:
        hidden = fc1_weight.shape[0]
        if not (_takes(fc1_weight, hidden * c) and fc2_weight is not None
                and _takes(fc2_weight, hidden * c) and _takes(fc1_bias, hidden)
                and _takes(fc2_bias, c)):
            return None
    if conv_weight is not None:
        kernel = conv_weight.shape[-1]
        if kernel % 2 == 0 or not _takes(conv_weight, 2 * kernel * kernel):
            return None
    bn_args: tuple = (None, None, None, None, 0.0)
    if bn is not None:
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return None
        if not all(_takes(t, 1) for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)):
            return None
        bn_args = (_ptr(bn.weight), _ptr(bn.bias), _ptr(bn.running_mean), _ptr(bn.running_var),
                   float(bn.eps))
    out = torch.empty_like(x)
    rc = lib.chanattn_cbam_forward(
        _ptr(x), _ptr(out), b, c, h, w, _ptr(fc1_weight), _ptr(fc1_bias), _ptr(fc2_weight),
        _ptr(fc2_bias), hidden, _ptr(conv_weight), kernel, *bn_args, torch.get_num_threads())
    if rc != 0:
        if rc == -1:
            raise MemoryError("chanattn native CBAM kernel: out of memory for its scratch buffers")
        raise RuntimeError(f"chanattn native CBAM kernel: refused its arguments (code {rc})")
    return out
